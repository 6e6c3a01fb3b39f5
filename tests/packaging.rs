#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The .deb packages: paths, conffile, unit, maintainer scripts, and install / upgrade /
//! purge in a throwaway Debian root.
//!
//! - A host-architecture package is packed here with cargo-deb from the binary this test run
//!   built (`scripts/setup.sh --tests` installs cargo-deb), so every clean checkout checks the
//!   package layout and the maintainer scripts, which are the same for every architecture.
//! - The Raspberry Pi packages made by `packaging/build-debs.sh` (a cross build) are checked
//!   too when they are in `target/debian`.
//! - As root with debootstrap, `packaging/test-install.sh` installs, upgrades and purges the
//!   host package in a debootstrap root.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

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

/// Whether `tool args` runs and succeeds (args like `--version`: nothing that does work).
fn has(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Packs the binary this test run built (the `dev` profile) as revision `rev` into `out`.
fn pack_host_deb(out: &Path, rev: u32) -> PathBuf {
    let file = out.join(format!("fieldbridge-{rev}.deb"));
    let o = Command::new(env!("CARGO"))
        .current_dir(root_dir())
        .args([
            "deb",
            "--no-build",
            "--fast",
            "--profile",
            "dev",
            "--deb-revision",
        ])
        .arg(rev.to_string())
        .arg("--output")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cargo deb: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    file
}

fn host_arch() -> String {
    let o = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
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

/// cargo-deb and dpkg, or why this run can't use them.
fn tools() -> Result<(), &'static str> {
    if !has("dpkg-deb", &["--version"]) {
        return Err("no dpkg-deb (not a Debian system)");
    }
    if !has(env!("CARGO"), &["deb", "--version"]) {
        return Err("no cargo-deb (scripts/setup.sh --tests installs it)");
    }
    Ok(())
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
    assert!(
        newest <= version(floor),
        "{deb} uses glibc {newest:?} but depends on libc6 >= {floor}"
    );
}

#[test]
fn the_debs_install_binary_unit_config_and_scripts() {
    if let Err(why) = tools() {
        eprintln!("{why}; skipping");
        return;
    }
    // The binary cargo-deb packs from the dev profile.
    assert!(Path::new(env!("CARGO_BIN_EXE_fieldbridge")).exists());
    let tmp = tempfile::tempdir().unwrap();
    let mut debs = vec![(pack_host_deb(tmp.path(), 1), host_arch())];
    debs.extend(pi_debs());
    for (deb, arch) in debs {
        let d = deb.display().to_string();
        let files = dpkg_deb(&["-c", &d]);
        for path in [
            "./usr/bin/fieldbridge",
            "./lib/systemd/system/fieldbridge.service",
            "./etc/fieldbridge/config.toml",
            "./usr/share/doc/fieldbridge/README.md",
        ] {
            assert!(
                files.lines().any(|l| l.ends_with(path)),
                "{d} lacks {path}:\n{files}"
            );
        }
        let info = dpkg_deb(&["-I", &d]);
        assert!(info.contains(&format!("Architecture: {arch}")), "{info}");
        glibc_floor_holds(&d, &info);
        let tmp = tempfile::tempdir().unwrap();
        let ctl = tmp.path().display().to_string();
        dpkg_deb(&["-e", &d, &ctl]);
        let conffiles = std::fs::read_to_string(tmp.path().join("conffiles")).unwrap();
        assert_eq!(conffiles.trim(), "/etc/fieldbridge/config.toml");
        let postinst = std::fs::read_to_string(tmp.path().join("postinst")).unwrap();
        assert!(postinst.contains("adduser --system"), "{postinst}");
        assert!(
            postinst.contains("deb-systemd-helper enable fieldbridge.service"),
            "{postinst}"
        );
        assert!(
            !postinst
                .lines()
                .any(|l| l.trim_start().starts_with("systemctl start")),
            "must not start before the config is edited"
        );
        assert!(tmp.path().join("postrm").exists() && tmp.path().join("prerm").exists());
    }
}

/// Install, upgrade (the edited config, the history and the user's enable/disable kept) and
/// purge, in a debootstrap root: needs root (chroot) and debootstrap, which `.ci/run` has.
#[test]
fn the_package_installs_upgrades_and_purges_in_a_throwaway_root() {
    if let Err(why) = tools() {
        eprintln!("{why}; skipping");
        return;
    }
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" || !has("debootstrap", &["--version"]) {
        eprintln!("needs root and debootstrap (packaging/test-install.sh); skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2) = (pack_host_deb(tmp.path(), 1), pack_host_deb(tmp.path(), 2));
    run_script("test-install.sh", &[&v1, &v2], "purge: ok");
}

/// The cross-built binaries under qemu-user (`packaging/qemu-smoke.sh`): `check` on the example
/// config and a bounded demo publishing to a mosquitto of its own. Only where
/// `packaging/build-debs.sh` has built them and qemu-user is installed.
#[test]
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
        eprintln!("no cross builds or no qemu-user (packaging/build-debs.sh); skipping");
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
