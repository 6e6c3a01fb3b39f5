#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The .deb packages: paths, conffile, unit, maintainer scripts, and the installed config.
//!
//! - A host-architecture package is packed here with cargo-deb from the binary this test run
//!   built (`scripts/setup.sh --tests` installs cargo-deb), so every clean checkout checks the
//!   package layout and the maintainer scripts, which are the same for every architecture.
//! - The Raspberry Pi packages made by `packaging/build-debs.sh` (a cross build) are checked
//!   too when they are in `target/debian`.
//! - Installing, upgrading and purging it under a booted systemd: tests/booted.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::deb::{has, host_arch, pack_release_deb, root_dir, tools};

/// The Pi packages from `packaging/build-debs.sh`, when they were built, with their
/// architecture.
fn pi_debs() -> Vec<(PathBuf, String)> {
    match std::fs::read_dir(root_dir().join("target/debian")) {
        Ok(d) => d
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter_map(|p| {
                let n = p.display().to_string();
                let arch = ["arm64", "armhf"]
                    .into_iter()
                    .find(|a| n.ends_with(&format!("_{a}.deb")))?;
                Some((p, arch.to_string()))
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn dpkg_deb(args: &[&str]) -> String {
    let out = Command::new("dpkg-deb").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// "2.34" as (2, 34).
fn version(v: &str) -> (u32, u32) {
    let mut it = v.split('.').map(|n| n.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The glibc the package depends on is at least the newest symbol version its binary uses, and
/// the dependency names no architecture (a cross build's `libc6:arm64` would).
fn glibc_floor_holds(deb: &str, info: &str) {
    let depends = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("{deb}: no Depends:\n{info}"));
    assert!(!depends.contains(':'), "{deb}: {depends}");
    let floor = depends
        .split(", ")
        .find_map(|d| d.strip_prefix("libc6 (>= "))
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{deb}: no libc6 floor in {depends}"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    dpkg_deb(&["-x", deb, &dir]);
    let bin = tmp.path().join("usr/bin/fieldbridge");
    let out = Command::new("objdump")
        .arg("-T")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(out.status.success(), "objdump -T {}", bin.display());
    let newest = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.trim_matches(['(', ')']).strip_prefix("GLIBC_"))
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        .map(version)
        .max()
        .unwrap_or_else(|| panic!("{deb}: no glibc symbols"));
    // Relocations packed as DT_RELR (build.rs) load only on glibc 2.36 and newer.
    let headers = Command::new("objdump")
        .arg("-p")
        .arg(&bin)
        .output()
        .unwrap();
    let relr = String::from_utf8_lossy(&headers.stdout).contains("GLIBC_ABI_DT_RELR");
    // Stripped: no symbol table (a few MB on a Pi's SD card otherwise).
    let sections = Command::new("objdump")
        .arg("-h")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&sections.stdout).contains(".symtab"),
        "{deb}: the binary is not stripped"
    );
    let newest = if relr { newest.max((2, 36)) } else { newest };
    assert!(
        newest <= version(floor),
        "{deb} uses glibc {newest:?} but depends on libc6 >= {floor}"
    );
}

#[test]
fn the_debs_install_binary_unit_config_and_scripts() {
    if let Err(why) = tools() {
        common::cannot_run(why);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut debs = vec![(pack_release_deb(tmp.path(), 1), host_arch())];
    debs.extend(pi_debs());
    for (deb, arch) in debs {
        let d = deb.display().to_string();
        let files = dpkg_deb(&["-c", &d]);
        for path in [
            "./usr/bin/fieldbridge",
            // Debian now wants units under /usr (not /lib).
            "./usr/lib/systemd/system/fieldbridge.service",
            "./etc/fieldbridge/config.toml",
            "./usr/share/doc/fieldbridge/examples/config.example.toml",
            "./usr/share/doc/fieldbridge/README.md",
        ] {
            assert!(
                files.lines().any(|l| l.ends_with(path)),
                "{d} lacks {path}:\n{files}"
            );
        }
        assert!(!files.contains("./lib/"), "{d}:\n{files}");
        let info = dpkg_deb(&["-I", &d]);
        assert!(info.contains(&format!("Architecture: {arch}")), "{info}");
        // The broker usually runs on the Home Assistant host.
        assert!(info.contains("Suggests: mosquitto"), "{info}");
        assert!(!info.contains("Recommends:"), "{info}");
        glibc_floor_holds(&d, &info);
        let tmp = tempfile::tempdir().unwrap();
        let ctl = tmp.path().display().to_string();
        dpkg_deb(&["-e", &d, &ctl]);
        let conffiles = std::fs::read_to_string(tmp.path().join("conffiles")).unwrap();
        assert_eq!(conffiles.trim(), "/etc/fieldbridge/config.toml");
        let script = |name: &str| std::fs::read_to_string(tmp.path().join(name)).unwrap();
        let postinst = script("postinst");
        assert!(postinst.contains("adduser --system"), "{postinst}");
        // debhelper's snippets, inserted by cargo-deb, not hand-written ones.
        for snippet in [
            "deb-systemd-helper enable fieldbridge.service",
            "deb-systemd-invoke $_dh_action fieldbridge.service",
        ] {
            assert!(postinst.contains(snippet), "{postinst}");
        }
        assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
        let postrm = script("postrm");
        assert!(
            postrm.contains("deb-systemd-helper purge fieldbridge.service"),
            "{postrm}"
        );
        assert!(
            script("prerm").contains("deb-systemd-invoke stop fieldbridge.service"),
            "prerm"
        );
        // The unit packed is the unit in the repository.
        let dir = tempfile::tempdir().unwrap();
        dpkg_deb(&["-x", &d, &dir.path().display().to_string()]);
        let unit = dir
            .path()
            .join("usr/lib/systemd/system/fieldbridge.service");
        assert_eq!(
            std::fs::read_to_string(unit).unwrap(),
            std::fs::read_to_string(root_dir().join("systemd/fieldbridge.service")).unwrap()
        );
    }
}

/// The installed config is valid and has no buses and no devices: the service starts at
/// install and publishes the gateway's status and health only, never fake devices.
#[test]
fn the_installed_config_checks_and_has_no_devices() {
    let o = Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
        .args(["check", "-c"])
        .arg(root_dir().join("packaging/config.toml"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("(0 buses, 0 devices, 0 points)"), "{out}");
    assert!(out.contains("mqtt mqtt://127.0.0.1:1883"), "{out}");
    // --quiet (the unit's ExecReload) prints nothing for a good file.
    let quiet = Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
        .args(["check", "--quiet", "-c"])
        .arg(root_dir().join("packaging/config.toml"))
        .output()
        .unwrap();
    assert!(quiet.status.success() && quiet.stdout.is_empty() && quiet.stderr.is_empty());
}

/// The cross-built binaries under qemu-user (`packaging/qemu-smoke.sh`): `check` on the example
/// config and a bounded demo publishing to a mosquitto of its own. The cross builds take
/// `packaging/build-debs.sh` (many minutes), which the test command does not run: this test is
/// listed as ignored in every run, and run on its own after the cross builds.
#[test]
#[ignore = "needs the arm cross builds: packaging/build-debs.sh, then cargo test --test packaging -- --ignored"]
fn the_cross_built_binaries_run_under_qemu() {
    let built = ["aarch64-unknown-linux-gnu", "armv7-unknown-linux-gnueabihf"]
        .iter()
        .all(|t| {
            root_dir()
                .join("target")
                .join(t)
                .join("release/fieldbridge")
                .exists()
        });
    if !built || !has("qemu-aarch64", &["--version"]) || !has("qemu-arm", &["--version"]) {
        common::cannot_run(
            "the arm smoke test: no cross builds or no qemu-user (packaging/build-debs.sh)",
        );
        return;
    }
    run_script("qemu-smoke.sh", &[], "qemu smoke: ok");
}

/// Runs `packaging/<script>` with `args`; it must succeed and say `done`.
fn run_script(script: &str, args: &[&Path], done: &str) {
    let o = Command::new("bash")
        .arg(root_dir().join("packaging").join(script))
        .args(args)
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    println!("{out}");
    assert!(o.status.success(), "{script}: {out}");
    assert!(out.contains(done), "{script}: {out}");
}
