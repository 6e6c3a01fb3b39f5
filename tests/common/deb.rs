//! The host-architecture .deb users install, made with cargo-deb from a release build (as
//! packaging/build-debs.sh makes the Pi's), and the tools that takes.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `tool args` runs and succeeds (args like `--version`: nothing that does work).
pub fn has(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// cargo-deb and dpkg, or why this run can't use them.
pub fn tools() -> Result<(), &'static str> {
    if !has("dpkg-deb", &["--version"]) {
        return Err("no dpkg-deb (not a Debian system)");
    }
    if !has(env!("CARGO"), &["deb", "--version"]) {
        return Err("no cargo-deb (scripts/setup.sh --tests installs it)");
    }
    Ok(())
}

/// The package users get, as revision `rev` in `out`: cargo-deb builds the release binary
/// (stripped, with build.rs's link options) and packs it. The first call builds; later ones find
/// it built. Runs of cargo-deb are serialised across threads and test processes (a file lock):
/// each writes its copy of the binary to the same path under `target/`, and two cargo builds of
/// one target directory would wait on each other anyway.
pub fn pack_release_deb(out: &Path, rev: u32) -> PathBuf {
    let lock = std::fs::File::create(Path::new(env!("CARGO_TARGET_TMPDIR")).join("cargo-deb.lock"))
        .unwrap();
    lock.lock().unwrap();
    let file = out.join(format!("fieldbridge-{rev}.deb"));
    let o = Command::new(env!("CARGO"))
        .current_dir(root_dir())
        .args(["deb", "--deb-revision"])
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

pub fn host_arch() -> String {
    let o = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
