//! The `regpoll` binary as users run it.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn regpoll(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .expect("regpoll runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const GOOD: &str = "devices:\n  - name: boiler\n    host: 127.0.0.1\n    port: 5020\n    registers:\n      - { name: t, kind: holding, address: 0, type: f32 }\n";

#[test]
fn check_prints_the_plan_of_a_good_file() {
    let (dir, _) = common::write_yaml(GOOD);
    let out = regpoll(&["check", "devices.yaml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("OK: 1 devices, 1 registers, 0 warnings"),
        "{stdout}"
    );
    assert!(stdout.contains("holding  0..1 (2): t"), "{stdout}");
}

#[test]
fn invalid_file_is_refused_with_its_location_and_changes_nothing() {
    let (dir, _) = common::write_yaml(GOOD);
    let out = regpoll(&["devices", "sync", "devices.yaml"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("added        boiler"),
        "{}",
        text(&out.stdout)
    );

    let bad = GOOD.replace("type: f32", "type: float")
        + "  - name: meter\n    host: 127.0.0.1\n    registers: []\n";
    std::fs::write(dir.path().join("devices.yaml"), bad).unwrap();
    let out = regpoll(&["devices", "sync", "devices.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("devices.yaml:6:") && stderr.contains("unknown type `float`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("devices.yaml:9:") && stderr.contains("empty `registers`"),
        "{stderr}"
    );

    let out = regpoll(&["devices", "list"], dir.path());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("boiler") && !stdout.contains("meter"),
        "the registry is unchanged: {stdout}"
    );
}

#[test]
fn demo_shows_live_values_and_exits_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .args(["demo", "--every", "500ms"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let all_up = loop {
        let line = lines.next().expect("demo output ended early").unwrap();
        seen.push(line.clone());
        if line.contains("devices up 4/4") {
            break line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no live values within 10 s: {seen:#?}"
        );
    };
    assert!(all_up.contains("polls/s"));
    let values = lines.next().unwrap().unwrap();
    assert!(values.contains("(good)"), "{values}");

    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "demo exits 0 on Ctrl-C, got {status}");
    let last = rest.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("stopped after") && last.contains("readings stored"),
        "{rest:#?}"
    );
    assert!(dir.path().join("regpoll.db").exists());
}

const PROBED: &str = "devices:\n  - name: boiler\n    host: 127.0.0.1\n    port: {A}\n    registers:\n      - { name: temp, kind: holding, address: 100, type: f32, unit: \"°C\", valid: { min: 0, max: 150 } }\n      - { name: pressure, kind: input, address: 0, type: u16, scale: 0.01, unit: bar }\n";

/// The simulator for `PROBED`, with `pressure` answering exception 2.
async fn probed_device() -> (common::SimFixture, regpoll::sim::Simulator, u16) {
    use regpoll::sim::{Bind, FaultAction, SimFault, Simulator};
    let fixture = common::simulate(PROBED, &["{A}"]).await;
    let fault = SimFault {
        device: "boiler".into(),
        register: Some("pressure".into()),
        action: FaultAction::Exception(2),
    };
    let sim = Simulator::start_with_faults(&fixture.devices, Bind::Ephemeral, vec![fault])
        .await
        .unwrap();
    let port = sim.addr_of(&fixture.devices[0]).unwrap().port();
    (fixture, sim, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_prints_a_value_and_an_exception_by_name() {
    let (fixture, _sim, port) = probed_device().await;
    let dir = tempfile::tempdir().unwrap();
    let before = chrono::Utc::now();
    let out = regpoll(
        &[
            "read",
            &format!("127.0.0.1:{port}"),
            "--holding",
            "100",
            "--type",
            "f32",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("holding[100]"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let reg = &fixture.devices[0].registers[0];
    let candidates: Vec<String> = [before, before + chrono::Duration::seconds(1)]
        .iter()
        .map(|&t| match regpoll::sim::expected_value("boiler", reg, t) {
            regpoll::reading::Value::Number(n) => format!("{n:.2}"),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        candidates.iter().any(|c| line.contains(c.as_str())) && line.contains("good"),
        "{line} vs {candidates:?}"
    );

    let out = regpoll(
        &["read", &format!("127.0.0.1:{port}"), "--input", "0"],
        dir.path(),
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("bad") && stdout.contains("exception 2 (illegal data address)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probe_reads_every_register_once() {
    let (fixture, _sim, port) = probed_device().await;
    let yaml = fixture.yaml.replace(
        &format!("port: {}", fixture.devices[0].port),
        &format!("port: {port}"),
    );
    let (dir, _) = common::write_yaml(&yaml);
    let out = regpoll(&["check", "devices.yaml", "--probe"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let temp = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("temp "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(temp.contains("°C") && temp.contains("good"), "{temp}");
    let pressure = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("pressure "))
        .unwrap();
    assert!(
        pressure.contains("bad") && pressure.ends_with("exception 2 (illegal data address)"),
        "{pressure}"
    );
}
