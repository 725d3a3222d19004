//! Polling over every transport through the simulator: RTU frames over TCP
//! to a gateway with several units, RTU on a pseudo-terminal with several
//! units on one bus, and Modbus TCP beside them, each reading the
//! simulator's values; faults on an RTU link fail their request only.

use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod common;

use regpoll::config;
use regpoll::modbus::endpoint::Endpoint;
use regpoll::poller::DevicePoller;
use regpoll::reading::{PollReport, Quality};
use regpoll::registry::{Device, Transport};
use regpoll::sim::fault::FaultAction;
use regpoll::sim::{Bind, SimFault, Simulator, expected_value};

const DEVICES: &str = r#"
defaults: { host: 127.0.0.1, every: 1s, timeout: 500ms, retries: 0 }
devices:
  - name: tcp-meter
    port: 1
    registers:
      - { name: energy, kind: input, address: 0, type: f32 }
  - name: gw-meter-1
    port: 2
    transport: rtu-over-tcp
    unit_id: 1
    registers:
      - { name: energy, kind: input, address: 0, type: u32 }
      - { name: label, kind: holding, address: 10, type: string, length: 4 }
      - { name: relay, kind: coil, address: 3 }
  - name: gw-meter-2
    port: 2
    transport: rtu-over-tcp
    unit_id: 2
    registers:
      - { name: temp, kind: holding, address: 5, type: i16, scale: 0.1 }
  - name: bus-meter-1
    transport: rtu
    unit_id: 11
    serial: { path: /dev/ttyRS485-0, baud: 19200, parity: even }
    registers:
      - { name: volts, kind: input, address: 0, type: f32, order: CDAB }
      - { name: alarm, kind: discrete, address: 2 }
  - name: bus-meter-2
    transport: rtu
    unit_id: 12
    serial: { path: /dev/ttyRS485-0, baud: 19200, parity: even }
    registers:
      - { name: hours, kind: holding, address: 0, type: u64 }
"#;

/// Starts the simulator and points each device at where it is served.
async fn start(faults: Vec<SimFault>) -> (Simulator, Vec<Arc<Device>>) {
    let devices = config::parse(DEVICES, "transports.yaml").unwrap();
    let sim = Simulator::start_with_faults(&devices, Bind::Ephemeral, faults)
        .await
        .unwrap();
    let reached = devices.iter().map(|d| Arc::new(sim.reach(d))).collect();
    (sim, reached)
}

/// Polls every device once, in parallel, one endpoint per link as the
/// service keeps them (the units of a gateway or bus share theirs).
async fn poll_all(devices: &[Arc<Device>]) -> Vec<PollReport> {
    let mut endpoints: HashMap<String, Arc<Endpoint>> = HashMap::new();
    let polls: Vec<_> = devices
        .iter()
        .map(|d| {
            let endpoint = Arc::clone(
                endpoints
                    .entry(d.endpoint())
                    .or_insert_with(|| Arc::new(Endpoint::for_device(d))),
            );
            let mut poller = DevicePoller::new(Arc::clone(d), endpoint);
            async move { poller.poll().await }
        })
        .collect();
    futures::future::join_all(polls).await
}

fn assert_all_good(report: &PollReport) {
    for r in &report.readings {
        let reg = report.register(r);
        let name = format!("{}.{}", report.device.name, reg.name);
        assert_eq!(r.quality, Quality::Good, "{name}: {:?}", r.detail);
        let ok = [r.ts, r.ts + chrono::Duration::seconds(1)]
            .iter()
            .any(|&t| expected_value(&report.device.name, reg, t) == r.value);
        assert!(ok, "{name} = {:?} is not the simulator's value", r.value);
    }
}

#[tokio::test]
async fn every_transport_reads_the_simulators_values_with_units_sharing_a_link() {
    let (_sim, devices) = start(Vec::new()).await;
    let line = devices[3].transport.serial().unwrap();
    assert!(line.path.starts_with("/dev/pts/"), "{line}");
    assert_eq!(devices[3].endpoint(), devices[4].endpoint());
    for _ in 0..2 {
        let reports = poll_all(&devices).await;
        for report in &reports {
            assert_all_good(report);
        }
        assert_eq!(reports.iter().map(|r| r.readings.len()).sum::<usize>(), 8);
    }
}

#[tokio::test]
async fn the_simulator_reports_where_a_serial_device_is_served() {
    let devices = config::parse(DEVICES, "transports.yaml").unwrap();
    let sim = Simulator::start(&devices, Bind::Ephemeral).await.unwrap();
    let pty = sim.pty_of(&devices[3]).expect("a pty for the serial bus");
    assert_eq!(Some(pty), sim.pty_of(&devices[4]), "one bus, one pty");
    assert!(pty.exists(), "{}", pty.display());
    assert!(sim.pty_of(&devices[0]).is_none() && sim.addr_of(&devices[3]).is_none());
    let Transport::Rtu(line) = &sim.reach(&devices[4]).transport else {
        panic!("still a serial device");
    };
    assert_eq!(
        (line.path.as_str(), line.baud),
        (pty.to_str().unwrap(), 19_200)
    );
}

/// A broken answer on an RTU link fails the request it answered; the link
/// and the other units on it are unaffected.
#[tokio::test]
async fn a_garbled_or_missing_rtu_answer_fails_only_its_own_request() {
    for (device, action, want) in [
        (
            "gw-meter-2",
            FaultAction::Garbage,
            "protocol: byte count 255 in the answer, expected 2",
        ),
        (
            "bus-meter-2",
            FaultAction::Garbage,
            "protocol: byte count 255 in the answer, expected 8",
        ),
        ("gw-meter-2", FaultAction::NoReply, "timeout after 500 ms"),
        ("bus-meter-2", FaultAction::NoReply, "timeout after 500 ms"),
        (
            "bus-meter-2",
            FaultAction::Exception(2),
            "exception 2 (illegal data address)",
        ),
    ] {
        let fault = SimFault {
            device: device.into(),
            register: None,
            action: action.clone(),
        };
        let (_sim, devices) = start(vec![fault]).await;
        for _ in 0..2 {
            let reports = poll_all(&devices).await;
            for report in &reports {
                if report.device.name == device {
                    for r in &report.readings {
                        assert_eq!(r.quality, Quality::Bad, "{action:?}");
                        assert_eq!(r.detail.as_deref(), Some(want), "{action:?}");
                    }
                } else {
                    assert_all_good(report);
                }
            }
        }
    }
}

/// A frame a broken gateway sends after an answer, nobody having asked,
/// lands between two polls: it is discarded before the next request, never
/// taken for its answer. (RTU has no transaction id: a copy that arrived
/// after the next request went out, from the same unit with the same
/// function and length, could not be told apart; see the README.)
#[tokio::test]
async fn a_frame_between_polls_is_never_taken_for_the_next_answer() {
    let fault = SimFault {
        device: "gw-meter-2".into(),
        register: None,
        action: FaultAction::StrayFrame,
    };
    let (_sim, devices) = start(vec![fault]).await;
    let gateway = &devices[2..3];
    for _ in 0..3 {
        for report in poll_all(gateway).await {
            assert_all_good(&report);
        }
        // The simulator sends the stray frame 5 ms after its answer: let it
        // land between this poll and the next, where it is noise.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The service end to end: RTU devices synced into the registry, loaded
/// back, polled on schedule through their shared links, every reading of
/// every device good in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_polls_rtu_devices_into_history() {
    let (_sim, devices) = start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite_path = dir.path().join("regpoll.db");
    let settings = regpoll::app::Settings {
        sqlite_path: sqlite_path.clone(),
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..regpoll::app::Settings::default()
    };
    let devices: Vec<Device> = devices.iter().map(|d| Device::clone(d)).collect();
    let running = regpoll::app::start(&settings, regpoll::app::DeviceSource::Devices(devices))
        .await
        .unwrap();
    common::wait_for_polls(&running, 2).await;
    // The API says how each device is reached.
    let api = common::http_get(running.http_addr().unwrap(), "/api/devices").await;
    let listed = api.json()["devices"].as_array().unwrap().clone();
    let link = |name: &str| {
        let d = listed.iter().find(|d| d["name"] == name).unwrap();
        (d["transport"].clone(), d["serial"]["settings"].clone())
    };
    assert_eq!(link("tcp-meter"), (json!("tcp"), json!(null)));
    assert_eq!(link("gw-meter-1"), (json!("rtu-over-tcp"), json!(null)));
    assert_eq!(link("bus-meter-1").0, json!("rtu"));
    assert!(link("bus-meter-1").1.is_string(), "{listed:?}");
    running.shutdown().await.unwrap();

    let db = regpoll::db::Db::sqlite(&sqlite_path).await.unwrap();
    let regpoll::db::Db::Sqlite(pool) = &db else {
        unreachable!()
    };
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT device, quality, COUNT(*) FROM register_readings_named GROUP BY device, quality ORDER BY device",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let devices: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        devices,
        [
            "bus-meter-1",
            "bus-meter-2",
            "gw-meter-1",
            "gw-meter-2",
            "tcp-meter"
        ],
        "{rows:?}"
    );
    assert!(rows.iter().all(|r| r.1 == "good" && r.2 >= 1), "{rows:?}");
    db.close().await;
}
