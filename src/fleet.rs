//! The running buses and devices, and how a reload changes them: only what changed is stopped
//! and started again; the MQTT session and everything else keep running (README "Signals and systemd", SIGHUP).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bus::BusStats;
use crate::bus::modbus::ModbusBus;
use crate::bus::serial_line::{LineStats, SerialLineBus};
use crate::config::{BusConfig, Config, DeviceConfig};
use crate::device::modbus::DevicePoller;
use crate::device::serial::LineDevice;
use crate::device::{DEVICE_COMMANDS_CAP, Links};
use crate::router::Router;

/// How long a stopping bus or device may take before it is abandoned.
const STOP_WAIT: Duration = Duration::from_secs(2);

struct RunningDevice {
    token: CancellationToken,
    task: JoinHandle<()>,
}

struct RunningBus {
    config: BusConfig,
    token: CancellationToken,
    task: JoinHandle<()>,
    devices: BTreeMap<String, RunningDevice>,
    /// The Modbus bus's handle, for devices started later; `None` for serial lines (their
    /// routing is fixed when the bus starts, so a device change restarts the bus).
    modbus: Option<crate::bus::BusHandle>,
    stats: Stats,
}

#[derive(Clone)]
enum Stats {
    Modbus(Arc<BusStats>),
    Serial(Arc<LineStats>),
}

/// What a reload did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub buses_restarted: Vec<String>,
    pub devices_added: Vec<String>,
    pub devices_removed: Vec<String>,
    pub devices_restarted: Vec<String>,
}

/// The running buses and their devices.
#[derive(Default)]
pub struct Fleet {
    buses: BTreeMap<String, RunningBus>,
}

/// Runs a task; if it panics (a bug — nothing in it should), the supervisor hears of it and
/// stops the process gracefully with exit 1, so systemd restarts a whole daemon rather than
/// leaving a bus silently dead.
async fn supervised<F>(name: String, task: F, fatal: mpsc::Sender<String>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    if let Err(e) = tokio::spawn(task).await {
        if e.is_panic() && fatal.try_send(format!("{name} panicked")).is_err() {
            tracing::error!(task = %name, "task panicked");
        }
    }
}

async fn stop(token: &CancellationToken, task: JoinHandle<()>) {
    token.cancel();
    if tokio::time::timeout(STOP_WAIT, task).await.is_err() {
        warn!("a task did not stop in time");
    }
}

impl Fleet {
    /// Starts every bus and device of `config`.
    pub fn start(config: &Config, links: &Links, router: &mut Router) -> Fleet {
        let mut fleet = Fleet::default();
        for name in config.buses.keys() {
            fleet.start_bus(name, config, links, router);
        }
        fleet
    }

    fn start_bus(&mut self, name: &str, config: &Config, links: &Links, router: &mut Router) {
        let Some(bus_config) = config.buses.get(name) else {
            return;
        };
        let token = CancellationToken::new();
        let devices: Vec<(&String, &Arc<DeviceConfig>)> = config
            .devices
            .iter()
            .filter(|(_, d)| d.bus == name)
            .collect();
        let mut running = BTreeMap::new();
        let (task, modbus, stats) = if bus_config.kind.is_modbus() {
            let (bus, handle) = ModbusBus::new(name, bus_config);
            let stats = Stats::Modbus(handle.stats.clone());
            if let Some(addr) = bus_config.share {
                tokio::spawn(crate::bus::share::serve(
                    name.to_string(),
                    addr,
                    handle.clone(),
                    token.clone(),
                ));
            }
            let task = tokio::spawn(supervised(
                format!("bus {name}"),
                bus.run(token.clone()),
                links.fatal.clone(),
            ));
            (task, Some(handle), stats)
        } else {
            let (mut bus, line) = SerialLineBus::new(name, bus_config);
            for (dev_name, dev) in &devices {
                let lines = bus.add_device(dev_name, dev.r#match.clone());
                let (cmd_tx, cmd_rx) = mpsc::channel(DEVICE_COMMANDS_CAP);
                router.add_device(dev_name, dev, cmd_tx);
                let device = LineDevice::new(dev_name, dev, lines, line.clone(), links.clone())
                    .with_commands(cmd_rx)
                    .with_timing(bus_config.timeout, bus_config.retries);
                let dev_token = CancellationToken::new();
                let task = tokio::spawn(supervised(
                    format!("device {dev_name}"),
                    device.run(dev_token.clone()),
                    links.fatal.clone(),
                ));
                running.insert(
                    (*dev_name).clone(),
                    RunningDevice {
                        token: dev_token,
                        task,
                    },
                );
            }
            let stats = Stats::Serial(line.stats.clone());
            let task = tokio::spawn(supervised(
                format!("bus {name}"),
                bus.run(token.clone()),
                links.fatal.clone(),
            ));
            (task, None, stats)
        };
        let mut rb = RunningBus {
            config: bus_config.clone(),
            token,
            task,
            devices: running,
            modbus,
            stats,
        };
        if rb.modbus.is_some() {
            for (dev_name, dev) in devices {
                Self::start_modbus_device(&mut rb, dev_name, dev, links, router);
            }
        }
        self.buses.insert(name.to_string(), rb);
    }

    fn start_modbus_device(
        rb: &mut RunningBus,
        name: &str,
        dev: &Arc<DeviceConfig>,
        links: &Links,
        router: &mut Router,
    ) {
        let Some(handle) = rb.modbus.clone() else {
            return;
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(DEVICE_COMMANDS_CAP);
        router.add_device(name, dev, cmd_tx);
        let poller = DevicePoller::new(name, dev, rb.config.max_gap, handle, links.clone())
            .with_commands(cmd_rx);
        let token = CancellationToken::new();
        let task = tokio::spawn(supervised(
            format!("device {name}"),
            poller.run(token.clone()),
            links.fatal.clone(),
        ));
        rb.devices
            .insert(name.to_string(), RunningDevice { token, task });
    }

    /// Stops a bus: its devices first, then the bus (which finishes its transaction).
    async fn stop_bus(&mut self, name: &str, router: &mut Router) {
        let Some(rb) = self.buses.remove(name) else {
            return;
        };
        for (dev, d) in rb.devices {
            router.remove_device(&dev);
            stop(&d.token, d.task).await;
        }
        // The bus lets go of its port before a new one opens it (ports open exclusively).
        stop(&rb.token, rb.task).await;
    }

    /// Applies `new` over `old`: stops, starts and restarts only the buses and devices that
    /// changed. Removed and moved devices leave no retained message at their old topics; a
    /// removed one is recorded offline in the history.
    pub async fn apply(
        &mut self,
        old: &Config,
        new: &Config,
        links: &Links,
        router: &mut Router,
    ) -> Applied {
        let mut applied = Applied::default();
        let device_changed = |name: &str| old.devices.get(name) != new.devices.get(name);
        // Buses that go or change, and serial buses whose devices change (their routing is
        // fixed at start): stopped whole, restarted below if they stay.
        let restart: Vec<String> = self
            .buses
            .iter()
            .filter(|(name, rb)| {
                let same = new.buses.get(*name) == Some(&rb.config);
                let serial_devices_changed = rb.modbus.is_none()
                    && old
                        .devices
                        .iter()
                        .chain(new.devices.iter())
                        .filter(|(_, d)| &d.bus == *name)
                        .any(|(n, _)| device_changed(n));
                !same || serial_devices_changed
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in &restart {
            self.stop_bus(name, router).await;
            if new.buses.contains_key(name) {
                applied.buses_restarted.push(name.clone());
            }
        }
        let mut started: Vec<String> = Vec::new();
        // Devices on Modbus buses that keep running.
        for (bus_name, rb) in self.buses.iter_mut() {
            let running: Vec<String> = rb.devices.keys().cloned().collect();
            for dev in running {
                let moved_or_gone = new.devices.get(&dev).is_none_or(|d| &d.bus != bus_name);
                if moved_or_gone || device_changed(&dev) {
                    if let Some(d) = rb.devices.remove(&dev) {
                        router.remove_device(&dev);
                        stop(&d.token, d.task).await;
                    }
                }
            }
            for (dev, d) in new.devices.iter().filter(|(_, d)| &d.bus == bus_name) {
                if rb.modbus.is_some() && !rb.devices.contains_key(dev) {
                    Self::start_modbus_device(rb, dev, d, links, router);
                    started.push(dev.clone());
                }
            }
        }
        // New buses, and the restarted ones, with their devices.
        for name in new.buses.keys() {
            if !self.buses.contains_key(name) {
                self.start_bus(name, new, links, router);
                if let Some(rb) = self.buses.get(name) {
                    started.extend(rb.devices.keys().cloned());
                }
            }
        }
        for dev in started {
            if old.devices.contains_key(&dev) {
                applied.devices_restarted.push(dev);
            } else {
                applied.devices_added.push(dev);
            }
        }
        applied.devices_removed = old
            .devices
            .keys()
            .filter(|d| !new.devices.contains_key(*d))
            .cloned()
            .collect();
        // A removed device, or one whose topics moved (a new location), leaves no retained
        // message at its old topics: state, availability and retained readings are removed from
        // the broker and from the link's re-publish cache. Its tasks have stopped by now.
        for (dev, d) in &old.devices {
            links
                .outputs
                .replaced(dev, d, new.devices.get(dev).map(|n| &**n));
        }
        applied.devices_added.sort();
        applied.devices_restarted.sort();
        info!(
            buses_restarted = ?applied.buses_restarted,
            devices_added = ?applied.devices_added,
            devices_removed = ?applied.devices_removed,
            devices_restarted = ?applied.devices_restarted,
            "SIGHUP: config applied"
        );
        applied
    }

    /// The handles of the running Modbus buses (the commissioning page asks them for scans,
    /// reads and writes, in their queues).
    pub fn modbus_handles(&self) -> BTreeMap<String, crate::bus::BusHandle> {
        self.buses
            .iter()
            .filter_map(|(name, rb)| rb.modbus.clone().map(|h| (name.clone(), h)))
            .collect()
    }

    /// The counters of every running bus, for the health topic.
    pub fn health_sources(&self, base: &crate::health::Sources) -> crate::health::Sources {
        let mut s = base.clone();
        s.modbus.clear();
        s.serial.clear();
        for (name, rb) in &self.buses {
            match &rb.stats {
                Stats::Modbus(m) => s.modbus.push((name.clone(), m.clone())),
                Stats::Serial(l) => s.serial.push((name.clone(), l.clone())),
            }
        }
        s
    }

    /// Stops devices and buses by `deadline`. Both at once: a bus that stops answers what its
    /// devices wait for (a read is abandoned, a write on the wire finishes), so a device waiting
    /// on a dead unit's timeout does not hold the stop up.
    pub async fn stop_all(&mut self, deadline: tokio::time::Instant) {
        for rb in self.buses.values() {
            for d in rb.devices.values() {
                d.token.cancel();
            }
            rb.token.cancel();
        }
        for rb in self.buses.values_mut() {
            for (_, d) in std::mem::take(&mut rb.devices) {
                if tokio::time::timeout_at(deadline, d.task).await.is_err() {
                    warn!("shutdown: a device task did not stop in time");
                }
            }
        }
        for (_, rb) in std::mem::take(&mut self.buses) {
            if tokio::time::timeout_at(deadline, rb.task).await.is_err() {
                warn!("shutdown: a bus task did not stop in time");
            }
        }
    }
}
