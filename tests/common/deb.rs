//! The host-architecture .deb, packed with cargo-deb from the binary this test run built (the
//! `dev` profile), and the tools that takes.

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

/// Packs the binary this test run built as revision `rev` into `out`.
/// Runs of cargo-deb are serialised across threads and test processes (a file lock): each writes
/// its stripped copy of the binary to the same path under `target/`, so two at once clobber each
/// other.
pub fn pack_host_deb(out: &Path, rev: u32) -> PathBuf {
    assert!(Path::new(env!("CARGO_BIN_EXE_fieldbridge")).exists());
    let lock = std::fs::File::create(Path::new(env!("CARGO_TARGET_TMPDIR")).join("cargo-deb.lock"))
        .unwrap();
    lock.lock().unwrap();
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

pub fn host_arch() -> String {
    let o = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
