//! The Jinja templates in our discovery configs. Home Assistant renders them with Python's
//! Jinja2, which looks an attribute up before an item: `value_json.items` is the dict's method,
//! `value_json.l1-power` is a subtraction and `value_json.3phase` does not parse. So every key
//! is written as a subscript (`value_json['l1-power']`), and every lookup says what a missing
//! key renders: `None`, which Home Assistant shows as unknown (an empty string would keep the
//! old value, and `False` or `0` would invent one).
//!
//! Each template also tolerates a payload that is not JSON at all (`value_json` undefined: an
//! empty retained message when a device is removed), because Home Assistant logs a warning for
//! every undefined variable a template touches.
//!
//! Names in templates are point, bus and action names (`[a-z0-9_-]+`), so they are safe inside
//! single quotes; labels can hold anything and are written as JSON strings, which are valid
//! Jinja string literals.

use serde_json::Value as Json;

/// `value_json['key']`, or `None` when the payload is not a JSON object or lacks the key.
/// (`is mapping` is false for an undefined `value_json`, and tests, unlike `in`, do not make
/// Home Assistant log an undefined variable.)
fn lookup(key: &str) -> String {
    format!("value_json['{key}'] if value_json is mapping and '{key}' in value_json else None")
}

/// The value of `point` in the device state, as it is.
pub fn value(point: &str) -> String {
    format!("{{{{ {} }}}}", lookup(point))
}

/// A bool in the device state as `ON`/`OFF` (what `binary_sensor` and `switch` compare with),
/// `None` when absent.
pub fn on_off(point: &str) -> String {
    format!(
        "{{% set v = {} %}}{{{{ None if v is none else ('ON' if v else 'OFF') }}}}",
        lookup(point)
    )
}

/// A `map` label in the device state, `None` when absent or not one of `labels` (a raw value
/// the map does not name is published as the number; Home Assistant rejects an option it does
/// not know, loudly).
pub fn label(point: &str, labels: &[&String]) -> String {
    let list = Json::from(
        labels
            .iter()
            .map(|l| Json::from(l.as_str()))
            .collect::<Vec<_>>(),
    );
    format!(
        "{{% set v = {} %}}{{{{ v if v in {list} else None }}}}",
        lookup(point)
    )
}

/// A field of the availability payload (`{"device": …, "status": "online"}`).
pub fn availability() -> String {
    value("status")
}

/// A value nested in the health payload, e.g. `["buses", "plc", "errors"]`; `scale` multiplies
/// it (utilisation 0..1 as a percentage), rounded to one decimal.
pub fn nested(path: &[&str], scale: Option<f64>) -> String {
    let mut out = "{% set v = value_json if value_json is mapping else None %}".to_string();
    for key in path {
        out += &format!("{{% set v = v['{key}'] if v is mapping and '{key}' in v else None %}}");
    }
    let value = match scale {
        Some(f) => format!("(v * {f}) | round(1)"),
        None => "v".into(),
    };
    out + &format!("{{{{ None if v is none else {value} }}}}")
}

/// `{"point": <value>}` for `number`, `select` (and the like), as JSON whatever the value.
pub fn command(point: &str) -> String {
    format!("{{{{ {{'{point}': value}} | tojson }}}}")
}

/// `{"action": "<action>", "value": <value>}` for an action whose `send` template takes
/// `{value}`.
pub fn action_command(action: &str) -> String {
    format!("{{{{ {{'action': '{action}', 'value': value}} | tojson }}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, value_json: Option<Json>) -> String {
        let env = minijinja::Environment::new();
        let ctx = match value_json {
            Some(v) => serde_json::json!({ "value_json": v }),
            None => serde_json::json!({}),
        };
        let ctx: minijinja::Value = serde_json::from_value(ctx).unwrap();
        env.render_str(template, ctx).unwrap()
    }

    #[test]
    fn absent_keys_and_non_json_payloads_render_none() {
        let state = serde_json::json!({"a": 1.5, "b": true, "m": "heat", "timestamp": 1.0});
        assert_eq!(render(&value("a"), Some(state.clone())), "1.5");
        assert_eq!(render(&value("x"), Some(state.clone())), "None");
        assert_eq!(render(&value("x"), None), "None");
        assert_eq!(render(&on_off("b"), Some(state.clone())), "ON");
        assert_eq!(render(&on_off("x"), Some(state.clone())), "None");
        let heat = String::from("heat");
        let cool = String::from("cool");
        assert_eq!(
            render(&label("m", &[&heat, &cool]), Some(state.clone())),
            "heat"
        );
        assert_eq!(render(&label("m", &[&cool]), Some(state)), "None");
    }

    #[test]
    fn nested_health_values_scale_and_default_to_none() {
        let health = serde_json::json!({"buses": {"plc": {"utilisation": 0.1234, "errors": 3}}});
        let t = nested(&["buses", "plc", "utilisation"], Some(100.0));
        assert_eq!(render(&t, Some(health.clone())), "12.3");
        let t = nested(&["buses", "plc", "errors"], None);
        assert_eq!(render(&t, Some(health.clone())), "3");
        let t = nested(&["buses", "rs485", "errors"], None);
        assert_eq!(render(&t, Some(health)), "None");
        assert_eq!(render(&t, None), "None");
    }
}
