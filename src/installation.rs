//! Which installation this is (README "Two gateways, one id"): the `host` of the gateway's
//! status payload. Two Raspberry Pis left with the host name `raspberrypi` have different
//! machine ids; two gateways on one machine have different state directories. Either tells them
//! apart when their gateway ids meet on one broker.

use std::path::Path;

/// Host names that every machine of a kind has out of the box: an id taken from one of them
/// meets the same id from the neighbour's gateway.
pub const GENERIC_HOST_NAMES: &[&str] = &[
    "raspberrypi",
    "raspberry",
    "localhost",
    "debian",
    "ubuntu",
    "dietpi",
    "armbian",
    "orangepi",
    "pi",
    "fieldbridge",
];

/// `HOSTNAME-XXXXXXXX`: the host name, and eight hex digits of a hash of the machine id and the
/// state directory (where the history and command ids live).
pub fn installation(state_dir: &Path) -> String {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let machine = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    installation_of(&host, machine.trim(), &dir.to_string_lossy())
}

fn installation_of(host: &str, machine_id: &str, state_dir: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(machine_id.as_bytes());
    ctx.update(b"\0");
    ctx.update(state_dir.as_bytes());
    let digest = ctx.finish();
    let tag: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let host = host.trim();
    if host.is_empty() {
        tag
    } else {
        format!("{host}-{tag}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_and_state_directories_tell_installations_apart() {
        let a = installation_of("raspberrypi", "0123", "/var/lib/fieldbridge");
        assert!(
            a.starts_with("raspberrypi-") && a.len() == "raspberrypi-".len() + 8,
            "{a}"
        );
        assert_eq!(
            a,
            installation_of("raspberrypi", "0123", "/var/lib/fieldbridge")
        );
        assert_ne!(
            a,
            installation_of("raspberrypi", "4567", "/var/lib/fieldbridge")
        );
        assert_ne!(
            a,
            installation_of("raspberrypi", "0123", "/srv/fieldbridge")
        );
    }
}
