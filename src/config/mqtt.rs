//! `[mqtt]`: the broker, its credentials and the client's session.

use std::path::PathBuf;
use std::time::Duration;

use super::extract::{Extractor, Section};
use super::*;

impl Extractor<'_> {
    pub(super) fn mqtt(&mut self, s: &Section) -> MqttConfig {
        self.keys(
            s,
            &[
                "url",
                "username",
                "password_file",
                "ca_file",
                "cert_file",
                "key_file",
                "tls_insecure",
                "client_id",
                "keep_alive",
                "clean_session",
                "reconnect_min",
                "reconnect_max",
                "queue",
            ],
        );
        let url = match self.string(s, "url") {
            Some(u) => match parse_mqtt_url(&u) {
                Ok(url) => url,
                Err(msg) => {
                    self.error_at("mqtt.url", msg);
                    default_url()
                }
            },
            None => default_url(),
        };
        MqttConfig {
            url,
            username: self.text(s, "username"),
            password_file: self.text(s, "password_file").map(PathBuf::from),
            ca_file: self.text(s, "ca_file").map(PathBuf::from),
            cert_file: self.text(s, "cert_file").map(PathBuf::from),
            key_file: self.text(s, "key_file").map(PathBuf::from),
            tls_insecure: self.boolean(s, "tls_insecure").unwrap_or(false),
            client_id: self.text(s, "client_id"),
            keep_alive: self
                .duration(s, "keep_alive")
                .unwrap_or(Duration::from_secs(30)),
            clean_session: self.boolean(s, "clean_session").unwrap_or(false),
            reconnect_min: self
                .duration(s, "reconnect_min")
                .unwrap_or(Duration::from_secs(1)),
            reconnect_max: self
                .duration(s, "reconnect_max")
                .unwrap_or(Duration::from_secs(60)),
            queue: self.int(s, "queue", 1, 10_000_000).unwrap_or(10_000) as usize,
        }
    }
}

fn default_url() -> MqttUrl {
    MqttUrl {
        tls: false,
        host: "127.0.0.1".into(),
        port: 1883,
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`; IPv6 hosts in brackets.
pub fn parse_mqtt_url(url: &str) -> Result<MqttUrl, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(format!(
            "unsupported URL \"{url}\"; expected mqtt://host[:port] or mqtts://host[:port]"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(format!(
            "unsupported URL \"{url}\"; give only host and port (credentials go in username/password_file)"
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let Some((h, after)) = r.split_once(']') else {
            return Err(format!("invalid URL \"{url}\": unclosed '['"));
        };
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(format!("invalid URL \"{url}\"")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(format!("invalid URL \"{url}\": no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("invalid port \"{p}\" in URL \"{url}\"")),
        },
    };
    Ok(MqttUrl {
        tls,
        host: host.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_parse_with_default_ports() {
        assert_eq!(
            parse_mqtt_url("mqtt://broker.lan").ok(),
            Some(MqttUrl {
                tls: false,
                host: "broker.lan".into(),
                port: 1883
            })
        );
        assert_eq!(
            parse_mqtt_url("mqtts://[::1]:8884").ok(),
            Some(MqttUrl {
                tls: true,
                host: "::1".into(),
                port: 8884
            })
        );
        assert!(parse_mqtt_url("tcp://x:1883").is_err());
        assert!(parse_mqtt_url("mqtt://:1883").is_err());
        assert!(parse_mqtt_url("mqtt://h:99999").is_err());
    }
}
