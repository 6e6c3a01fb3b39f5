//! Every payload of README "Topics" that the gateway itself composes. No other module builds one.

use serde_json::json;

use crate::model::Value;

/// Crate version, reported in the gateway status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `{base}/gateway/{gateway}/status`: `{"gateway": "garage-pi", "status": "online", "version": "…",
/// "host": "…"}`, `host` naming the installation (`crate::installation`).
pub fn gateway_status(gateway: &str, online: bool, host: &str) -> String {
    json!({
        "gateway": gateway,
        "status": if online { "online" } else { "offline" },
        "version": VERSION,
        "host": host,
    })
    .to_string()
}

/// UNIX seconds as a float with millisecond precision.
pub fn timestamp(t: std::time::SystemTime) -> f64 {
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    ms as f64 / 1000.0
}

fn ts_json(t: std::time::SystemTime) -> serde_json::Value {
    serde_json::Number::from_f64(timestamp(t))
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// Sensor topic: `{"value": 72.5, "unit": "°F", "timestamp": …, "device_id": "boiler", "location": "basement"}`.
/// `unit` is left out when the point has none.
pub fn sensor(
    value: &Value,
    unit: Option<&str>,
    at: std::time::SystemTime,
    device: &str,
    location: &str,
) -> String {
    SensorPayload::new(unit, device, location).render(value, at)
}

/// A point's sensor payload with what is fixed per point written once: only the timestamp and
/// the value are formatted per reading. The bytes are those of a `serde_json` object (its keys
/// sorted, as `serde_json::Map` has them).
#[derive(Debug, Clone)]
pub struct SensorPayload {
    /// `{"device_id":…,"location":…,"timestamp":`
    head: Vec<u8>,
    /// `,"unit":…,"value":` or `,"value":`
    tail: Vec<u8>,
}

impl SensorPayload {
    pub fn new(unit: Option<&str>, device: &str, location: &str) -> SensorPayload {
        let mut head = b"{\"device_id\":".to_vec();
        write_json(&mut head, device);
        head.extend_from_slice(b",\"location\":");
        write_json(&mut head, location);
        head.extend_from_slice(b",\"timestamp\":");
        let mut tail = Vec::new();
        if let Some(u) = unit {
            tail.extend_from_slice(b",\"unit\":");
            write_json(&mut tail, u);
        }
        tail.extend_from_slice(b",\"value\":");
        SensorPayload { head, tail }
    }

    /// The payload of `value` read at `at`.
    pub fn render(&self, value: &Value, at: std::time::SystemTime) -> String {
        let mut out = Vec::with_capacity(self.head.len() + self.tail.len() + 32);
        out.extend_from_slice(&self.head);
        write_json(&mut out, &ts_json(at));
        out.extend_from_slice(&self.tail);
        write_json(&mut out, &value.to_json());
        out.push(b'}');
        // Only JSON went in: always UTF-8.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// Appends `v` as JSON.
fn write_json(out: &mut Vec<u8>, v: &(impl serde::Serialize + ?Sized)) {
    if serde_json::to_writer(out, v).is_err() {
        // Strings and numbers into a Vec: serde_json has nothing to fail on.
    }
}

/// Device state topic: every point's last value, flat, plus `timestamp`. Written straight into
/// the payload, with the bytes a `serde_json::Map` of the same entries gives (keys sorted, the
/// last of a repeated key winning, `timestamp` over a point of that name).
pub fn state<'a>(
    values: impl IntoIterator<Item = (&'a str, &'a Value)>,
    at: std::time::SystemTime,
) -> String {
    // `None`: the timestamp, last so that it wins.
    let mut entries: Vec<(&str, Option<&Value>)> =
        values.into_iter().map(|(k, v)| (k, Some(v))).collect();
    entries.push(("timestamp", None));
    // Stable, and linear on the sorted keys the device state gives.
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(16 + entries.len() * 16);
    out.push(b'{');
    let mut first = true;
    for (i, (key, value)) in entries.iter().enumerate() {
        if entries.get(i + 1).is_some_and(|(next, _)| next == key) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_json(&mut out, key);
        out.push(b':');
        match value {
            Some(v) => write_json(&mut out, &v.to_json()),
            None => write_json(&mut out, &ts_json(at)),
        }
    }
    out.push(b'}');
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Availability topic: `{"device": "boiler", "status": "online"}`.
pub fn availability(device: &str, online: bool) -> String {
    json!({
        "device": device,
        "status": if online { "online" } else { "offline" },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensor_state_and_availability_follow_the_contract() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_000_000_123);
        let v: serde_json::Value = serde_json::from_str(&sensor(
            &Value::Float(72.5),
            Some("°F"),
            at,
            "boiler",
            "basement",
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"value": 72.5, "unit": "°F", "timestamp": 1764000000.123, "device_id": "boiler", "location": "basement"})
        );
        let on = Value::Text("on".into());
        let b = Value::Int(80);
        let v: serde_json::Value =
            serde_json::from_str(&state([("state", &on), ("brightness", &b)], at)).unwrap();
        assert_eq!(
            v,
            json!({"state": "on", "brightness": 80, "timestamp": 1764000000.123})
        );
        let v: serde_json::Value = serde_json::from_str(&availability("boiler", false)).unwrap();
        assert_eq!(v, json!({"device": "boiler", "status": "offline"}));
    }

    /// The payload built the plain way (a `serde_json::Map`): the prebuilt one must
    /// give the same bytes.
    fn sensor_by_map(
        value: &Value,
        unit: Option<&str>,
        at: std::time::SystemTime,
        device: &str,
        location: &str,
    ) -> String {
        let mut m = serde_json::Map::new();
        m.insert("value".into(), value.to_json());
        if let Some(u) = unit {
            m.insert("unit".into(), u.into());
        }
        m.insert("timestamp".into(), ts_json(at));
        m.insert("device_id".into(), device.into());
        m.insert("location".into(), location.into());
        serde_json::Value::Object(m).to_string()
    }

    #[test]
    fn prebuilt_sensor_payload_has_the_bytes_of_a_json_object() {
        let values = [
            Value::Int(0),
            Value::Int(-17),
            Value::Int(9_007_199_254_740_993),
            Value::Int(i128::from(u64::MAX)),
            Value::Float(21.5),
            Value::Float(-0.1),
            Value::Float(1e300),
            Value::Float(f64::NAN),
            Value::Bool(true),
            Value::Text("on \"quoted\" \\ °C\n".into()),
        ];
        for ms in [
            0u64,
            1_764_000_000_123,
            1_764_000_000_100,
            1_764_000_000_000,
        ] {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            for v in &values {
                for unit in [None, Some("°C"), Some("\"x\"")] {
                    let p = SensorPayload::new(unit, "boiler-1", "base_ment");
                    assert_eq!(
                        p.render(v, at),
                        sensor_by_map(v, unit, at, "boiler-1", "base_ment")
                    );
                }
            }
        }
    }

    #[test]
    fn state_payload_has_the_bytes_of_a_json_object() {
        fn by_map(values: &[(&str, &Value)], at: std::time::SystemTime) -> String {
            let mut m = serde_json::Map::new();
            for (k, v) in values {
                m.insert(k.to_string(), v.to_json());
            }
            m.insert("timestamp".into(), ts_json(at));
            serde_json::Value::Object(m).to_string()
        }
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_000_000_123);
        let (a, b, c, t) = (
            Value::Int(1),
            Value::Float(2.5),
            Value::Text("x\"y".into()),
            Value::Bool(false),
        );
        let cases: Vec<Vec<(&str, &Value)>> = vec![
            vec![],
            vec![("a", &a)],
            vec![("zeta", &a), ("alpha", &b), ("timer", &c), ("tide", &t)],
            vec![("a", &a), ("a", &b), ("b", &c)],
            vec![("timestamp", &a), ("u", &b)],
            vec![
                ("t", &a),
                ("timestamp_2", &b),
                ("times", &c),
                ("z-1", &t),
                ("z_1", &a),
            ],
        ];
        for values in cases {
            assert_eq!(state(values.iter().copied(), at), by_map(&values, at));
        }
    }

    #[test]
    fn gateway_status_has_the_contract_fields() {
        let v: serde_json::Value =
            serde_json::from_str(&gateway_status("gw", false, "pi-0a1b2c3d")).unwrap();
        assert_eq!(v["gateway"], "gw");
        assert_eq!(v["status"], "offline");
        assert_eq!(v["version"], VERSION);
        assert_eq!(v["host"], "pi-0a1b2c3d");
    }
}
