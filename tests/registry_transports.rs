//! Transports in the registry (migration 0011): what devices.yaml says comes
//! back from PostgreSQL and SQLite as it was written, `devices list` shows
//! it, and each database refuses the rows the file would refuse.

mod common;

use regpoll::config;
use regpoll::db::Db;
use regpoll::registry::{Parity, Transport};
use sqlx::Executor as _;

const FLEET: &str = r#"
defaults: { host: 10.0.0.5, every: 1s }
devices:
  - name: tcp-meter
    registers: [ { name: r, kind: holding, address: 0 } ]
  - name: gw-meter
    port: 4001
    transport: rtu-over-tcp
    unit_id: 7
    registers: [ { name: r, kind: holding, address: 0 } ]
  - name: bus-meter
    transport: rtu
    unit_id: 247
    serial: { path: /dev/ttyUSB0, baud: 19200, parity: even, data_bits: 8, stop_bits: 2 }
    registers: [ { name: r, kind: holding, address: 0 } ]
"#;

async fn transports_round_trip(db: Db) {
    let devices = config::parse(FLEET, "devices.yaml").unwrap();
    let first = db.sync_devices(&devices).await.unwrap();
    assert_eq!(first.added.len(), 3);
    let loaded = db.load_devices().await.unwrap();
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    for d in &devices {
        let back = loaded.devices.iter().find(|b| b.name == d.name).unwrap();
        assert_eq!(
            (&back.transport, back.unit_id, back.endpoint()),
            (&d.transport, d.unit_id, d.endpoint()),
            "{}",
            d.name
        );
    }
    let again = db.sync_devices(&devices).await.unwrap();
    assert_eq!((again.unchanged, again.changed.len()), (3, 0));

    // A new baud rate is a change, stored and loaded.
    let changed = config::parse(
        &FLEET.replace("baud: 19200, parity: even", "baud: 9600, parity: odd"),
        "devices.yaml",
    )
    .unwrap();
    let report = db.sync_devices(&changed).await.unwrap();
    assert_eq!(report.changed, ["bus-meter"]);
    let loaded = db.load_devices().await.unwrap();
    let bus = loaded
        .devices
        .iter()
        .find(|d| d.name == "bus-meter")
        .unwrap();
    let Transport::Rtu(line) = &bus.transport else {
        panic!("bus-meter is on a serial line: {:?}", bus.transport);
    };
    assert_eq!((line.baud, line.parity), (9600, Parity::Odd));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_each_devices_transport_and_serial_line() {
    transports_round_trip(Db::postgres(&common::fresh_postgres().await).await.unwrap()).await;
}

#[tokio::test]
async fn sqlite_keeps_each_devices_transport_and_serial_line() {
    let dir = tempfile::tempdir().unwrap();
    transports_round_trip(Db::sqlite(&dir.path().join("r.db")).await.unwrap()).await;
}

/// Rows written by hand that put two framings on one link: the device
/// later in name order is skipped and named, the first one polled.
async fn conflicting_links_skip_the_later_device(db: Db) {
    let rows = [
        "('bus-a', '', 502, 1, 1000, 1000, 'rtu', '/dev/ttyUSB0', 9600, 'none', 8, 1)",
        "('bus-b', '', 502, 2, 1000, 1000, 'rtu', '/dev/ttyUSB0', 19200, 'none', 8, 1)",
        "('gw-a', 'h', 502, 1, 1000, 1000, 'tcp', NULL, NULL, NULL, NULL, NULL)",
        "('gw-b', 'h', 502, 2, 1000, 1000, 'rtu-over-tcp', NULL, NULL, NULL, NULL, NULL)",
    ];
    for values in rows {
        let sql = format!("{COLUMNS} VALUES {values}");
        match &db {
            Db::Postgres(p) => p.execute(sqlx::AssertSqlSafe(sql)).await.map(|_| ()),
            Db::Sqlite(p) => p.execute(sqlx::AssertSqlSafe(sql)).await.map(|_| ()),
        }
        .unwrap();
    }
    let loaded = db.load_devices().await.unwrap();
    let names: Vec<&str> = loaded.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["bus-a", "gw-a"]);
    let reasons: Vec<(&str, &str)> = loaded
        .rejected
        .iter()
        .map(|r| (r.device.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "bus-b",
                "serial line /dev/ttyUSB0 is 19200 8N1 here but 9600 8N1 for device `bus-a`; devices on one serial path share the wire, so give them the same baud, parity, data_bits and stop_bits"
            ),
            (
                "gw-b",
                "h:502 is rtu-over-tcp here but tcp for device `gw-a`; the devices behind one gateway share its link and its framing, so give them the same transport"
            ),
        ]
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_that_put_two_framings_on_one_link_skip_the_later_device() {
    conflicting_links_skip_the_later_device(
        Db::postgres(&common::fresh_postgres().await).await.unwrap(),
    )
    .await;
}

#[tokio::test]
async fn sqlite_rows_that_put_two_framings_on_one_link_skip_the_later_device() {
    let dir = tempfile::tempdir().unwrap();
    conflicting_links_skip_the_later_device(Db::sqlite(&dir.path().join("r.db")).await.unwrap())
        .await;
}

const COLUMNS: &str = "INSERT INTO devices (name, host, port, unit_id, every_ms, timeout_ms, transport, serial_path, baud, parity, data_bits, stop_bits)";

/// Rows for the refusal checks: (values, what the refusal must mention on
/// PostgreSQL, and on SQLite); `None`: accepted.
fn rows() -> Vec<(&'static str, Option<(&'static str, &'static str)>)> {
    vec![
        (
            "('a', 'h', 502, 1, 1000, 1000, 'tcp', NULL, NULL, NULL, NULL, NULL)",
            None,
        ),
        (
            "('b', '', 502, 1, 1000, 1000, 'rtu', '/dev/ttyS0', 9600, 'none', 8, 1)",
            None,
        ),
        (
            "('c', 'h', 502, 0, 1000, 1000, 'tcp', NULL, NULL, NULL, NULL, NULL)",
            None,
        ),
        (
            "('d', 'h', 502, 1, 1000, 1000, 'rs485', NULL, NULL, NULL, NULL, NULL)",
            Some(("devices_transport_known", "CHECK constraint failed")),
        ),
        (
            "('e', 'h', 502, 1, 1000, 1000, 'rtu', NULL, NULL, NULL, NULL, NULL)",
            Some((
                "devices_serial_only_on_rtu",
                "required for transport rtu and only for it",
            )),
        ),
        (
            "('f', 'h', 502, 1, 1000, 1000, 'tcp', '/dev/ttyS0', NULL, NULL, NULL, NULL)",
            Some((
                "devices_serial_only_on_rtu",
                "required for transport rtu and only for it",
            )),
        ),
        (
            "('g', 'h', 502, 0, 1000, 1000, 'rtu-over-tcp', NULL, NULL, NULL, NULL, NULL)",
            Some(("devices_rtu_unit_id", "unit_id must be 1..247")),
        ),
        (
            "('h', '', 502, 1, 1000, 1000, 'rtu-over-tcp', NULL, NULL, NULL, NULL, NULL)",
            Some(("devices_host_not_empty", "host is empty")),
        ),
        (
            "('i', '', 502, 1, 1000, 1000, 'rtu', '/dev/ttyS0', 9600, 'mark', 8, 1)",
            Some(("devices_parity_known", "CHECK constraint failed")),
        ),
        (
            "('j', '', 502, 1, 1000, 1000, 'rtu', '/dev/ttyS0', 9600, 'none', 9, 1)",
            Some(("devices_data_bits_known", "CHECK constraint failed")),
        ),
        (
            "('k', '', 502, 1, 1000, 1000, 'rtu', '/dev/ttyS0', 50, 'none', 8, 1)",
            Some(("devices_baud_in_range", "CHECK constraint failed")),
        ),
        (
            "('l', '', 502, 248, 1000, 1000, 'rtu', '/dev/ttyS0', 9600, 'none', 8, 1)",
            Some(("devices_rtu_unit_id", "unit_id must be 1..247")),
        ),
    ]
}

/// Whether `sql` was refused with a message containing `refused`, or
/// accepted when that is `None`.
fn judge<T: std::fmt::Debug>(sql: &str, refused: Option<&str>, done: Result<T, sqlx::Error>) {
    match (refused, done) {
        (None, Ok(_)) => {}
        (Some(part), Err(e)) => assert!(e.to_string().contains(part), "{sql}: {e}"),
        (refused, done) => panic!("{sql}: expected refused={refused:?}, got {done:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_transport_rows_regpoll_cannot_use() {
    let db = Db::postgres(&common::fresh_postgres().await).await.unwrap();
    let Db::Postgres(pool) = &db else {
        unreachable!()
    };
    for (values, refused) in rows() {
        let sql = format!("{COLUMNS} VALUES {values}");
        let done = pool.execute(sqlx::AssertSqlSafe(sql.clone())).await;
        judge(&sql, refused.map(|(pg, _)| pg), done);
    }
    let loaded = db.load_devices().await.unwrap();
    let b = loaded.devices.iter().find(|d| d.name == "b").unwrap();
    assert_eq!(b.endpoint(), "/dev/ttyS0");
    db.close().await;
}

#[tokio::test]
async fn sqlite_refuses_transport_rows_regpoll_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite(&dir.path().join("r.db")).await.unwrap();
    let Db::Sqlite(pool) = &db else {
        unreachable!()
    };
    for (values, refused) in rows() {
        let sql = format!("{COLUMNS} VALUES {values}");
        let done = pool.execute(sqlx::AssertSqlSafe(sql.clone())).await;
        judge(&sql, refused.map(|(_, lite)| lite), done);
    }
    // Switching a serial device to TCP without its host is refused too.
    let e = pool
        .execute("UPDATE devices SET transport = 'tcp', serial_path = NULL, baud = NULL, parity = NULL, data_bits = NULL, stop_bits = NULL WHERE name = 'b'")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("host is empty"), "{e}");
    db.close().await;
}

#[test]
fn devices_list_shows_each_transport_and_serial_line() {
    let (dir, _) = common::write_yaml(FLEET);
    let regpoll = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_regpoll"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = regpoll(&["devices", "sync", "devices.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = regpoll(&["devices", "list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed: {stdout}"))
            .split_whitespace()
            .take(4)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("tcp-meter"), "tcp-meter 10.0.0.5:502 tcp 1");
    assert_eq!(line("gw-meter"), "gw-meter 10.0.0.5:4001 rtu-over-tcp 7");
    assert_eq!(line("bus-meter"), "bus-meter /dev/ttyUSB0 rtu 19200");
    assert!(stdout.contains("rtu 19200 8E2"), "{stdout}");
}
