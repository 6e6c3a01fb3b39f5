#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! `fieldbridge read`, `write` and `scan` against real Modbus servers, as a user commissions a
//! device: the real binary, the bus settings from a config file.

mod common;

use std::process::Command;

use common::modbus::FakeModbus;

fn config_file(dir: &std::path::Path, bus: &str) -> std::path::PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(
        &p,
        format!("[history]\npath = \"{}/h.db\"\n{bus}", dir.display()),
    )
    .unwrap();
    p
}

fn run(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_prints_every_decoding_of_known_registers() {
    let fake = FakeModbus::new();
    // 21.5f32 in CDAB at 10..11; -2 as i32 ABCD at 12..13.
    fake.set_holding(1, 10, &[0x0000, 0x41AC, 0xFFFF, 0xFFFE]);
    let addr = fake.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &format!("[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\n"),
    );
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run(
            &cfg,
            &[
                "read",
                "--bus",
                "plc",
                "--unit",
                "1",
                "--register",
                "holding:10",
                "--count",
                "4",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("raw: 0000 41ac ffff fffe"), "{out}");
    assert!(
        out.contains("holding:13     0xfffe   65534     -2"),
        "{out}"
    );
    assert!(out.contains("f32 from holding:10:\n"), "{out}");
    assert!(out.contains("  CDAB: 21.5\n"), "{out}");
    assert!(out.contains("u64 from holding:10:\n"), "{out}");
    assert!(out.contains("string (ABCD): \"..A.....\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_read_round_trips_every_type_and_order() {
    let fake = FakeModbus::new();
    fake.unit(1, |_| {});
    let addr = fake.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &format!("[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\n"),
    );
    let cases = [
        ("u16", "4660"),
        ("i16", "-100"),
        ("u32", "305419896"),
        ("i32", "-70000"),
        ("u64", "1311768467463790320"),
        ("i64", "-5000000000"),
        ("f32", "21.5"),
        ("f64", "-1234.5"),
    ];
    for (ty, value) in cases {
        for order in ["ABCD", "CDAB", "BADC", "DCBA"] {
            let cfg = cfg.clone();
            let (code, out, err) = tokio::task::spawn_blocking(move || {
                run(
                    &cfg,
                    &[
                        "write",
                        "--bus",
                        "plc",
                        "--unit",
                        "1",
                        "--register",
                        "holding:20",
                        "--type",
                        ty,
                        "--order",
                        order,
                        "--value",
                        value,
                    ],
                )
            })
            .await
            .unwrap();
            assert_eq!(code, 0, "{ty} {order}: {err}");
            assert!(
                out.contains(&format!("read back: {value} (raw")),
                "{ty} {order}: {out}"
            );
        }
    }
    // A coil too.
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        run(
            &cfg,
            &[
                "write",
                "--bus",
                "plc",
                "--unit",
                "1",
                "--register",
                "coil:3",
                "--type",
                "bool",
                "--value",
                "1",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("read back: 1"), "{out}");
    assert_eq!(fake.unit(1, |u| u.coils.get(&3).copied()), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_exactly_the_units_on_an_rtu_bus() {
    let fake = FakeModbus::new();
    for u in [2u8, 5, 9] {
        fake.unit(u, |_| {});
    }
    fake.unit(5, |u| {
        u.missing.insert(0);
    });
    let tmp = tempfile::tempdir().unwrap();
    let pty = fake.serve_rtu(tmp.path());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &format!(
            "[buses.rs485]\nkind = \"modbus-rtu\"\nport = \"{}\"\ntimeout = \"100ms\"\n",
            pty.path_str()
        ),
    );
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run(&cfg, &["scan", "--bus", "rs485", "--units", "1-12"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "unit 2: answers with data",
            "unit 5: answers: illegal data address",
            "unit 9: answers with data",
            "3 unit(s) answered",
        ],
        "{out}"
    );
    drop(pty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_the_daemon_holds_is_refused_with_the_reason() {
    let fake = FakeModbus::new();
    let tmp = tempfile::tempdir().unwrap();
    let pty = fake.serve_rtu(tmp.path());
    let _held = tokio_serial::SerialStream::open(&tokio_serial::new(pty.path_str(), 9600)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        &format!(
            "[buses.rs485]\nkind = \"modbus-rtu\"\nport = \"{}\"\n",
            pty.path_str()
        ),
    );
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run(
            &cfg,
            &[
                "read",
                "--bus",
                "rs485",
                "--unit",
                "1",
                "--register",
                "holding:0",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("held by another process"), "{err}");
}

/// A wrong command line is a usage error (exit 2, README "Commands"); a bus or device that fails is
/// a runtime failure (exit 1).
#[test]
fn usage_errors_exit_2_and_bus_failures_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        // Nothing listens on port 1: reads there fail at runtime.
        "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"127.0.0.1:1\"\ntimeout = \"200ms\"\nretries = 0\n[buses.ard]\nkind = \"serial\"\nport = \"/dev/null\"\n",
    );
    fn read<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "read",
            "--bus",
            "plc",
            "--unit",
            "1",
            "--register",
            "holding:0",
        ];
        args.extend_from_slice(extra);
        args
    }
    let usage: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "read",
                "--bus",
                "plc",
                "--unit",
                "1",
                "--register",
                "holdng:0",
            ],
            "--register",
        ),
        (read(&["--count", "0"]), "--count 0"),
        (read(&["--count", "126"]), "--count 126"),
        (
            vec![
                "read",
                "--bus",
                "nope",
                "--unit",
                "1",
                "--register",
                "holding:0",
            ],
            "no bus \"nope\"",
        ),
        (
            vec![
                "read",
                "--bus",
                "ard",
                "--unit",
                "1",
                "--register",
                "holding:0",
            ],
            "serial line bus",
        ),
        (
            vec![
                "write",
                "--bus",
                "plc",
                "--unit",
                "1",
                "--register",
                "holding:0",
                "--type",
                "u17",
                "--value",
                "1",
            ],
            "--type",
        ),
        (
            vec![
                "write",
                "--bus",
                "plc",
                "--unit",
                "1",
                "--register",
                "holding:0",
                "--order",
                "XYZ",
                "--value",
                "1",
            ],
            "--order",
        ),
        (
            vec![
                "write",
                "--bus",
                "plc",
                "--unit",
                "1",
                "--register",
                "holding:0",
                "--value",
                "abc",
            ],
            "is not a u16",
        ),
        (
            vec![
                "write",
                "--bus",
                "plc",
                "--unit",
                "1",
                "--register",
                "input:0",
                "--value",
                "1",
            ],
            "read-only",
        ),
        (
            vec!["scan", "--bus", "plc", "--units", "5-x"],
            "invalid units",
        ),
        (vec!["scan", "--bus", "nope"], "no bus \"nope\""),
    ];
    for (args, says) in usage {
        let (code, _, err) = run(&cfg, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, _, err) = run(&cfg, &read(&[]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}
