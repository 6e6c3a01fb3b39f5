//! Every payload of CONTRACT §4 that the gateway itself composes. No other module builds one.

use serde_json::json;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_status_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::from_str(&gateway_status("gw", false)).unwrap();
        assert_eq!(v["gateway"], "gw");
        assert_eq!(v["status"], "offline");
        assert_eq!(v["version"], VERSION);
    }
}
