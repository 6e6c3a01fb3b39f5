#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! `share`: a third-party Modbus TCP master reads and writes through fieldbridge while
//! fieldbridge polls the same RTU bus at full speed.

mod common;

use std::time::{Duration, Instant};

use common::gateway::InProcess;
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber, free_port};
use tokio_modbus::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_master_shares_the_rtu_bus_without_collisions() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[11]);
    fake.set_holding(2, 0, &[22]);
    fake.unit(3, |_| {});
    let tmp = tempfile::tempdir().unwrap();
    let pty = fake.serve_rtu(tmp.path());
    let share = free_port();
    let cfg = format!(
        "[gateway]\nid = \"sh\"\nbase_topic = \"t\"\nlocation = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[history]\npath = \"{{dir}}/h.db\"\n[buses.rs485]\nkind = \"modbus-rtu\"\nport = \"{}\"\nbaud = 9600\ntimeout = \"300ms\"\nshare = \"127.0.0.1:{share}\"\n[devices.a]\nbus = \"rs485\"\nunit = 1\npoll = \"10ms\"\n[devices.a.points.v]\nregister = \"holding:0\"\n[devices.b]\nbus = \"rs485\"\nunit = 2\npoll = \"10ms\"\n[devices.b.points.v]\nregister = \"holding:0\"\n",
        broker.port,
        pty.path_str()
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    sub.wait_for(
        "t/lab/device/b/availability",
        |p| p.contains("online"),
        Duration::from_secs(10),
    )
    .expect("polling");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{share}").parse().unwrap();
    let mut refused = None;
    let mut ctx = common::poll_queried(
        Duration::from_secs(5),
        Duration::from_millis(50),
        async || {
            tcp::connect_slave(addr, Slave(3))
                .await
                .map_err(|e| refused = Some(e))
                .ok()
        },
    )
    .await
    .unwrap_or_else(|| panic!("share not listening: {refused:?}"));
    let polls_before = fake.log().iter().filter(|s| s.unit != 3).count();
    let mut worst = Duration::ZERO;
    for i in 0..25u16 {
        let t0 = Instant::now();
        ctx.write_single_register(10 + i, 1000 + i)
            .await
            .unwrap()
            .unwrap();
        let got = ctx
            .read_holding_registers(10 + i, 1)
            .await
            .unwrap()
            .unwrap();
        worst = worst.max(t0.elapsed() / 2);
        assert_eq!(
            got,
            vec![1000 + i],
            "the shared master got someone else's answer"
        );
    }
    // Exceptions come through too.
    fake.unit(3, |u| {
        u.missing.insert(500);
    });
    let r = ctx.read_holding_registers(500, 1).await.unwrap();
    assert_eq!(r, Err(ExceptionCode::IllegalDataAddress));
    let log = fake.log();
    let shared = log.iter().filter(|s| s.unit == 3).count();
    assert_eq!(shared, 51, "every shared request on the wire exactly once");
    let polls_during = log.iter().filter(|s| s.unit != 3).count() - polls_before;
    assert!(
        polls_during >= 10,
        "fieldbridge stopped polling while sharing ({polls_during})"
    );
    // At 9600 baud one transaction takes ~25 ms; a shared request waits for at most the one on
    // the wire. 150 ms leaves room for a loaded machine.
    assert!(
        worst < Duration::from_millis(150),
        "a shared request took {worst:?}"
    );
    gw.stop().await;
    drop(pty);
}
