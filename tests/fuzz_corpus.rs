#![cfg(feature = "fuzzing")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The fuzz targets in CI: every input of the committed corpora (`fuzz/corpus/<target>`, what
//! `cargo fuzz run` found interesting) and every crash reproducer (`fuzz/regressions/<target>`)
//! goes through the same harness (`fieldbridge::fuzz`), then short property tests throw random
//! and mutated inputs at each. Long runs are `cargo fuzz run <target>` (RELIABILITY.md).

use std::path::{Path, PathBuf};

use proptest::prelude::*;

type Harness = fn(&[u8]);

const TARGETS: &[(&str, Harness)] = &[
    ("config", fieldbridge::fuzz::config),
    ("command", fieldbridge::fuzz::command),
    ("serial_line", fieldbridge::fuzz::serial_line),
    ("modbus_registers", fieldbridge::fuzz::modbus_registers),
    ("modbus_rtu_answer", fieldbridge::fuzz::modbus_rtu_answer),
];

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_corpus_input_and_crash_reproducer_passes_its_harness() {
    let mut total = 0;
    for (target, harness) in TARGETS {
        let corpus = inputs("corpus", target);
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{target} is empty; the seeds are committed"
        );
        for path in corpus.iter().chain(inputs("regressions", target).iter()) {
            let data = std::fs::read(path).unwrap();
            let r = std::panic::catch_unwind(|| harness(&data));
            assert!(r.is_ok(), "{target}: {} fails", path.display());
            total += 1;
        }
    }
    println!("{total} inputs replayed");
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    inputs("corpus", target)
        .iter()
        .take(64)
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// A seed with a few bytes overwritten, inserted or cut: near-valid input, where parsers break.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(target);
    let n = seeds.len().max(1);
    (
        0..n,
        proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    )
        .prop_map(move |(i, edits)| {
            let mut s = seeds.get(i).cloned().unwrap_or_default();
            for (at, byte, op) in edits {
                let at = if s.is_empty() { 0 } else { at % (s.len() + 1) };
                match op {
                    0 if at < s.len() => s[at] = byte,
                    1 => s.insert(at, byte),
                    _ if at < s.len() => {
                        s.truncate(at);
                    }
                    _ => s.push(byte),
                }
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn config_parsing_survives_any_text(data in mutated("config")) {
        fieldbridge::fuzz::config(&data);
    }

    #[test]
    fn command_payloads_are_validated_or_refused_never_panic(data in mutated("command")) {
        fieldbridge::fuzz::command(&data);
    }

    #[test]
    fn random_command_bytes_are_refused_cleanly(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        fieldbridge::fuzz::command(&data);
    }

    #[test]
    fn serial_lines_never_stop_the_reader(data in mutated("serial_line")) {
        fieldbridge::fuzz::serial_line(&data);
    }

    #[test]
    fn random_serial_noise_never_stops_the_reader(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fieldbridge::fuzz::serial_line(&data);
    }

    #[test]
    fn register_decoding_survives_any_words(data in proptest::collection::vec(any::<u8>(), 0..40)) {
        fieldbridge::fuzz::modbus_registers(&data);
    }

    #[test]
    fn rtu_answers_off_the_wire_are_checked(data in mutated("modbus_rtu_answer")) {
        fieldbridge::fuzz::modbus_rtu_answer(&data);
    }
}
