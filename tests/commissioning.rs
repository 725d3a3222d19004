//! Commissioning, as a field engineer meets it: `regpoll scan` against a
//! simulated gateway and the skeleton it prints, and frame logging
//! (`log_frames` in devices.yaml, `--log-frames` on `read`), stored in
//! PostgreSQL and SQLite like every other device setting.

mod common;

use std::process::Command;

use common::{regpoll, text};

use regpoll::db::Db;
use regpoll::registry::LogFrames;
use regpoll::sim::{Bind, FaultAction, SimFault, Simulator};
use sqlx::Executor as _;

const LOGGED: &str = "\
devices:
  - name: quiet
    host: 127.0.0.1
    port: {A}
    registers: [ { name: r, kind: holding, address: 0 } ]
  - name: chatty
    host: 127.0.0.1
    port: {A}
    unit_id: 2
    log_frames: header
    registers: [ { name: r, kind: holding, address: 10 } ]
";

/// Syncs `LOGGED`, loads it back, and has the database refuse a word
/// regpoll does not know; a change of the setting alone is a change.
async fn log_frames_round_trip(db: Db) {
    let devices = regpoll::config::parse(&LOGGED.replace("{A}", "5020"), "d.yaml").unwrap();
    db.sync_devices(&devices).await.unwrap();
    let loaded = db.load_devices().await.unwrap();
    let by_name = |n: &str| loaded.devices.iter().find(|d| d.name == n).unwrap();
    assert_eq!(by_name("quiet").limits.log_frames, LogFrames::Off);
    assert_eq!(by_name("chatty").limits.log_frames, LogFrames::Header);

    let mut louder = devices.clone();
    louder[1].limits.log_frames = LogFrames::Payload;
    let report = db.sync_devices(&louder).await.unwrap();
    assert_eq!(report.changed, ["chatty"]);
    let loaded = db.load_devices().await.unwrap();
    assert_eq!(loaded.devices[0].limits.log_frames, LogFrames::Payload);

    const LOUD: &str = "UPDATE devices SET log_frames = 'loud'";
    let refused = match &db {
        Db::Postgres(pool) => pool.execute(LOUD).await.map(|_| ()),
        Db::Sqlite(pool) => pool.execute(LOUD).await.map(|_| ()),
    };
    let e = refused.expect_err("an unknown word is refused").to_string();
    assert!(
        e.contains("devices_log_frames_known") || e.contains("CHECK constraint failed"),
        "{e}"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_log_frames_and_refuses_other_words() {
    let db = Db::postgres(&common::fresh_postgres().await).await.unwrap();
    log_frames_round_trip(db).await;
}

#[tokio::test]
async fn sqlite_stores_log_frames_and_refuses_other_words() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite(&dir.path().join("r.db")).await.unwrap();
    log_frames_round_trip(db).await;
}

/// Units 1, 2 and 5 behind one simulated gateway; unit 2 takes at most 40
/// registers a read and refuses its register at 100 with exception 2.
const GATEWAY: &str = "\
defaults: { host: 127.0.0.1, port: {A} }
devices:
  - name: meter
    unit_id: 1
    registers: [ { name: v, kind: holding, address: 0 } ]
  - name: boiler
    unit_id: 2
    registers:
      - { name: t, kind: holding, address: 10, type: u32 }
      - { name: status, kind: holding, address: 100 }
  - name: pump
    unit_id: 5
    registers: [ { name: on, kind: coil, address: 3 } ]
";

async fn gateway() -> (common::SimFixture, Simulator, String) {
    let fixture = common::simulate(GATEWAY, &["{A}"]).await;
    let fault = |register: Option<&str>, action| SimFault {
        device: "boiler".into(),
        register: register.map(str::to_string),
        action,
    };
    let faults = vec![
        fault(Some("status"), FaultAction::Exception(2)),
        fault(None, FaultAction::MaxRegisters(40)),
    ];
    let sim = Simulator::start_with_faults(&fixture.devices, Bind::Ephemeral, faults)
        .await
        .unwrap();
    let port = sim.addr_of(&fixture.devices[0]).unwrap().port();
    (fixture, sim, format!("127.0.0.1:{port}"))
}

/// `regpoll scan` finds the units that answer, says what it finds as it
/// goes, and prints a skeleton that `regpoll check` takes as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_a_gateways_units_and_prints_a_skeleton_check_accepts() {
    let (_fixture, _sim, endpoint) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let out = regpoll(
        &["scan", &endpoint, "--units", "1-6", "--addresses", "0-499"],
        dir.path(),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    for line in [
        "unit 1: answers\n",
        "unit 2: answers\n",
        "units 3-4: nobody there (exception 11 (gateway target device failed to respond))\n",
        "unit 2: largest read 40 registers (41 answers exception 3 (illegal data value))\n",
        "unit 2: holding 0-99 readable\n",
        "unit 2: holding 100 not readable: exception 2 (illegal data address)\n",
        "unit 2: holding 101-499 readable\n",
        "3 of 6 units answer;",
    ] {
        assert!(stderr.contains(line), "{line:?} in\n{stderr}");
    }
    // Unit 5 is a pump with coils only, but the simulator answers its
    // holding registers too (as zeros): it is in the skeleton.
    for name in ["127.0.0.1-unit-1", "127.0.0.1-unit-2", "127.0.0.1-unit-5"] {
        assert!(stdout.contains(&format!("  - name: {name}\n")), "{stdout}");
    }
    assert!(
        !stdout.contains("unit-3") && !stdout.contains("unit-6"),
        "{stdout}"
    );
    std::fs::write(dir.path().join("found.yaml"), &stdout).unwrap();
    let check = regpoll(&["check", "found.yaml"], dir.path());
    let checked = text(&check.stdout);
    assert!(check.status.success(), "{}\n{stdout}", text(&check.stderr));
    assert!(
        checked.contains("found.yaml: OK: 3 devices, 32 registers, 0 warnings"),
        "{checked}"
    );
    // Unit 2's reads stay within the 40 it takes.
    assert!(
        checked.contains("127.0.0.1-unit-2 (tcp 127.0.0.1:"),
        "{checked}"
    );
    let probe = regpoll(&["check", "found.yaml", "--probe"], dir.path());
    assert!(probe.status.success(), "{}", text(&probe.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_says_so_when_no_unit_answers_and_refuses_hostile_arguments() {
    let (_fixture, _sim, endpoint) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let out = regpoll(&["scan", &endpoint, "--units", "3-4,9"], dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("error: no unit of 3-4,9 answered at {endpoint}")),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty(), "no skeleton for nothing");

    for (args, says) in [
        (&["--units", "0"][..], "unit 0 is the broadcast address"),
        (&["--units", "248"], "unit 248 is outside 1-247"),
        (
            &["--units", "10-1"],
            "range 10-1 is reversed; write the lower id first: 1-10",
        ),
        (
            &["--kind", "holdings"],
            "unknown kind `holdings`; valid kinds: holding, input, coil, discrete",
        ),
        (&["--timeout", "0ms"], "must be at least 1ms"),
        (&["--timeout", "0"], "has no unit"),
        (&["--addresses", "9-1"], "reversed"),
        (&["--resolution", "0"], "--resolution"),
        (
            &["--log-frames", "all"],
            "unknown log_frames `all`; valid: off, header, payload",
        ),
    ] {
        let mut all = vec!["scan", endpoint.as_str()];
        all.extend_from_slice(args);
        let out = regpoll(&all, dir.path());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // The link flags are read's: contradictions are refused before anything is asked.
    for (args, says) in [
        (
            vec!["scan", endpoint.as_str(), "--serial", "/dev/ttyUSB0"],
            "give either HOST[:PORT]",
        ),
        (
            vec!["scan", endpoint.as_str(), "--baud", "19200"],
            "--baud sets up a serial line; it needs --serial PATH",
        ),
        (
            vec!["scan", endpoint.as_str(), "--transport", "rs485"],
            "unknown transport `rs485`",
        ),
        (vec!["scan"], "say where to read"),
    ] {
        let out = regpoll(&args, dir.path());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// The words a `--log-frames payload` line shows, as numbers.
fn logged_words(line: &str) -> Vec<u16> {
    let values = line
        .split("values=")
        .nth(1)
        .unwrap_or_else(|| panic!("no values in {line}"));
    values
        .split_whitespace()
        .map(|w| u16::from_str_radix(w, 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_log_frames_payload_shows_the_request_and_the_words_it_read() {
    let (_fixture, _sim, endpoint) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "read",
        &endpoint,
        "--unit",
        "2",
        "--holding",
        "10",
        "--count",
        "2",
    ];
    let mut with_payload = args.to_vec();
    with_payload.extend(["--log-frames", "payload"]);
    let out = regpoll(&with_payload, dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let frame = stderr
        .lines()
        .find(|l| l.contains("regpoll::frames"))
        .unwrap_or_else(|| panic!("no frame logged:\n{stderr}"));
    for part in [
        "INFO",
        &format!("endpoint={endpoint}"),
        "unit=2",
        "function=0x03",
        "table=holding",
        "start=10",
        "count=2",
        "attempt=1",
        "elapsed_ms=",
        "answer=2 registers",
    ] {
        assert!(frame.contains(part), "{part} in {frame}");
    }
    // The words logged are the ones the table shows.
    let table: Vec<u16> = ["holding[10]", "holding[11]"]
        .iter()
        .map(|r| {
            let row = stdout.lines().find(|l| l.starts_with(r)).unwrap();
            row.split_whitespace().nth(2).unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(logged_words(frame), table, "{frame}\n{stdout}");

    // An exception is logged by name; without the flag nothing is logged.
    let out = regpoll(
        &[
            "read",
            &endpoint,
            "--unit",
            "2",
            "--holding",
            "100",
            "--log-frames",
            "header",
        ],
        dir.path(),
    );
    let stderr = text(&out.stderr);
    let frame = stderr
        .lines()
        .find(|l| l.contains("regpoll::frames"))
        .unwrap();
    assert!(
        frame.contains("answer=exception 2 (illegal data address)") && !frame.contains("values="),
        "{frame}"
    );
    let out = regpoll(&args, dir.path());
    assert!(
        !text(&out.stderr).contains("regpoll::frames"),
        "{}",
        text(&out.stderr)
    );
}

/// A device with `log_frames: header` logs its requests in `run`; its
/// neighbour on the same gateway, left at the default, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_the_frames_of_a_device_with_log_frames_header_only() {
    let fixture = common::simulate(
        &LOGGED.replace("registers: [", "every: 200ms\n    registers: ["),
        &["{A}"],
    )
    .await;
    let (dir, devices) = common::write_yaml(&fixture.yaml);
    let service = common::Service::start(
        Command::new(env!("CARGO_BIN_EXE_regpoll"))
            .args(["run", "--http", "off", "--devices"])
            .arg(&devices)
            .arg("--sqlite-path")
            .arg(dir.path().join("run.db"))
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("REGPOLL_DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("REGPOLL_LOG"),
    );
    let mut seen = Vec::new();
    let mut frames = Vec::new();
    while frames.len() < 3 {
        let line = service
            .lines
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("fewer than 3 frames logged in 10 s: {seen:#?}"));
        if line.contains("regpoll::frames") {
            frames.push(line.clone());
        }
        seen.push(line);
    }
    service.stop();
    for f in &frames {
        assert!(
            f.contains("unit=2") && f.contains("start=10") && f.contains("answer=1 registers"),
            "{f}"
        );
        assert!(!f.contains("values="), "header shows no values: {f}");
    }
}
