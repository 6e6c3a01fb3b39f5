#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The MQTT link in-process against a real mosquitto: the bounded outbox while the broker is
//! away, publishes in flight when the session is lost, packets above rumqttc's 10 KiB default.

mod common;

use common::WAIT;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::mosquitto::{Mosquitto, Subscriber};
use common::proxy::Proxy;
use fieldbridge::mqtt::{Mqtt, MqttHandle, MqttSettings};
use tokio_util::sync::CancellationToken;

fn settings(port: u16, id: &str, queue: usize) -> MqttSettings {
    MqttSettings {
        host: "127.0.0.1".into(),
        port,
        tls: None,
        username: None,
        password: None,
        client_id: format!("test-{id}"),
        keep_alive: Duration::from_secs(5),
        clean_session: false,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(300),
        queue,
        status_topic: format!("t/{id}/status"),
        online_payload: "online".into(),
        offline_payload: "offline".into(),
        gateway: id.into(),
        installation: "test".into(),
    }
}

fn start(s: MqttSettings) -> (MqttHandle, CancellationToken, tokio::task::JoinHandle<()>) {
    let (mqtt, handle, _incoming) = Mqtt::new(s).unwrap();
    let token = CancellationToken::new();
    let t = token.clone();
    let task = tokio::spawn(async move {
        mqtt.run(t).await.unwrap();
    });
    (handle, token, task)
}

async fn wait_connected(h: &MqttHandle, up: bool) {
    common::until(
        WAIT,
        || h.stats().connected == up,
        || format!("connected never became {up}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_broker_is_away_the_outbox_keeps_the_newest_state_and_the_newest_readings() {
    // The broker stays up for the subscriber; the gateway's path to it goes through a proxy
    // that refuses connections, so the test decides when the gateway comes back (no race
    // between the subscriber and the re-sent messages).
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.port);
    let sub = Subscriber::connect(broker.port, "t/outbox/#");
    let (h, token, task) = start(settings(proxy.port, "outbox", 20));
    wait_connected(&h, true).await;
    proxy.refuse.store(true, Ordering::SeqCst);
    proxy.cut();
    wait_connected(&h, false).await;

    for i in 0..50 {
        h.publish(format!("t/outbox/reading/{i}"), i.to_string(), 1, false);
    }
    for v in 0..5 {
        h.publish_retained("t/outbox/state".into(), format!("state-{v}"));
    }
    let s = h.stats();
    assert_eq!(s.queued, 20, "the outbox holds exactly its bound");
    assert_eq!(
        s.dropped, 31,
        "50 readings + 1 state into 20 places: 31 readings dropped"
    );

    proxy.refuse.store(false, Ordering::SeqCst);
    let got = sub.wait_for("t/outbox/state", |p| p == "state-4", WAIT);
    assert!(got.is_some(), "newest retained state not sent");
    assert!(
        sub.wait_for("t/outbox/reading/49", |_| true, WAIT)
            .is_some()
    );
    let readings: Vec<String> = sub
        .seen()
        .into_iter()
        .filter(|m| m.topic.starts_with("t/outbox/reading/"))
        .map(|m| m.payload)
        .collect();
    // On reconnect the `online` status joins the outbox too and takes one more reading's place:
    // 20 = state + status + the newest 18 readings.
    let expected: Vec<String> = (32..50).map(|i| i.to_string()).collect();
    assert_eq!(
        readings, expected,
        "the newest readings, oldest dropped first"
    );
    assert_eq!(h.stats().dropped, 32, "every drop counted");
    let states: Vec<String> = sub
        .on("t/outbox/state")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(
        states,
        vec!["state-4".to_string()],
        "older states must not be sent"
    );
    token.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_in_flight_when_the_session_is_lost_are_sent_again() {
    let mut broker = Mosquitto::start();
    let proxy = Proxy::start(broker.port);
    let (h, token, task) = start(settings(proxy.port, "inflight", 100));
    wait_connected(&h, true).await;

    // The link looks fine to the client, but nothing reaches the broker: QoS 1 publishes are
    // handed to rumqttc and stay unacknowledged.
    proxy.freeze.store(true, Ordering::SeqCst);
    for i in 0..5 {
        h.publish(format!("t/inflight/{i}"), format!("m{i}"), 1, false);
    }
    // The outbox empties into rumqttc's hands, where the publishes wait unacknowledged.
    common::until(
        WAIT,
        || h.stats().queued == 0,
        || "the messages should be in rumqttc's hands".into(),
    )
    .await;

    // The broker restarts without persistence (session gone) and the link is cut.
    broker.restart();
    let sub = Subscriber::connect(broker.port, "t/inflight/#");
    proxy.freeze.store(false, Ordering::SeqCst);
    proxy.cut();
    for i in 0..5 {
        let got = sub.wait_for(&format!("t/inflight/{i}"), |p| p == format!("m{i}"), WAIT);
        assert!(got.is_some(), "m{i} was lost with the session");
    }
    token.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_above_rumqttc_s_10_kib_default_pass_both_ways() {
    let broker = Mosquitto::start();
    let (mqtt, h, mut incoming) = Mqtt::new(settings(broker.port, "big", 100)).unwrap();
    let token = CancellationToken::new();
    let t = token.clone();
    let task = tokio::spawn(async move { mqtt.run(t).await.unwrap() });
    h.subscribe("t/big/in");
    wait_connected(&h, true).await;
    let sub = Subscriber::connect(broker.port, "t/big/out");
    let big = "x".repeat(100 * 1024);
    h.publish("t/big/out".into(), big.clone(), 1, false);
    assert!(
        sub.wait_for("t/big/out", |p| p.len() == big.len(), WAIT)
            .is_some()
    );
    // Incoming: a 100 KiB message on a subscribed topic arrives and the link stays up.
    // The subscription is made on ConnAck; publish until it is in place (bounded).
    let deadline = Instant::now() + WAIT;
    let msg = loop {
        assert!(Instant::now() < deadline, "the big message never arrived");
        common::mosquitto::publish(broker.port, "t/big/in", &big, false);
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), incoming.recv()).await
        {
            break m;
        }
    };
    assert_eq!(msg.payload.len(), big.len());
    assert!(h.stats().connected);
    assert_eq!(h.stats().reconnects, 0);
    token.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_connack_is_waited_for_on_one_connection_and_no_last_will_is_triggered() {
    let broker = Mosquitto::start();
    let status = Subscriber::connect(broker.port, "t/slow/status");
    // Longer than the link task's 1 s heartbeat tick, which used to abandon the connect
    // half-way: each new attempt took over the last one's session, and the broker published
    // the last will ("offline") for a gateway that was up.
    let proxy = Proxy::start(broker.port);
    proxy.delay_first_reply(Duration::from_millis(1500));
    let (h, token, task) = start(settings(proxy.port, "slow", 100));
    wait_connected(&h, true).await;
    status
        .wait_for("t/slow/status", |p| p == "online", WAIT)
        .expect("online");
    // Something that must not happen (a second connection, a will published): given 500 ms.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One look at the status topic under its own client id (the id check), then the link's
    // one connection: both waited for their slow CONNACK.
    assert_eq!(proxy.connections(), 2, "connected more than once");
    assert!(
        status
            .on("t/slow/status")
            .iter()
            .all(|m| m.payload == "online"),
        "{:?}",
        status.on("t/slow/status")
    );
    assert_eq!(h.stats().reconnects, 0);
    token.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_added_while_connected_is_subscribed_at_once() {
    // The app adds Home Assistant's status after the link is up, and a reload adds devices'
    // command topics: they must not wait for the next reconnect.
    let broker = Mosquitto::start();
    let (mqtt, h, mut incoming) = Mqtt::new(settings(broker.port, "late", 100)).unwrap();
    let token = CancellationToken::new();
    let t = token.clone();
    let task = tokio::spawn(async move { mqtt.run(t).await.unwrap() });
    wait_connected(&h, true).await;
    h.subscribe("t/late/command");
    let deadline = Instant::now() + WAIT;
    let got = loop {
        common::mosquitto::publish(broker.port, "t/late/command", "hello", false);
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), incoming.recv()).await
        {
            break m;
        }
        assert!(Instant::now() < deadline, "never subscribed");
    };
    assert_eq!(got.topic, "t/late/command");
    assert_eq!(got.payload, b"hello");
    assert_eq!(h.stats().reconnects, 0);
    token.cancel();
    task.await.unwrap();
}
