#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The run's last target (cargo runs test targets by name): every test skipped in this run, with
//! a count, printed on the terminal past the harness's capture, so a skip does not scroll away
//! unseen. Under CI there are none: a test that cannot run fails there (README "Development").

mod common;

#[test]
fn skipped_tests_of_this_run() {
    let list = common::skipped_list();
    let skipped = std::fs::read_to_string(&list).unwrap_or_default();
    // What other runs listed (a single target run on its own, a test's own child) is stale.
    std::fs::remove_file(&list).ok();
    let ours = format!("{}\t", common::run_id());
    let lines: Vec<&str> = skipped
        .lines()
        .filter_map(|l| l.strip_prefix(ours.as_str()))
        .collect();
    let summary = if lines.is_empty() {
        "fieldbridge tests: nothing skipped\n".to_string()
    } else {
        format!(
            "\n**************** fieldbridge tests: {} SKIPPED ****************\n{}\n",
            lines.len(),
            lines.join("\n")
        )
    };
    if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        use std::io::Write;
        tty.write_all(summary.as_bytes()).ok();
    }
    eprintln!("{summary}");
    assert!(
        lines.is_empty() || !common::all_required(),
        "skipped where every test must run:\n{summary}"
    );
}
