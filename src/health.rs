//! `{base}/gateway/{gateway}/health` (README "Topics"): the counters, published every
//! `gateway.health_interval` (QoS 0, not retained).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Map, Value as Json, json};
use tokio_util::sync::CancellationToken;

use crate::bus::BusStats;
use crate::bus::serial_line::LineStats;
use crate::device::CommandStats;
use crate::mqtt::MqttHandle;
use crate::payload::VERSION;

/// Where the counters come from.
#[derive(Clone, Default)]
pub struct Sources {
    pub mqtt: Option<MqttHandle>,
    pub modbus: Vec<(String, Arc<BusStats>)>,
    pub serial: Vec<(String, Arc<LineStats>)>,
    pub commands: Option<Arc<CommandStats>>,
    pub history: Option<Arc<crate::history::HistoryStats>>,
    /// With `[history.forward]`.
    pub forward: Option<Arc<crate::history::ForwardStats>>,
}

/// Busy time per bus at the last report, for utilisation over the interval.
#[derive(Default)]
struct Previous {
    busy_us: Vec<u64>,
    at: Option<Instant>,
}

fn bus_json(stats: &BusStats, prev_busy: u64, elapsed: Duration) -> (Json, u64) {
    let get = BusStats::get;
    let transactions = get(&stats.transactions);
    let busy = get(&stats.busy_us_total);
    let latency_ms = if transactions > 0 {
        get(&stats.latency_us_total) as f64 / transactions as f64 / 1000.0
    } else {
        0.0
    };
    let utilisation = if elapsed.is_zero() {
        0.0
    } else {
        ((busy - prev_busy.min(busy)) as f64 / elapsed.as_micros() as f64).min(1.0)
    };
    (
        json!({
            "transactions": transactions,
            "errors": get(&stats.errors),
            "timeouts": get(&stats.timeouts),
            "exceptions": get(&stats.exceptions),
            "gateway_exceptions": get(&stats.gateway_exceptions),
            "overruns": get(&stats.overruns),
            "reconnects": get(&stats.reconnects),
            "latency_ms": (latency_ms * 100.0).round() / 100.0,
            "latency_p50_ms": stats.latency.quantile_ms(0.5).map(|x| (x * 100.0).round() / 100.0),
            "latency_p99_ms": stats.latency.quantile_ms(0.99).map(|x| (x * 100.0).round() / 100.0),
            "utilisation": (utilisation * 1000.0).round() / 1000.0,
        }),
        busy,
    )
}

/// The health payload now.
fn report(src: &Sources, started: Instant, prev: &mut Previous) -> String {
    let now = Instant::now();
    let elapsed = prev.at.map(|t| now.duration_since(t)).unwrap_or_default();
    let mut buses = Map::new();
    let mut busy = Vec::new();
    for (i, (name, stats)) in src.modbus.iter().enumerate() {
        let (j, b) = bus_json(stats, prev.busy_us.get(i).copied().unwrap_or(0), elapsed);
        buses.insert(name.clone(), j);
        busy.push(b);
    }
    for (name, s) in &src.serial {
        buses.insert(
            name.clone(),
            json!({
                "lines": s.lines.load(Ordering::Relaxed),
                "garbage": s.garbage.load(Ordering::Relaxed),
                "unmatched": s.unmatched.load(Ordering::Relaxed),
                "dropped": s.dropped.load(Ordering::Relaxed),
                "writes": s.writes.load(Ordering::Relaxed),
                "reconnects": s.reopens.load(Ordering::Relaxed),
            }),
        );
    }
    prev.busy_us = busy;
    prev.at = Some(now);
    let mqtt = src.mqtt.as_ref().map(|m| {
        let s = m.stats();
        json!({
            "connected": s.connected,
            "reconnects": s.reconnects,
            "published": s.published,
            "dropped": s.dropped,
            "queued": s.queued,
        })
    });
    let commands = src.commands.as_ref().map(|c| {
        json!({
            "ok": c.ok.load(Ordering::Relaxed),
            "failed": c.failed.load(Ordering::Relaxed),
            "accepted": c.accepted.load(Ordering::Relaxed),
            "rejected": c.rejected.load(Ordering::Relaxed),
            "busy": c.busy.load(Ordering::Relaxed),
            "offline": c.offline.load(Ordering::Relaxed),
            "retained": c.retained.load(Ordering::Relaxed),
            "repeated": c.repeated.load(Ordering::Relaxed),
        })
    });
    let history = src.history.as_ref().map(|h| {
        json!({
            "rows": h.rows.load(Ordering::Relaxed),
            "pending": h.pending.load(Ordering::Relaxed),
            "dropped": h.dropped.load(Ordering::Relaxed),
            "errors": h.errors.load(Ordering::Relaxed),
            "full": h.full.load(Ordering::Relaxed),
            "reopened": h.reopened.load(Ordering::Relaxed),
            "available": h.unavailable().is_none(),
            "unavailable": h.unavailable(),
        })
    });
    let forward = src.forward.as_ref().map(|f| {
        json!({
            "connected": f.connected.load(Ordering::Relaxed),
            "rows": f.rows.load(Ordering::Relaxed),
            "pending": f.pending.load(Ordering::Relaxed),
            // Seconds behind: the age of the oldest row the central database does not have.
            "lag": (f.lag().as_secs_f64() * 10.0).round() / 10.0,
            "errors": f.errors.load(Ordering::Relaxed),
            "dropped": f.dropped.load(Ordering::Relaxed),
        })
    });
    // Tasks alive in the runtime: steady in a healthy gateway, so a leak (say, across reloads)
    // shows as a number that only grows.
    let tasks = tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_alive_tasks())
        .unwrap_or(0);
    json!({
        "uptime": started.elapsed().as_secs(),
        "tasks": tasks,
        "history": history,
        "forward": forward,
        "version": VERSION,
        "mqtt": mqtt,
        "buses": buses,
        "commands": commands,
    })
    .to_string()
}

/// The counters that fit one `systemctl status` line.
fn status_line(src: &Sources) -> String {
    let mqtt = match src.mqtt.as_ref().map(MqttHandle::stats) {
        Some(s) if s.connected => format!(
            "MQTT connected, {} published, {} dropped",
            s.published, s.dropped
        ),
        Some(s) => format!(
            "MQTT disconnected (retrying), {} queued, {} dropped",
            s.queued, s.dropped
        ),
        None => "MQTT off".to_string(),
    };
    let timeouts: u64 = src
        .modbus
        .iter()
        .map(|(_, b)| BusStats::get(&b.timeouts))
        .sum();
    let (ok, rejected) = src
        .commands
        .as_ref()
        .map(|c| {
            (
                c.ok.load(Ordering::Relaxed),
                c.rejected.load(Ordering::Relaxed),
            )
        })
        .unwrap_or((0, 0));
    format!("{mqtt}; {timeouts} bus timeouts; commands {ok} ok, {rejected} rejected")
}

/// Publishes the health payload every `interval` until `shutdown`.
pub async fn run(src: Sources, topic: String, interval: Duration, shutdown: CancellationToken) {
    let started = Instant::now();
    let mut prev = Previous::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: a baseline for utilisation, published too.
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let body = report(&src, started, &mut prev);
        crate::systemd::status(&status_line(&src));
        if let Some(m) = &src.mqtt {
            m.publish(topic.clone(), body, 0, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_carries_bus_and_command_counters() {
        let bus = Arc::new(BusStats::default());
        BusStats::add(&bus.transactions, 4);
        BusStats::add(&bus.latency_us_total, 8_000);
        BusStats::add(&bus.timeouts, 1);
        let commands = Arc::new(CommandStats::default());
        commands.rejected.store(7, Ordering::Relaxed);
        let forward = Arc::new(crate::history::ForwardStats::default());
        forward.pending.store(5, Ordering::Relaxed);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        forward.oldest_ms.store(now_ms - 2_500, Ordering::Relaxed);
        let src = Sources {
            mqtt: None,
            modbus: vec![("plc".into(), bus)],
            serial: vec![],
            commands: Some(commands),
            history: None,
            forward: Some(forward.clone()),
        };
        let mut prev = Previous::default();
        let v: Json = serde_json::from_str(&report(&src, Instant::now(), &mut prev)).unwrap();
        assert_eq!(v["buses"]["plc"]["transactions"], 4);
        assert_eq!(v["forward"]["pending"], 5);
        let lag = v["forward"]["lag"].as_f64().unwrap();
        assert!((2.5..4.0).contains(&lag), "lag {lag}");
        assert_eq!(v["buses"]["plc"]["timeouts"], 1);
        assert_eq!(v["buses"]["plc"]["latency_ms"], 2.0);
        assert_eq!(v["commands"]["rejected"], 7);
        assert!(
            status_line(&src).ends_with("commands 0 ok, 7 rejected"),
            "{}",
            status_line(&src)
        );
        assert_eq!(v["version"], VERSION);
    }
}
