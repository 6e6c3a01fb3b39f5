//! The outbox: messages waiting for the broker (README "The MQTT link"). While the broker is away at most
//! `cap` messages wait. Retained topics (state, availability, status) keep only the newest
//! message per topic; readings beyond the bound drop oldest first; every drop is counted.
//! Retained messages go out before readings: the state of the house matters more than the
//! history of a sensor, which SQLite keeps anyway. Ahead of both, an ordered lane carries
//! sequences that must arrive as published, never coalesced (Home Assistant discovery
//! migrations publish several messages to one topic, in order).

use std::collections::{HashMap, VecDeque};

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    /// 0 or 1.
    pub qos: u8,
    pub retain: bool,
}

/// Bounded outbox with per-topic coalescing for retained messages.
#[derive(Debug)]
pub struct Outbox {
    cap: usize,
    /// Retained topics in the order they first queued; payloads in `latest`.
    retained_order: VecDeque<String>,
    latest: HashMap<String, (Vec<u8>, u8)>,
    readings: VecDeque<Message>,
    /// Retained messages that go out in order, each one (see `push_sequence`).
    ordered: VecDeque<Message>,
    /// Readings dropped (oldest first) because the outbox was full.
    pub dropped: u64,
    /// Readings (the lane command results go in) queued so far, and of those, how many have
    /// left (sent or dropped): an acknowledgement waits until what was queued before it left.
    pushed: u64,
    left: u64,
    /// Retained messages replaced by a newer one for the same topic before they were sent.
    pub coalesced: u64,
}

impl Outbox {
    pub fn new(cap: usize) -> Self {
        Outbox {
            cap: cap.max(1),
            retained_order: VecDeque::new(),
            latest: HashMap::new(),
            readings: VecDeque::new(),
            ordered: VecDeque::new(),
            dropped: 0,
            coalesced: 0,
            pushed: 0,
            left: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.latest.len() + self.readings.len() + self.ordered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room for one more message: drops the oldest reading, or failing that the oldest
    /// retained message, or failing that the oldest of an ordered sequence. Each drop counts.
    fn make_room(&mut self) {
        while self.len() >= self.cap {
            if self.readings.pop_front().is_some() {
                self.dropped += 1;
                self.left += 1;
            } else if let Some(t) = self.retained_order.pop_front() {
                self.latest.remove(&t);
                self.dropped += 1;
            } else if self.ordered.pop_front().is_some() {
                self.dropped += 1;
            } else {
                break;
            }
        }
    }

    /// Queues retained messages that must reach subscribers one by one, in this order, ahead
    /// of everything else. A coalescing retained message queued for one of their topics is
    /// dropped: the sequence says what that topic holds in the end.
    pub fn push_sequence(&mut self, msgs: impl IntoIterator<Item = (String, Vec<u8>)>) {
        for (topic, payload) in msgs {
            if self.latest.remove(&topic).is_some() {
                self.retained_order.retain(|t| t != &topic);
                self.coalesced += 1;
            }
            self.make_room();
            self.ordered.push_back(Message {
                topic,
                payload,
                qos: 1,
                retain: true,
            });
        }
    }

    /// Queues a retained message; a queued one for the same topic is replaced.
    pub fn push_retained(&mut self, topic: String, payload: Vec<u8>, qos: u8) {
        if let Some(slot) = self.latest.get_mut(&topic) {
            *slot = (payload, qos);
            self.coalesced += 1;
            return;
        }
        self.make_room();
        self.retained_order.push_back(topic.clone());
        self.latest.insert(topic, (payload, qos));
    }

    /// Queues a reading, dropping the oldest reading when full.
    pub fn push(&mut self, msg: Message) {
        if msg.retain {
            self.push_retained(msg.topic, msg.payload, msg.qos);
            return;
        }
        self.make_room();
        self.readings.push_back(msg);
        self.pushed += 1;
    }

    /// How many readings have been queued so far: the mark an acknowledgement waits for.
    pub fn mark(&self) -> u64 {
        self.pushed
    }

    /// Whether every reading queued up to `mark` has left (been taken to be sent, or dropped).
    pub fn passed(&self, mark: u64) -> bool {
        self.left >= mark
    }

    /// The next message to send, and whether it came from an ordered sequence: sequences first,
    /// then retained, then readings in order.
    pub fn pop(&mut self) -> Option<(Message, bool)> {
        if let Some(m) = self.ordered.pop_front() {
            return Some((m, true));
        }
        self.pop_unordered().map(|m| (m, false))
    }

    fn pop_unordered(&mut self) -> Option<Message> {
        while let Some(topic) = self.retained_order.pop_front() {
            if let Some((payload, qos)) = self.latest.remove(&topic) {
                return Some(Message {
                    topic,
                    payload,
                    qos,
                    retain: true,
                });
            }
        }
        let m = self.readings.pop_front();
        if m.is_some() {
            self.left += 1;
        }
        m
    }

    /// Puts back a message that could not be handed to the client (its channel was full).
    pub fn unpop(&mut self, msg: Message, ordered: bool) {
        if ordered {
            self.ordered.push_front(msg);
        } else if msg.retain {
            if !self.latest.contains_key(&msg.topic) {
                self.retained_order.push_front(msg.topic.clone());
                self.latest.insert(msg.topic, (msg.payload, msg.qos));
            }
            // else: a newer one for the topic arrived meanwhile; it wins.
        } else {
            self.readings.push_front(msg);
            self.left = self.left.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(i: usize) -> Message {
        Message {
            topic: format!("s/{i}"),
            payload: i.to_string().into_bytes(),
            qos: 0,
            retain: false,
        }
    }

    #[test]
    fn readings_beyond_the_bound_drop_oldest_first_and_are_counted() {
        let mut o = Outbox::new(3);
        for i in 0..5 {
            o.push(reading(i));
        }
        assert_eq!(o.len(), 3);
        assert_eq!(o.dropped, 2);
        let got: Vec<String> = std::iter::from_fn(|| o.pop())
            .map(|(m, _)| m.topic)
            .collect();
        assert_eq!(got, vec!["s/2", "s/3", "s/4"]);
    }

    #[test]
    fn retained_topics_keep_only_the_newest_and_go_first() {
        let mut o = Outbox::new(10);
        o.push(reading(0));
        o.push_retained("state".into(), b"1".to_vec(), 1);
        o.push_retained("avail".into(), b"online".to_vec(), 1);
        o.push_retained("state".into(), b"2".to_vec(), 1);
        assert_eq!(o.len(), 3);
        assert_eq!(o.coalesced, 1);
        let (first, _) = o.pop().unwrap();
        assert_eq!(
            (first.topic.as_str(), first.payload.as_slice()),
            ("state", &b"2"[..])
        );
        assert!(first.retain);
        assert_eq!(o.pop().unwrap().0.topic, "avail");
        assert_eq!(o.pop().unwrap().0.topic, "s/0");
        assert!(o.pop().is_none());
    }

    #[test]
    fn retained_messages_displace_readings_when_full() {
        let mut o = Outbox::new(2);
        o.push(reading(0));
        o.push(reading(1));
        o.push_retained("state".into(), b"x".to_vec(), 1);
        assert_eq!(o.len(), 2);
        assert_eq!(o.dropped, 1);
        assert_eq!(o.pop().unwrap().0.topic, "state");
        assert_eq!(o.pop().unwrap().0.topic, "s/1");
    }

    #[test]
    fn a_mark_passes_once_every_reading_queued_before_it_left_however_many_follow() {
        let mut o = Outbox::new(100);
        o.push(reading(0));
        o.push(reading(1)); // a command's result
        let mark = o.mark();
        assert!(!o.passed(mark));
        // Readings keep coming (a busy gateway): the outbox is never empty again.
        o.push(reading(2));
        o.push_retained("state".into(), b"s".to_vec(), 1);
        assert_eq!(o.pop().unwrap().0.topic, "state");
        assert!(!o.passed(mark));
        o.pop();
        assert!(!o.passed(mark));
        o.pop();
        assert!(o.passed(mark), "the result left; the ack may go");
        o.push(reading(3));
        assert!(o.passed(mark));
        // Dropped counts as left (the broker is away and the outbox full).
        let mut small = Outbox::new(2);
        small.push(reading(0));
        let m = small.mark();
        small.push(reading(1));
        small.push(reading(2));
        assert!(small.passed(m));
    }

    #[test]
    fn unpop_keeps_order_and_newer_retained_wins() {
        let mut o = Outbox::new(10);
        o.push(reading(0));
        o.push(reading(1));
        let (m, ordered) = o.pop().unwrap();
        o.unpop(m, ordered);
        assert_eq!(o.pop().unwrap().0.topic, "s/0");
        o.push_retained("state".into(), b"old".to_vec(), 1);
        let (old, ordered) = o.pop().unwrap();
        o.push_retained("state".into(), b"new".to_vec(), 1);
        o.unpop(old, ordered);
        assert_eq!(o.pop().unwrap().0.payload, b"new".to_vec());
    }

    #[test]
    fn a_sequence_goes_first_in_order_and_replaces_what_was_queued_for_its_topics() {
        let mut o = Outbox::new(10);
        o.push(reading(0));
        o.push_retained("cfg/a".into(), b"stale".to_vec(), 1);
        o.push_retained("state".into(), b"s".to_vec(), 1);
        o.push_sequence([
            ("cfg/a".to_string(), b"migrate".to_vec()),
            ("cfg/b".to_string(), b"config".to_vec()),
            ("cfg/a".to_string(), Vec::new()),
        ]);
        let got: Vec<(String, Vec<u8>, bool)> = std::iter::from_fn(|| o.pop())
            .map(|(m, ordered)| (m.topic, m.payload, ordered))
            .collect();
        assert_eq!(
            got,
            vec![
                ("cfg/a".into(), b"migrate".to_vec(), true),
                ("cfg/b".into(), b"config".to_vec(), true),
                ("cfg/a".into(), Vec::new(), true),
                ("state".into(), b"s".to_vec(), false),
                ("s/0".into(), b"0".to_vec(), false),
            ]
        );
        // Put back (the client's channel was full), it keeps its place at the head.
        o.push_sequence([
            ("x".to_string(), b"1".to_vec()),
            ("y".to_string(), b"2".to_vec()),
        ]);
        let (m, ordered) = o.pop().unwrap();
        o.unpop(m, ordered);
        assert_eq!(o.pop().unwrap().0.topic, "x");
        assert_eq!(o.pop().unwrap().0.topic, "y");
    }
}
