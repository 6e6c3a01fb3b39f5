#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The rule for tests that cannot run (README "Development"): under CI (`CI=true`) or with
//! `FIELDBRIDGE_REQUIRE_ALL=1` such a test fails with its reason; elsewhere it passes as a skip
//! that says so, and is listed for the run's summary. Checked on a test of this file run again
//! as a child process, as the harness runs any test.

mod common;

use std::process::{Command, Output};

const CHILD: &str = "FIELDBRIDGE_SKIP_RULE_CHILD";
const WHY: &str = "a forced skip: the tool is missing on purpose";

/// Does something only as the child of the tests below: a test whose tool is missing.
#[test]
fn a_test_whose_tool_is_missing() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    common::cannot_run(WHY);
}

/// Runs that test alone, with `env` set and no CI variables of the parent's.
fn child(env: &[(&str, &str)]) -> (Output, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["a_test_whose_tool_is_missing", "--exact", "--nocapture"])
        .env_remove("CI")
        .env_remove("FIELDBRIDGE_REQUIRE_ALL")
        .env(CHILD, "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn under_ci_a_test_that_cannot_run_fails_with_its_reason() {
    for env in [[("CI", "true")], [("FIELDBRIDGE_REQUIRE_ALL", "1")]] {
        let (out, text) = child(&env);
        assert!(!out.status.success(), "{env:?} passed:\n{text}");
        assert!(text.contains(WHY), "{env:?}: no reason in:\n{text}");
        assert!(text.contains("every test must run here"), "{text}");
    }
}

#[test]
fn elsewhere_it_is_skipped_where_nobody_can_miss_it() {
    let before = std::fs::read_to_string(common::skipped_list()).unwrap_or_default();
    let (out, text) = child(&[]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("**************** SKIPPED: {WHY} ****************")),
        "{text}"
    );
    let after = std::fs::read_to_string(common::skipped_list()).unwrap_or_default();
    // Listed under the child's run (its parent is this test binary, not cargo), which the
    // summary of this run leaves out.
    let child_run = format!(
        "{}\ta_test_whose_tool_is_missing: {WHY}",
        std::process::id()
    );
    assert!(
        after.len() > before.len() && after.contains(&child_run),
        "not listed for the summary:\n{after}"
    );
}
