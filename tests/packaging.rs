#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The .deb packages made by `packaging/build-debs.sh`: paths, conffile, unit, maintainer
//! scripts. They take a cross build, so this checks the packages that exist in `target/debian`
//! and says so when there are none (run the script first).

use std::path::PathBuf;
use std::process::Command;

fn debs() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    match std::fs::read_dir(dir) {
        Ok(d) => d
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let n = p.display().to_string();
                n.ends_with("_arm64.deb") || n.ends_with("_armhf.deb")
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

#[test]
fn the_debs_install_binary_unit_config_and_scripts() {
    let debs = debs();
    if debs.is_empty() || Command::new("dpkg-deb").arg("--version").output().is_err() {
        eprintln!("no .deb built (run packaging/build-debs.sh); skipping");
        return;
    }
    for deb in debs {
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
        let arch = if d.ends_with("_arm64.deb") {
            "arm64"
        } else {
            "armhf"
        };
        assert!(info.contains(&format!("Architecture: {arch}")), "{info}");
        let tmp = tempfile::tempdir().unwrap();
        let ctl = tmp.path().display().to_string();
        dpkg_deb(&["-e", &d, &ctl]);
        let conffiles = std::fs::read_to_string(tmp.path().join("conffiles")).unwrap();
        assert_eq!(conffiles.trim(), "/etc/fieldbridge/config.toml");
        let postinst = std::fs::read_to_string(tmp.path().join("postinst")).unwrap();
        assert!(postinst.contains("adduser --system"), "{postinst}");
        assert!(postinst.contains("systemctl enable fieldbridge.service"));
        assert!(
            !postinst
                .lines()
                .any(|l| l.trim_start().starts_with("systemctl start")),
            "must not start before the config is edited"
        );
        assert!(tmp.path().join("postrm").exists() && tmp.path().join("prerm").exists());
    }
}
