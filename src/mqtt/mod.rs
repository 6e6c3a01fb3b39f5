//! The MQTT link (MQTT 3.1.1 through rumqttc, kept behind these types).
//!
//! One task owns the rumqttc `EventLoop` and does nothing but poll it, feed it from our own
//! outbox, and hand incoming messages off. It handles rumqttc's traps:
//!
//! - rumqttc never re-subscribes (rumqtt#250): every ConnAck subscribes to every filter again,
//!   re-publishes every retained message we were given, and then the `online` status.
//! - rumqttc drops in-flight publishes when the broker says `session_present = false`
//!   (rumqtt#863): the publishes pending at each error are kept and put back after such a ConnAck.
//! - `poll()` errors spin (rumqtt#703): we back off with jitter between `reconnect_min` and
//!   `reconnect_max`, reset on ConnAck.
//! - The client's request channel is bounded and `publish().await` deadlocks in this task
//!   (rumqtt#910): messages wait in our [`queue::Outbox`], which decides what is dropped when
//!   the broker is away.
//! - rumqttc writes and flushes every request it takes from its channel on its own: one socket
//!   write (and one TCP segment, with Nagle off) per packet. Between polls this task puts what
//!   waits — (un)subscriptions, the outbox, then the acks — through rumqttc's state straight
//!   into the connection's buffer and flushes once (see [`send`]); the channel is left for the
//!   DISCONNECT.
//! - 10 KiB default packet limit (rumqtt#924): 256 KiB each way.
//! - Collision livelock after a lost session (rumqtt#1014): repeated `CollisionTimeout` rebuilds
//!   the client and event loop.
//! - rumqttc acknowledges a QoS 1 message as soon as it arrives, so a command the gateway
//!   received but never executed (a crash, a stop) was gone from the broker. Acks are manual:
//!   a command is acknowledged once its result is published (the device core calls
//!   [`MqttHandle::ack`]), everything else as soon as the bridge has looked at it; acks go out
//!   after what is queued before them. The broker delivers an unacknowledged command again
//!   when the session resumes, flagged duplicate; the command's `id` keeps it from running
//!   twice.

pub mod queue;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS,
    Request, StateError, Transport,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::bus::port::Backoff;
use crate::output::Ack;
use queue::{Message, Outbox};

/// Largest packet in either direction (discovery configs can pass rumqttc's 10 KiB default).
pub const MAX_PACKET: usize = 256 * 1024;
/// Requests handed to rumqttc at a time. Small on purpose: what waits, waits in our outbox,
/// where we decide what is dropped.
pub const CLIENT_CAP: usize = 64;
/// Incoming messages (commands) waiting for the bridge. When full, the link waits for room
/// (back-pressure on the broker): the bridge validates without I/O, so this only fills under a
/// flood.
pub const INCOMING_CAP: usize = 1024;
/// How long one flush of what [`send`] wrote may wait for the socket before the link goes back
/// to polling (the rest stays buffered and goes with the next flush). rumqttc's own bound.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages [`send`] writes at most before the link reads again: a backlog (the broker was
/// away, a burst) goes out in chunks with the broker's packets (acks, commands) read between
/// them, as rumqttc's own loop interleaves them.
const SEND_BATCH: usize = 256;
/// How long a clean stop may spend sending what is queued and the `offline` status.
/// (The `offline` status goes first: retained messages leave the outbox before readings.)
pub const STOP_FLUSH: Duration = Duration::from_millis(400);

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// TLS files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// CA of the broker's certificate; the system bundle when `None`.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// `mqtt.tls_insecure`: no verification of the broker's certificate.
    pub insecure: bool,
}

/// Everything the link needs, filled from the config by the app.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub tls: Option<TlsSettings>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub client_id: String,
    pub keep_alive: Duration,
    pub clean_session: bool,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub queue: usize,
    /// Carries the last will and the `online` birth (retained).
    pub status_topic: String,
    pub online_payload: String,
    pub offline_payload: String,
    /// The gateway id (for messages).
    pub gateway: String,
    /// This installation (the status payload's `host`). Before its first connection the link
    /// reads the status topic under a client id of its own: a gateway of the same id online
    /// from another installation stops the start (README "Two gateways, one id").
    pub installation: String,
}

/// Why the link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path}: {reason}")]
    Pem {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("TLS: {0}")]
    Tls(String),
    /// Another installation runs a gateway with this id on the broker.
    #[error(
        "gateway id \"{id}\" is online on this broker from another installation (host \"{other}\"; this one is \"{ours}\"). Two gateways with one id would throw each other off the broker and delete each other's Home Assistant entities: give this one its own `[gateway] id` (the default is the host name, which every Raspberry Pi shares as \"raspberrypi\"), or stop the other"
    )]
    IdTaken {
        id: String,
        other: String,
        ours: String,
    },
}

/// A message that arrived on a subscribed filter.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Handed over flagged retained: a retained message delivered at a (re)subscription.
    pub retained: bool,
    /// To acknowledge (QoS 1) once handled; `None` for QoS 0.
    pub ack: Option<Ack>,
}

/// Counters for the health topic.
#[derive(Debug, Default)]
pub struct MqttStats {
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    pub published: AtomicU64,
    /// Messages dropped: readings beyond the queue bound, and incoming messages that arrived
    /// while stopping.
    pub dropped: AtomicU64,
    /// Retained messages superseded by newer ones for the same topic while queued.
    pub coalesced: AtomicU64,
    pub queued: AtomicU64,
    pub incoming_dropped: AtomicU64,
    /// The last connection error, for tests and health.
    pub last_error: Mutex<String>,
}

/// A snapshot of [`MqttStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttCounters {
    pub connected: bool,
    pub reconnects: u64,
    pub published: u64,
    pub dropped: u64,
    pub queued: u64,
}

struct Shared {
    /// What the device tasks, the app and the link's own task change together, behind one
    /// lock (see [`State`]).
    state: Mutex<State>,
    notify: Notify,
    /// The broker session acknowledgements belong to: a new one at each ConnAck without the old
    /// session, so a late ack never acknowledges a new message that reuses its packet id.
    session: AtomicU64,
    stats: MqttStats,
    connected_tx: watch::Sender<bool>,
}

/// The link's queued work, under one lock so that what must hold across its parts holds:
///
/// - a retained message is in `retained` (re-published at every ConnAck) exactly when its
///   newest payload is what went into `outbox` last for that topic;
/// - an ack in `acks` carries the outbox's mark taken in the same critical section as it was
///   added, so it leaves only after what was queued before it (its command's result);
/// - a filter is in at most one of `new_filters` and `gone_filters`, and in `new_filters` only
///   while it is in `filters`.
///
/// Each critical section is a few container operations; none is held across an `.await`.
struct State {
    outbox: Outbox,
    /// Filters to subscribe to on every ConnAck, with their QoS.
    filters: Vec<(String, QoS)>,
    /// Filters added since the last ConnAck, subscribed as soon as the link can take them: the
    /// app adds some after the link is up (Home Assistant's status), a reload adds devices.
    /// Nothing is published while some wait, so a publish made after `subscribe` goes out after
    /// the SUBSCRIBE (the discovery scan's probe relies on it).
    new_filters: Vec<(String, QoS)>,
    /// Filters dropped while subscribed, unsubscribed as soon as the link can take them.
    gone_filters: Vec<String>,
    /// The newest payload of every retained topic, re-published on every ConnAck.
    retained: HashMap<String, Vec<u8>>,
    /// Acknowledgements waiting, each with the outbox's mark when it was given: it goes out
    /// once what was queued before it (its command's result) has.
    acks: Vec<(Ack, u64)>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// The cheap, clonable side of the link. No method blocks.
#[derive(Clone)]
pub struct MqttHandle {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-written in a way
    // that matters (each critical section is a single container operation).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MqttHandle {
    /// Publishes a retained message (QoS 1). It is also remembered and re-published after every
    /// reconnect; while queued, a newer one for the same topic replaces it.
    pub fn publish_retained(&self, topic: String, payload: String) {
        let payload = payload.into_bytes();
        {
            let mut s = self.shared.state();
            s.retained.insert(topic.clone(), payload.clone());
            s.outbox.push_retained(topic, payload, 1);
        }
        self.shared.notify.notify_one();
    }

    /// Publishes a message; when the outbox is full the oldest reading is dropped.
    pub fn publish(&self, topic: String, payload: String, qos: u8, retain: bool) {
        {
            let mut s = self.shared.state();
            if retain {
                s.retained
                    .insert(topic.clone(), payload.clone().into_bytes());
            }
            s.outbox.push(Message {
                topic,
                payload: payload.into_bytes(),
                qos,
                retain,
            });
        }
        self.shared.notify.notify_one();
    }

    /// Removes a retained message from the broker (empty retained payload) and forgets it.
    pub fn clear_retained(&self, topic: String) {
        {
            let mut s = self.shared.state();
            s.retained.remove(&topic);
            s.outbox.push_retained(topic, Vec::new(), 1);
        }
        self.shared.notify.notify_one();
    }

    /// Acknowledges a delivered message (see the module docs: acks are manual).
    pub fn ack(&self, ack: Ack) {
        // The outbox's mark now: everything queued before this ack (the command's result)
        // leaves before it.
        {
            let mut s = self.shared.state();
            let mark = s.outbox.mark();
            s.acks.push((ack, mark));
        }
        self.shared.notify.notify_one();
    }

    /// Publishes retained messages (QoS 1) that must reach subscribers in this order, each one:
    /// never coalesced with one another or with a queued message for the same topic, and ahead
    /// of what else waits. The re-publish cache keeps the last payload of each topic (an empty
    /// one removes the topic from it).
    pub fn publish_sequence(&self, msgs: Vec<(String, String)>) {
        {
            let mut s = self.shared.state();
            for (topic, payload) in &msgs {
                if payload.is_empty() {
                    s.retained.remove(topic);
                } else {
                    s.retained
                        .insert(topic.clone(), payload.clone().into_bytes());
                }
            }
            s.outbox
                .push_sequence(msgs.into_iter().map(|(t, p)| (t, p.into_bytes())));
        }
        self.shared.notify.notify_one();
    }

    /// Subscribes (QoS 1) now if connected, and again after every reconnect.
    pub fn subscribe(&self, filter: &str) {
        self.subscribe_qos(filter, QoS::AtLeastOnce);
    }

    /// Subscribes at QoS 0: the broker queues nothing on this filter for our persistent
    /// session while we are away (mosquitto's default), so a wide filter cannot fill the
    /// session's queue that holds our commands.
    pub fn subscribe_qos0(&self, filter: &str) {
        self.subscribe_qos(filter, QoS::AtMostOnce);
    }

    fn subscribe_qos(&self, filter: &str, qos: QoS) {
        let mut s = self.shared.state();
        if !s.filters.iter().any(|(x, _)| x == filter) {
            s.filters.push((filter.to_string(), qos));
            s.new_filters.push((filter.to_string(), qos));
            s.gone_filters.retain(|x| x != filter);
        }
        drop(s);
        self.shared.notify.notify_one();
    }

    /// Unsubscribes now if connected; the filter is not subscribed again at reconnects.
    pub fn unsubscribe(&self, filter: &str) {
        let mut s = self.shared.state();
        if s.filters.iter().any(|(x, _)| x == filter) {
            s.filters.retain(|(x, _)| x != filter);
            s.new_filters.retain(|(x, _)| x != filter);
            s.gone_filters.push(filter.to_string());
        }
        drop(s);
        self.shared.notify.notify_one();
    }

    pub fn stats(&self) -> MqttCounters {
        let s = &self.shared.stats;
        let state = self.shared.state();
        let outbox = &state.outbox;
        MqttCounters {
            connected: s.connected.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            published: s.published.load(Ordering::Relaxed),
            dropped: outbox.dropped + s.incoming_dropped.load(Ordering::Relaxed),
            queued: outbox.len() as u64,
        }
    }

    /// The last connection error, empty while connected.
    pub fn last_error(&self) -> String {
        lock(&self.shared.stats.last_error).clone()
    }

    /// Follows the connection state.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.shared.connected_tx.subscribe()
    }
}

/// What goes out to the broker, as the layers above the link see it: publishes and the
/// acknowledgements of deliveries. [`MqttHandle`] is the link itself; the commissioning page's
/// tap stands in front of it.
pub trait Outgoing: Send + Sync + 'static {
    /// A reading on a sensor topic: never blocks; when the broker is away the link queues it
    /// with drop-oldest.
    fn publish(&self, topic: String, payload: String, qos: u8, retain: bool);
    /// Retained state or availability: never blocks; newest per topic wins while queued.
    fn publish_retained(&self, topic: String, payload: String);
    /// Deletes a retained message (empty retained payload).
    fn clear_retained(&self, topic: String) {
        self.publish_retained(topic, String::new());
    }
    /// Acknowledges a delivered message to the broker, after what was published before it.
    fn ack(&self, ack: Ack);
}

impl Outgoing for MqttHandle {
    fn publish(&self, topic: String, payload: String, qos: u8, retain: bool) {
        MqttHandle::publish(self, topic, payload, qos, retain);
    }
    fn publish_retained(&self, topic: String, payload: String) {
        MqttHandle::publish_retained(self, topic, payload);
    }
    fn clear_retained(&self, topic: String) {
        MqttHandle::clear_retained(self, topic);
    }
    fn ack(&self, ack: Ack) {
        MqttHandle::ack(self, ack);
    }
}

/// The task that owns the connection.
pub struct Mqtt {
    settings: MqttSettings,
    options: MqttOptions,
    shared: Arc<Shared>,
    incoming: mpsc::Sender<Incoming>,
    heartbeat: crate::systemd::Heartbeat,
    check_identity: bool,
}

impl Mqtt {
    /// For a broker this process started itself and nobody else has used yet (the demo's): no
    /// other gateway can be online on it, and asking would cost a connection the broker logs
    /// as an error when it closes.
    pub fn skip_identity_check(&mut self) {
        self.check_identity = false;
    }

    /// Prepares the link: reads the TLS files (errors name the file). Connects only in `run`.
    pub fn new(
        settings: MqttSettings,
    ) -> Result<(Mqtt, MqttHandle, mpsc::Receiver<Incoming>), Error> {
        let options = options(&settings)?;
        let (connected_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                outbox: Outbox::new(settings.queue),
                filters: Vec::new(),
                new_filters: Vec::new(),
                gone_filters: Vec::new(),
                retained: HashMap::new(),
                acks: Vec::new(),
            }),
            notify: Notify::new(),
            session: AtomicU64::new(0),
            stats: MqttStats::default(),
            connected_tx,
        });
        let (tx, rx) = mpsc::channel(INCOMING_CAP);
        Ok((
            Mqtt {
                settings,
                options,
                shared: shared.clone(),
                incoming: tx,
                heartbeat: crate::systemd::Heartbeat::new("mqtt"),
                check_identity: true,
            },
            MqttHandle { shared },
            rx,
        ))
    }

    /// The watchdog heartbeat of this task.
    pub fn heartbeat(&self) -> crate::systemd::Heartbeat {
        self.heartbeat.clone()
    }

    /// Runs until `shutdown`; then publishes `offline` (retained) and disconnects.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Mqtt {
            settings,
            options,
            shared,
            incoming,
            heartbeat,
            check_identity: check,
        } = self;
        if check {
            check_identity(&settings, &shutdown, &heartbeat).await?;
        }
        let (mut client, mut eventloop) = new_client(&options);
        let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
        let mut connected = false;
        let mut ever_connected = false;
        // Publishes rumqttc had pending at the last error: re-sent if the session is lost.
        let mut snapshot: Vec<Request> = Vec::new();
        let mut collisions = 0u32;
        let mut errors = ErrorLog::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                ev = poll_beating(&mut eventloop, &heartbeat, connected) => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        backoff.reset();
                        collisions = 0;
                        if !ack.session_present {
                            // The old session's packet ids mean nothing in the new one.
                            shared.session.fetch_add(1, Ordering::Relaxed);
                            shared.state().acks.clear();
                        }
                        if !ack.session_present && !snapshot.is_empty() {
                            debug!(count = snapshot.len(), "session lost; re-sending publishes that were in flight");
                            eventloop.pending.extend(snapshot.drain(..));
                        }
                        snapshot.clear();
                        connected = true;
                        if ever_connected {
                            shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        ever_connected = true;
                        shared.stats.connected.store(true, Ordering::Relaxed);
                        lock(&shared.stats.last_error).clear();
                        shared.connected_tx.send_replace(true);
                        info!(
                            broker = %format!("{}:{}", settings.host, settings.port),
                            session_present = ack.session_present,
                            "mqtt connected"
                        );
                        errors = ErrorLog::default();
                        on_connect(&shared, &settings);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let ack = (p.qos != QoS::AtMostOnce).then_some(Ack {
                            pkid: p.pkid,
                            session: shared.session.load(Ordering::Relaxed),
                        });
                        let msg = Incoming {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            retained: p.retain,
                            ack,
                        };
                        match incoming.try_send(msg) {
                            Ok(()) => {}
                            // A flood: back-pressure, never a drop. A dropped command would
                            // stay unacknowledged, and the broker sends it again only when the
                            // session resumes. The bridge never waits on this task, so the
                            // wait is short; meanwhile the broker holds the rest (its own
                            // `max_queued_messages` decides there).
                            Err(mpsc::error::TrySendError::Full(msg)) => {
                                tokio::select! {
                                    _ = shutdown.cancelled() => break,
                                    sent = incoming.send(msg) => if sent.is_err() {
                                        shared.stats.incoming_dropped.fetch_add(1, Ordering::Relaxed);
                                    },
                                }
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                shared.stats.incoming_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => {
                        shared.stats.published.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Keep what was in flight; rumqttc clears it if the session is gone.
                        let pending: Vec<Request> = eventloop
                            .pending
                            .iter()
                            .filter(|r| matches!(r, Request::Publish(_)))
                            .cloned()
                            .collect();
                        if !pending.is_empty() {
                            snapshot = pending;
                        }
                        if connected {
                            shared.stats.connected.store(false, Ordering::Relaxed);
                            shared.connected_tx.send_replace(false);
                            connected = false;
                        }
                        let text = describe(&e);
                        *lock(&shared.stats.last_error) = text.clone();
                        errors.log(&text);
                        if matches!(e, ConnectionError::MqttState(StateError::CollisionTimeout)) {
                            collisions += 1;
                            if collisions >= 2 {
                                warn!("mqtt: packet id collision keeps repeating; rebuilding the client (rumqtt#1014)");
                                (client, eventloop) = new_client(&options);
                                collisions = 0;
                            }
                        }
                        let delay = backoff.delay();
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                },
                _ = shared.notify.notified(), if connected => {}
                // Only while connected: a branch that wins while rumqttc is connecting would
                // drop the connect half-way (see `poll_beating`).
                _ = tick.tick(), if connected => heartbeat.beat(),
            }
            // Once rumqttc has handed out the events of what was written last (they come back
            // from `poll` without I/O, one a turn).
            if connected && eventloop.state.events.is_empty() {
                send(&mut eventloop, &shared).await;
            }
        }
        // A clean stop: send what is queued and the offline status, then disconnect, within
        // STOP_FLUSH. The last will is for crashes only.
        shared.connected_tx.send_replace(false);
        if connected {
            shared.state().outbox.push_retained(
                settings.status_topic.clone(),
                settings.offline_payload.clone().into_bytes(),
                1,
            );
            let deadline = tokio::time::Instant::now() + STOP_FLUSH;
            let mut disconnecting = false;
            loop {
                if !disconnecting {
                    if tokio::time::timeout_at(deadline, send(&mut eventloop, &shared))
                        .await
                        .is_err()
                    {
                        warn!("mqtt: could not flush everything before stopping");
                        break;
                    }
                    let drained = {
                        let s = shared.state();
                        s.outbox.is_empty() && s.acks.is_empty()
                    };
                    if drained && eventloop.state.inflight() == 0 {
                        disconnecting = client.try_disconnect().is_ok();
                    }
                }
                match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                    Err(_) => {
                        warn!("mqtt: could not flush everything before stopping");
                        break;
                    }
                    Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => break,
                    Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_)))) => {
                        shared.stats.published.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => break,
                }
            }
        }
        shared.stats.connected.store(false, Ordering::Relaxed);
        info!("mqtt disconnected");
        Ok(())
    }
}

/// `eventloop.poll()`, beating the watchdog heartbeat while it waits. rumqttc connects inside
/// `poll`: a poll dropped after CONNECT went out but before the CONNACK came back leaves a
/// session on the broker that the next poll's connect takes over, and the broker publishes our
/// last will, a retained "offline", for a gateway that is up (and on a link slower than the
/// dropping branch, it never connects at all). So while connecting, nothing but shutdown may win
/// over this future.
async fn poll_beating(
    eventloop: &mut rumqttc::EventLoop,
    heartbeat: &crate::systemd::Heartbeat,
    connected: bool,
) -> Result<Event, ConnectionError> {
    if connected {
        // The common case, once per packet: no timer. The tick branch beats meanwhile.
        return eventloop.poll().await;
    }
    let poll = eventloop.poll();
    tokio::pin!(poll);
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = &mut poll => return ev,
            _ = beat.tick() => heartbeat.beat(),
        }
    }
}

/// How long a look at the status topic may take once connected: the broker hands retained
/// messages over at the subscription, before the probe that comes after them.
const IDENTITY_WAIT: Duration = Duration::from_secs(5);

/// Before the link's first connection: is this gateway's id online on the broker from another
/// installation? Asked under a client id of its own (so the other gateway keeps its
/// connection) by reading the retained status. `Err(IdTaken)` stops the start; a broker that
/// cannot be reached is asked again with the link's backoff, until it answers or `shutdown`.
async fn check_identity(
    settings: &MqttSettings,
    shutdown: &CancellationToken,
    heartbeat: &crate::systemd::Heartbeat,
) -> Result<(), Error> {
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let mut errors = ErrorLog::default();
    loop {
        let asked = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            asked = status_owner(settings) => asked,
        };
        match asked {
            Ok(Some(other)) if other != settings.installation => {
                return Err(Error::IdTaken {
                    id: settings.gateway.clone(),
                    other,
                    ours: settings.installation.clone(),
                });
            }
            Ok(_) => return Ok(()),
            // The broker refuses this login: the link's own connection will be refused the
            // same way, and says so; it cannot take another gateway's id over either.
            Err(Asked::Refused(e)) => {
                debug!(error = %e, "mqtt: the id check was refused; the link reports it");
                return Ok(());
            }
            Err(Asked::Failed(e)) => errors.log(&e),
        }
        heartbeat.beat();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff.delay()) => {}
        }
    }
}

/// Why the id check had no answer.
enum Asked {
    /// The broker refused the login (credentials, client id).
    Refused(String),
    /// The broker could not be reached or did not answer in time.
    Failed(String),
}

/// The installation (`host`) whose gateway of this id is online now, from the retained status.
async fn status_owner(settings: &MqttSettings) -> Result<Option<String>, Asked> {
    let id = format!("{}-idcheck-{}", settings.client_id, std::process::id());
    let options = connection_options(settings, id).map_err(|e| Asked::Failed(e.to_string()))?;
    let (client, mut eventloop) = new_client(&options);
    let probe = format!("{}/idcheck/{}", settings.status_topic, std::process::id());
    let mut owner = None;
    let mut subscribed = false;
    let failed = |e: String| Asked::Failed(e);
    let done = async {
        loop {
            let event = match eventloop.poll().await {
                Ok(ev) => ev,
                Err(e @ ConnectionError::ConnectionRefused(_)) => {
                    return Err(Asked::Refused(describe(&e)));
                }
                Err(e) => return Err(Asked::Failed(describe(&e))),
            };
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    client
                        .try_subscribe(settings.status_topic.clone(), QoS::AtMostOnce)
                        .and_then(|_| client.try_subscribe(probe.clone(), QoS::AtMostOnce))
                        .map_err(|e| failed(e.to_string()))?;
                }
                Event::Incoming(Packet::SubAck(_)) if !subscribed => {
                    subscribed = true;
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    // Both subscriptions stand: what is retained has come, or comes before this.
                    client
                        .try_publish(probe.clone(), QoS::AtMostOnce, false, "probe")
                        .map_err(|e| failed(e.to_string()))?;
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == probe => return Ok(()),
                Event::Incoming(Packet::Publish(p)) if p.topic == settings.status_topic => {
                    let status: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    owner = (status["status"] == "online")
                        .then(|| status["host"].as_str().map(str::to_string))
                        .flatten();
                }
                _ => {}
            }
        }
    };
    let r: Result<(), Asked> = match tokio::time::timeout(IDENTITY_WAIT, done).await {
        Ok(r) => r,
        Err(_) => Err(Asked::Failed("no answer from the broker".into())),
    };
    if client.try_disconnect().is_ok() {
        // Let the DISCONNECT go out; the broker drops the session either way.
        if tokio::time::timeout(Duration::from_millis(200), eventloop.poll())
            .await
            .is_err()
        {
            debug!("mqtt: the id check's connection closed without a goodbye");
        }
    }
    r.map(|()| owner)
}

/// A client and event loop with TCP_NODELAY: without it, Nagle's algorithm and delayed ACKs add
/// ~40 ms to every command result and state publish (measured: BENCHMARKS.md, commands).
fn new_client(options: &MqttOptions) -> (AsyncClient, rumqttc::EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options.clone(), CLIENT_CAP);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(5);
    eventloop.set_network_options(net);
    (client, eventloop)
}

fn subscription(filters: &[(String, QoS)]) -> Vec<rumqttc::SubscribeFilter> {
    filters
        .iter()
        .map(|(f, qos)| rumqttc::SubscribeFilter::new(f.clone(), *qos))
        .collect()
}

/// After every ConnAck: subscribe to every filter (ahead of any publish), re-publish every
/// retained message we hold, then the `online` status.
fn on_connect(shared: &Shared, settings: &MqttSettings) {
    // A new session: what was unsubscribed is gone with the old one or will be unsubscribed
    // by `send`; every filter is subscribed again by `send`, ahead of any publish.
    let mut guard = shared.state();
    let s = &mut *guard;
    s.new_filters = s.filters.clone();
    for (topic, payload) in &s.retained {
        s.outbox.push_retained(topic.clone(), payload.clone(), 1);
    }
    s.outbox.push_retained(
        settings.status_topic.clone(),
        settings.online_payload.clone().into_bytes(),
        1,
    );
}

/// Writes what waits — the filters dropped (UNSUBSCRIBE) and added (SUBSCRIBE, see
/// `Shared::new_filters`), the outbox, then the acks (so a command's result goes out before its
/// acknowledgement) — through rumqttc's state into the connection's write buffer, and sends it
/// all with one flush. Handing each packet to rumqttc's request channel instead cost a socket
/// write per packet (BENCHMARKS.md).
///
/// Only between polls, while connected, and once rumqttc has re-sent the previous session's
/// publishes (`pending`): they go first, as they did when everything went through its channel.
/// Stops, as rumqttc's own loop does, when its inflight window is full or a packet id collides
/// (an ack coming in wakes the loop), and after [`SEND_BATCH`] messages (their events, handed
/// out by the next polls, bring the loop back here).
async fn send(eventloop: &mut rumqttc::EventLoop, shared: &Shared) {
    if !eventloop.pending.is_empty() {
        return;
    }
    let max_inflight = eventloop.mqtt_options.inflight();
    let state = &mut eventloop.state;
    let Some(network) = eventloop.network.as_mut() else {
        return;
    };
    let mut wrote = false;
    let mut put = async |state: &mut rumqttc::MqttState, request: Request| -> bool {
        match state.handle_outgoing_packet(request) {
            Ok(Some(packet)) => match network.write(packet).await {
                Ok(()) => true,
                Err(e) => {
                    debug!(error = ?e, "mqtt: packet not written");
                    false
                }
            },
            // A packet id collision: rumqttc keeps the publish and sends it once the id is free.
            Ok(None) => false,
            Err(e) => {
                debug!(error = ?e, "mqtt: request refused");
                false
            }
        }
    };
    // The message taken from the outbox, written after the filters that wait: a filter added
    // before the message was queued (the Home Assistant scan subscribes, then publishes the
    // probe that must come back through it) is in `new_filters` by the time the message can be
    // taken, and goes out ahead of it. The app's task adds them while this one writes.
    let mut taken: Option<queue::Message> = None;
    for turn in 0..=SEND_BATCH {
        let gone = std::mem::take(&mut shared.state().gone_filters);
        for f in gone {
            wrote |= put(state, Request::Unsubscribe(rumqttc::Unsubscribe::new(f))).await;
        }
        let new = std::mem::take(&mut shared.state().new_filters);
        if !new.is_empty() {
            let subscribe = rumqttc::Subscribe::new_many(subscription(&new));
            wrote |= put(state, Request::Subscribe(subscribe)).await;
        }
        if let Some(msg) = taken.take() {
            let qos = if msg.qos >= 1 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            let mut publish = rumqttc::Publish::new(msg.topic, qos, msg.payload);
            publish.retain = msg.retain;
            wrote |= put(state, Request::Publish(publish)).await;
        }
        if turn == SEND_BATCH {
            break;
        }
        if state.inflight() >= max_inflight || state.collision.is_some() {
            break;
        }
        // Not held across the write: device tasks push while this waits for the socket.
        let popped = shared.state().outbox.pop();
        match popped {
            Some((msg, _)) => taken = Some(msg),
            None => break,
        }
    }
    // An ack goes once what was queued before it has gone (its command's result is then in
    // the buffer ahead of it), however busy the outbox stays: acks never starve, or the
    // broker's in-flight window fills and no command arrives any more. One of an earlier
    // session is dropped: its packet id may be a new message's now.
    let session = shared.session.load(Ordering::Relaxed);
    let ready: Vec<(Ack, u64)> = {
        let mut guard = shared.state();
        let s = &mut *guard;
        let (ready, waiting) = std::mem::take(&mut s.acks)
            .into_iter()
            .partition(|(_, mark)| s.outbox.passed(*mark));
        s.acks = waiting;
        ready
    };
    {
        for (a, _) in ready {
            if a.session == session {
                wrote |= put(state, Request::PubAck(rumqttc::PubAck::new(a.pkid))).await;
            } else {
                debug!(
                    pkid = a.pkid,
                    "mqtt: an ack of an earlier session is dropped"
                );
            }
        }
    }
    if wrote {
        match tokio::time::timeout(FLUSH_TIMEOUT, network.flush()).await {
            Ok(Ok(())) => {}
            // The next poll finds the connection broken and reconnects; what is in flight at
            // QoS 1 is sent again from rumqttc's state.
            Ok(Err(e)) => debug!(error = ?e, "mqtt: flush failed"),
            Err(_) => debug!("mqtt: flush still waiting for the socket; continued by the next one"),
        }
    }
    let state = shared.state();
    let outbox = &state.outbox;
    shared
        .stats
        .queued
        .store(outbox.len() as u64, Ordering::Relaxed);
    shared
        .stats
        .dropped
        .store(outbox.dropped, Ordering::Relaxed);
    shared
        .stats
        .coalesced
        .store(outbox.coalesced, Ordering::Relaxed);
}

/// Logs connection errors: the first one and every change at warn, a repeat once a minute.
#[derive(Default)]
struct ErrorLog {
    last: String,
    at: Option<Instant>,
    repeats: u64,
}

impl ErrorLog {
    fn log(&mut self, text: &str) {
        let now = Instant::now();
        let due = self
            .at
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
        if text != self.last || due {
            warn!(error = %text, repeats = self.repeats, "mqtt: not connected; retrying");
            self.last = text.to_string();
            self.at = Some(now);
            self.repeats = 0;
        } else {
            self.repeats += 1;
            debug!(error = %text, "mqtt: still not connected");
        }
    }
}

/// A connection error in words that say what to do.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword => {
                "broker refused the connection: not authorized (check username and password)"
                    .to_string()
            }
            other => format!("broker refused the connection: {other:?}"),
        },
        ConnectionError::Tls(t) => format!("TLS: {t} (check ca_file, cert_file and key_file)"),
        ConnectionError::Io(io) => format!("I/O: {io}"),
        ConnectionError::NetworkTimeout => "connection timed out".to_string(),
        other => other.to_string(),
    }
}

fn read_file(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::File {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// `mqtt.tls_insecure`: TLS with no check of the broker's certificate chain or name (the
/// handshake signatures are still verified, so the session key is the certificate's). For a
/// broker with a self-signed certificate on a trusted network; logged at every start.
fn insecure_tls(tls: &TlsSettings) -> Result<rumqttc::TlsConfiguration, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)));
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => {
            let pem = |what: &'static str, path: &PathBuf, reason: String| Error::Pem {
                what,
                path: path.display().to_string(),
                reason,
            };
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&read_file("client certificate", c)?)
                    .collect::<Result<_, _>>()
                    .map_err(|e| pem("client certificate", c, e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(&read_file("client key", k)?)
                .map_err(|e| pem("client key", k, e.to_string()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| Error::Tls(e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
}

/// Accepts any server certificate; checks the handshake's signatures against it.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The system's CA bundle on Debian and Raspberry Pi OS (package ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn options(s: &MqttSettings) -> Result<MqttOptions, Error> {
    let mut o = connection_options(s, s.client_id.clone())?;
    o.set_clean_session(s.clean_session);
    // A command is acknowledged once its result is out, not on arrival (module docs).
    o.set_manual_acks(true);
    o.set_last_will(LastWill::new(
        s.status_topic.clone(),
        s.offline_payload.clone(),
        QoS::AtLeastOnce,
        true,
    ));
    Ok(o)
}

/// Broker, credentials and TLS under `client_id`: a clean session without a will.
fn connection_options(s: &MqttSettings, client_id: String) -> Result<MqttOptions, Error> {
    let mut o = MqttOptions::new(client_id, s.host.clone(), s.port);
    o.set_keep_alive(s.keep_alive);
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some(user) = &s.username {
        let password = s
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        o.set_credentials(user.clone(), password);
    }
    if let Some(tls) = &s.tls {
        if tls.insecure {
            o.set_transport(Transport::tls_with_config(insecure_tls(tls)?));
            return Ok(o);
        }
        let ca = match &tls.ca_file {
            Some(path) => read_file("CA certificate", path)?,
            None => read_file("system CA bundle", &PathBuf::from(SYSTEM_CA_BUNDLE))?,
        };
        let client_auth = match (&tls.cert_file, &tls.key_file) {
            (Some(c), Some(k)) => Some((
                read_file("client certificate", c)?,
                read_file("client key", k)?,
            )),
            _ => None,
        };
        o.set_transport(Transport::tls(ca, client_auth, None));
    }
    Ok(o)
}
