//! What the devices publish, seen by the commissioning page: what the device tasks and the
//! command router publish through, in front of the MQTT link. It keeps the newest retained
//! payload of each device (its state and availability: the page's first view), the recent
//! command results, and hands every message to the pages that are open (server-sent events).
//! Sensor readings are only handed on: without an open page they cost a check, and the table
//! holds two entries per device.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::mqtt::Outgoing;
use crate::output::Ack;

/// Live messages waiting for a slow page at most; a page that falls further behind is told to
/// reload (it lost messages), and nothing else waits for it.
pub const LIVE_CAP: usize = 256;
/// Command results kept for the device pages.
pub const RESULTS_CAP: usize = 64;

/// One message the devices published.
#[derive(Debug, Clone)]
pub struct Published {
    pub topic: String,
    pub payload: String,
    /// When the gateway published it (for a point's age).
    pub at: SystemTime,
}

/// The tee in front of the MQTT link.
pub struct Tap {
    inner: Arc<dyn Outgoing>,
    latest: Mutex<HashMap<String, Published>>,
    results: Mutex<VecDeque<Published>>,
    live: broadcast::Sender<Arc<Published>>,
}

impl Tap {
    pub fn new(inner: Arc<dyn Outgoing>) -> Tap {
        Tap {
            inner,
            latest: Mutex::new(HashMap::new()),
            results: Mutex::new(VecDeque::new()),
            live: broadcast::channel(LIVE_CAP).0,
        }
    }

    /// The newest payload on `topic`.
    pub fn latest(&self, topic: &str) -> Option<Published> {
        self.latest.lock().ok()?.get(topic).cloned()
    }

    /// The recent command results, oldest first.
    pub fn results(&self) -> Vec<Published> {
        self.results
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every message from now on, for an open page.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.live.subscribe()
    }

    /// A reading on a sensor topic: only for the pages open now.
    fn passing(&self, topic: &str, payload: &str) {
        if self.live.receiver_count() > 0 {
            let p = Published {
                topic: topic.to_string(),
                payload: payload.to_string(),
                at: SystemTime::now(),
            };
            if self.live.send(Arc::new(p)).is_err() {
                // The last page closed meanwhile.
            }
        }
    }

    fn seen(&self, topic: &str, payload: &str, result: bool) {
        let p = Published {
            topic: topic.to_string(),
            payload: payload.to_string(),
            at: SystemTime::now(),
        };
        // Full: the oldest goes, and that page hears it lagged. No page open: nothing to do.
        if self.live.receiver_count() > 0 && self.live.send(Arc::new(p.clone())).is_err() {
            // The last page closed meanwhile.
        }
        if result {
            if let Ok(mut r) = self.results.lock() {
                if r.len() == RESULTS_CAP {
                    r.pop_front();
                }
                r.push_back(p);
            }
        } else if let Ok(mut latest) = self.latest.lock() {
            if payload.is_empty() {
                latest.remove(topic);
            } else {
                latest.insert(p.topic.clone(), p);
            }
        }
    }
}

/// Command results are published on the command topic plus `/result` (README "Topics").
fn is_result(topic: &str) -> bool {
    topic.ends_with("/command/result")
}

impl Outgoing for Tap {
    fn publish(&self, topic: String, payload: String, qos: u8, retain: bool) {
        if is_result(&topic) {
            self.seen(&topic, &payload, true);
        } else {
            self.passing(&topic, &payload);
        }
        self.inner.publish(topic, payload, qos, retain);
    }

    fn publish_retained(&self, topic: String, payload: String) {
        self.seen(&topic, &payload, false);
        self.inner.publish_retained(topic, payload);
    }

    fn ack(&self, ack: Ack) {
        self.inner.ack(ack);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Null(Mutex<Vec<String>>);
    impl Outgoing for Null {
        fn publish(&self, topic: String, _: String, _: u8, _: bool) {
            self.0.lock().unwrap().push(topic);
        }
        fn publish_retained(&self, topic: String, _: String) {
            self.0.lock().unwrap().push(topic);
        }
        fn ack(&self, _: Ack) {}
    }

    #[test]
    fn the_tap_keeps_the_newest_payload_and_recent_results_and_passes_everything_on() {
        let inner = Arc::new(Null::default());
        let tap = Tap::new(inner.clone());
        tap.publish_retained("t/l/device/d/state".into(), "{\"a\":1}".into());
        tap.publish_retained("t/l/device/d/state".into(), "{\"a\":2}".into());
        tap.publish("t/l/sensor/d/a".into(), "{\"value\":2}".into(), 0, false);
        for i in 0..RESULTS_CAP + 3 {
            tap.publish(
                "t/l/device/d/command/result".into(),
                format!("{{\"id\":{i}}}"),
                1,
                false,
            );
        }
        assert_eq!(
            tap.latest("t/l/device/d/state").unwrap().payload,
            "{\"a\":2}"
        );
        assert!(
            tap.latest("t/l/sensor/d/a").is_none(),
            "readings are only passed on"
        );
        let results = tap.results();
        assert_eq!(results.len(), RESULTS_CAP);
        assert_eq!(results[0].payload, "{\"id\":3}");
        // A cleared retained message leaves the table.
        tap.publish_retained("t/l/device/d/state".into(), String::new());
        assert!(tap.latest("t/l/device/d/state").is_none());
        assert_eq!(inner.0.lock().unwrap().len(), 3 + RESULTS_CAP + 3 + 1);
    }

    #[tokio::test]
    async fn an_open_page_hears_every_message_and_a_slow_one_is_told_it_lagged() {
        let tap = Tap::new(Arc::new(Null::default()));
        let mut rx = tap.subscribe();
        tap.publish_retained("a".into(), "1".into());
        assert_eq!(rx.recv().await.unwrap().payload, "1");
        for i in 0..LIVE_CAP + 5 {
            tap.publish("b".into(), i.to_string(), 0, false);
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(5))
        ));
    }
}
