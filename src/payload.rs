//! Every payload of CONTRACT §4 that the gateway itself composes. No other module builds one.

use serde_json::json;

use crate::model::Value;

/// Crate version, reported in the gateway status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `{base}/gateway/{gateway}/status`: `{"gateway": "garage-pi", "status": "online", "version": "…"}`.
pub fn gateway_status(gateway: &str, online: bool) -> String {
    json!({
        "gateway": gateway,
        "status": if online { "online" } else { "offline" },
        "version": VERSION,
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

/// Device state topic: every point's last value, flat, plus `timestamp`.
pub fn state<'a>(
    values: impl IntoIterator<Item = (&'a str, &'a Value)>,
    at: std::time::SystemTime,
) -> String {
    let mut m = serde_json::Map::new();
    for (k, v) in values {
        m.insert(k.to_string(), v.to_json());
    }
    m.insert("timestamp".into(), ts_json(at));
    serde_json::Value::Object(m).to_string()
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

    #[test]
    fn gateway_status_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::from_str(&gateway_status("gw", false)).unwrap();
        assert_eq!(v["gateway"], "gw");
        assert_eq!(v["status"], "offline");
        assert_eq!(v["version"], VERSION);
    }
}
