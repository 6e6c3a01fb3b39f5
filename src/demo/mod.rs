//! `fieldbridge demo`: the whole pipeline on a machine with no hardware. Simulated devices
//! (`sim.rs`), the real gateway against them, every publish printed, and the command to try.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::config::parse_mqtt_url;
use crate::{EXIT_FAILURE, EXIT_USAGE, app};

mod sim;

fn config(
    mqtt: &str,
    thermostat: &str,
    meter: &str,
    weather: &str,
    dir: &str,
    web_port: u16,
) -> String {
    format!(
        r#"[gateway]
id = "demo"
base_topic = "demo"
location = "home"
health_interval = "10s"

[mqtt]
url = "{mqtt}"
client_id = "fieldbridge-demo"
clean_session = true
reconnect_min = "200ms"
reconnect_max = "2s"

[history]
path = "{dir}/history.db"

[homeassistant]
discovery = true

# The commissioning page, on loopback; the devices are simulated, so it may write.
[web]
listen = "127.0.0.1:{web_port}"
allow_writes = true

[buses.lan]
kind = "modbus-tcp"
address = "{thermostat}"
timeout = "500ms"

[buses.rs485]
kind = "modbus-rtu"
port = "{meter}"
baud = 9600
timeout = "500ms"

[buses.usb]
kind = "serial"
port = "{weather}"
baud = 115200
format = "json"

[devices.thermostat]
bus = "lan"
unit = 1
poll = "1s"
[devices.thermostat.points.temperature]
register = "input:0"
type = "i16"
scale = 0.1
precision = 1
unit = "°C"
[devices.thermostat.points.setpoint]
register = "holding:0"
scale = 0.1
precision = 1
unit = "°C"
writable = true
min = 5
max = 30
[devices.thermostat.points.heating]
register = "coil:0"
map = {{ 0 = "off", 1 = "on" }}

[devices.meter]
bus = "rs485"
unit = 1
poll = "2s"
profile = "eastron-sdm120"
[devices.meter.points.voltage]
deadband = 0.5

[devices.weather]
bus = "usb"
match = {{ field = "id", equals = "weather1" }}
[devices.weather.points.temperature]
field = "temp"
unit = "°C"
[devices.weather.points.humidity]
field = "hum"
unit = "%"
[devices.weather.actions.led]
send = "LED {{value}}"
expect = "^OK"
"#
    )
}

/// Runs the demo; returns the exit code.
pub async fn run(mqtt: Option<String>, duration: Option<Duration>) -> u8 {
    let stop = CancellationToken::new();
    let own_broker = mqtt.is_none();
    let url = match mqtt {
        Some(u) => u,
        None => match start_broker() {
            Ok(u) => u,
            Err(msg) => {
                eprintln!("fieldbridge demo: {msg}");
                return EXIT_USAGE;
            }
        },
    };
    let Ok(broker) = parse_mqtt_url(&url) else {
        eprintln!("fieldbridge demo: --mqtt {url}: expected mqtt://host[:port]");
        return EXIT_USAGE;
    };
    let made = async {
        let (thermostat, _) = sim::thermostat(stop.clone()).await?;
        let meter = sim::energy_meter(stop.clone())?;
        let weather = sim::weather_station(stop.clone())?;
        let dir = tempfile_dir()?;
        Ok::<_, std::io::Error>((thermostat, meter, weather, dir))
    };
    let (thermostat, meter, weather, dir) = match made.await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("fieldbridge demo: cannot start the simulated devices: {e}");
            return EXIT_FAILURE;
        }
    };
    let path = dir.join("config.toml");
    let write_config = |web_port: u16| {
        let text = config(
            &url,
            &thermostat.to_string(),
            &meter,
            &weather,
            &dir.display().to_string(),
            web_port,
        );
        std::fs::write(&path, text)
    };
    if let Err(e) = write_config(8080) {
        eprintln!("fieldbridge demo: {e}");
        return EXIT_FAILURE;
    }
    println!("fieldbridge demo: broker {url}; simulated devices:");
    println!("  thermostat  Modbus TCP   {thermostat}");
    println!("  meter       Modbus RTU   {meter} (9600 baud, profile eastron-sdm120)");
    println!("  weather     serial JSON  {weather}");
    println!("config: {}", path.display());
    println!(
        "try:  mosquitto_pub -h {} -p {} -t demo/home/device/thermostat/command -m '{{\"setpoint\": 22.5}}'",
        broker.host, broker.port
    );
    println!(
        "      mosquitto_pub -h {} -p {} -t demo/home/device/weather/command -m '{{\"action\": \"led\", \"value\": 1}}'",
        broker.host, broker.port
    );
    println!("publishes:");

    // Print everything the gateway publishes, as a subscriber sees it.
    let mut opts = MqttOptions::new("fieldbridge-demo-viewer", broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut events) = AsyncClient::new(opts, 16);
    if client.try_subscribe("demo/#", QoS::AtMostOnce).is_err() {
        return EXIT_FAILURE;
    }
    let viewer_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = viewer_stop.cancelled() => return,
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        println!("{} {}", p.topic, String::from_utf8_lossy(&p.payload));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                },
            }
        }
    });

    // Its discovery configs, state and availability go when the demo ends: it must not leave
    // entities behind in the Home Assistant of a broker given with --mqtt.
    // The page on 8080 where it is free, else on any free port (the demo prints which).
    let mut built = app::build(&path).await;
    if matches!(&built, Err(app::BuildError::Other(e)) if e.to_string().contains("web.listen")) {
        if let Err(e) = write_config(0) {
            eprintln!("fieldbridge demo: {e}");
            return EXIT_FAILURE;
        }
        built = app::build(&path).await;
    }
    let gateway = match built {
        Ok(g) if own_broker => g.ephemeral().own_broker(),
        Ok(g) => g.ephemeral(),
        Err(e) => {
            eprintln!("fieldbridge demo: {e}");
            return EXIT_FAILURE;
        }
    };
    if let Some(a) = gateway.web_addr() {
        println!("commissioning page: http://{a}/");
    }
    let gw_stop = CancellationToken::new();
    if let Some(d) = duration {
        let t = gw_stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            t.cancel();
        });
    }
    let code = gateway.run_until(gw_stop).await;
    stop.cancel();
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::debug!(error = %e, "demo dir not removed");
    }
    code
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let base = std::env::temp_dir().join(format!("fieldbridge-demo-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    Ok(base)
}

/// The in-process broker (cargo feature `demo`) on a free loopback port.
#[cfg(feature = "demo")]
fn start_broker() -> Result<String, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port for the in-process broker: {e}"))?;
    let text = format!(
        r#"id = 0
[router]
id = 0
max_connections = 100
max_outgoing_packet_count = 200
max_segment_size = 1048576
max_segment_count = 4
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 262144
max_inflight_count = 100
dynamic_filters = true
"#
    );
    let cfg: rumqttd::Config =
        toml::from_str(&text).map_err(|e| format!("in-process broker config: {e}"))?;
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(cfg);
            if let Err(e) = broker.start() {
                eprintln!("fieldbridge demo: in-process broker stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start the in-process broker: {e}"))?;
    // Wait until it listens. Not by connecting: rumqttd logs an ERROR for a connection that
    // goes away, even after a clean MQTT DISCONNECT.
    for _ in 0..100 {
        if listening(port) {
            return Ok(format!("mqtt://127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("the in-process broker did not start".into())
}

/// Whether a socket listens on 127.0.0.1:`port` (Linux's /proc/net/tcp: local address in hex,
/// state 0A = LISTEN).
#[cfg(feature = "demo")]
fn listening(port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")
        })
    })
}

#[cfg(not(feature = "demo"))]
fn start_broker() -> Result<String, String> {
    Err("this build has no in-process broker: give --mqtt mqtt://HOST:PORT, or build with `--features demo`".into())
}
