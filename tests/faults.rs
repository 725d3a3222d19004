//! Broken devices, simulated: each fault gives the right quality and detail,
//! only the registers of the failed request are affected, a healthy device in
//! the same run keeps good readings and its timing, a gateway with one dead
//! unit keeps serving the others, and a late reply is never taken as the
//! answer to a later request (no stale replies). tests/gateway.rs has the
//! gateway cases: silent units, demotion, pacing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use regpoll::config;
use regpoll::modbus::endpoint::Endpoint;
use regpoll::poller::DevicePoller;
use regpoll::reading::{PollReport, Quality, Value};
use regpoll::registry::Device;
use regpoll::sim::fault::FaultAction;
use regpoll::sim::{SimFault, expected_value};

const DEVICES: &str = r#"
defaults: { host: 127.0.0.1, port: 1, every: 1s, timeout: 300ms, retries: 0, max_gap: 0 }
devices:
  - name: faulty
    unit_id: 1
    registers:
      - { name: a, kind: holding, address: 0, type: u32 }
      - { name: b, kind: holding, address: 100, type: i16 }
      - { name: wide, kind: input, address: 0, type: string, length: 60 }
  - name: healthy
    port: 2
    unit_id: 2
    registers:
      - { name: a, kind: holding, address: 0, type: u32 }
      - { name: b, kind: holding, address: 100, type: i16 }
"#;

fn devices(yaml: &str) -> Vec<Device> {
    config::parse(yaml, "faults.yaml").unwrap()
}

use common::start_sim as start;

/// Polls every device once, in parallel, with one endpoint (connection) per
/// host:port as the service does.
async fn poll_all(devices: &[Arc<Device>]) -> Vec<PollReport> {
    let mut endpoints: std::collections::HashMap<u16, Arc<Endpoint>> = Default::default();
    let polls: Vec<_> = devices
        .iter()
        .map(|d| {
            let endpoint = Arc::clone(
                endpoints
                    .entry(d.port)
                    .or_insert_with(|| Arc::new(Endpoint::new("127.0.0.1", d.port))),
            );
            let mut poller = DevicePoller::new(Arc::clone(d), endpoint);
            async move { poller.poll().await }
        })
        .collect();
    futures::future::join_all(polls).await
}

fn reading<'a>(report: &'a PollReport, register: &str) -> &'a regpoll::reading::Reading {
    report
        .readings
        .iter()
        .find(|r| *report.register(r).name == *register)
        .unwrap()
}

use common::assert_all_good;

/// Runs one fault on device `faulty` (optionally on one register) and checks
/// the detail of the affected registers; everything else must stay good.
async fn with_fault(
    register: Option<&str>,
    action: FaultAction,
    affected: &[&str],
    detail: impl Fn(&str) -> bool,
) {
    let devs = devices(DEVICES);
    let fault = SimFault {
        device: "faulty".into(),
        register: register.map(str::to_string),
        action,
    };
    let (_sim, devs) = start(&devs, vec![fault]).await;
    let reports = poll_all(&devs).await;
    let (faulty, healthy) = (&reports[0], &reports[1]);
    assert_all_good(healthy);
    // Polled in parallel on its own endpoint, the healthy device is not held up
    // by the faulty one's timeouts or delays.
    assert!(
        healthy.latency < Duration::from_millis(150),
        "healthy latency {:?}",
        healthy.latency
    );
    for r in &faulty.readings {
        let name = &*faulty.register(r).name;
        if affected.contains(&name) {
            assert_eq!(r.quality, Quality::Bad, "{name}");
            assert_eq!(r.value, Value::None, "{name}");
            let d = r.detail.as_deref().unwrap_or_default();
            assert!(detail(d), "{name}: unexpected detail {d:?}");
        } else {
            assert_eq!(
                r.quality,
                Quality::Good,
                "{name} is not in the failed request: {:?}",
                r.detail
            );
        }
    }
}

#[tokio::test]
async fn an_exception_on_one_register_marks_only_that_request() {
    with_fault(Some("b"), FaultAction::Exception(2), &["b"], |d| {
        d == "exception 2 (illegal data address)"
    })
    .await;
}

#[tokio::test]
async fn a_late_reply_is_a_timeout_with_the_configured_timeout() {
    with_fault(
        None,
        FaultAction::Delay(Duration::from_millis(600)),
        &["a", "b", "wide"],
        |d| d == "timeout after 300 ms",
    )
    .await;
}

#[tokio::test]
async fn no_reply_is_a_timeout() {
    with_fault(Some("a"), FaultAction::NoReply, &["a"], |d| {
        d == "timeout after 300 ms"
    })
    .await;
}

#[tokio::test]
async fn a_dropped_connection_is_a_transport_error() {
    with_fault(Some("a"), FaultAction::DropEvery(1), &["a"], |d| {
        d.starts_with("transport: ")
    })
    .await;
}

#[tokio::test]
async fn garbage_replies_are_protocol_or_transport_errors() {
    with_fault(Some("b"), FaultAction::Garbage, &["b"], |d| {
        d.starts_with("transport: ") || d.starts_with("protocol: ")
    })
    .await;
}

#[tokio::test]
async fn short_frames_are_rejected() {
    with_fault(Some("b"), FaultAction::ShortFrame, &["b"], |d| {
        d.starts_with("transport: ")
            || d.starts_with("protocol: ")
            || d.starts_with("response has")
            || d.starts_with("timeout")
    })
    .await;
}

#[tokio::test]
async fn a_device_limited_to_40_registers_answers_exception_3_above_it_and_works_with_the_limit_set()
 {
    with_fault(None, FaultAction::MaxRegisters(40), &["wide"], |d| {
        d == "exception 3 (illegal data value)"
    })
    .await;
    // With the device's limit configured, the 60-register string cannot be read
    // in one request at all, so config refuses it; a 40-register one works.
    let yaml = DEVICES.replace("length: 60", "length: 40").replace(
        "max_gap: 0 }",
        "max_gap: 0, max_registers_per_request: 40 }",
    );
    let (_sim, devs) = start(
        &devices(&yaml),
        vec![SimFault {
            device: "faulty".into(),
            register: None,
            action: FaultAction::MaxRegisters(40),
        }],
    )
    .await;
    for report in poll_all(&devs).await {
        assert_all_good(&report);
    }
}

#[tokio::test]
async fn a_gateway_with_one_silent_unit_keeps_serving_the_others() {
    let yaml = format!(
        "{DEVICES}  - name: third\n    unit_id: 3\n    registers:\n      - {{ name: a, kind: input, address: 5, type: f32 }}\n"
    );
    let (_sim, devs) = start(
        &devices(&yaml),
        vec![SimFault {
            device: "faulty".into(),
            register: None,
            action: FaultAction::NoReply,
        }],
    )
    .await;
    for _ in 0..2 {
        let reports = poll_all(&devs).await;
        assert!(
            reports[0]
                .readings
                .iter()
                .all(|r| r.quality == Quality::Bad)
        );
        assert_all_good(&reports[1]);
        assert_all_good(&reports[2]);
    }
}

#[tokio::test]
async fn after_a_timeout_the_next_request_gets_its_own_reply_not_a_stale_one() {
    // `a` answers after 450 ms, past the 300 ms timeout; the next request
    // (`b`) must not take `a`'s late reply for its answer, whether the
    // connection is kept (the late reply is recognised by its transaction
    // id) or, as here with the endpoint's only unit silent, re-opened.
    let fault = SimFault {
        device: "faulty".into(),
        register: Some("a".into()),
        action: FaultAction::Delay(Duration::from_millis(450)),
    };
    let devs = devices(DEVICES);
    let (_sim, devs) = start(&devs, vec![fault]).await;
    let faulty = vec![Arc::clone(&devs[0])];
    for _ in 0..3 {
        let report = &poll_all(&faulty).await[0];
        assert_eq!(
            reading(report, "a").detail.as_deref(),
            Some("timeout after 300 ms")
        );
        let b = reading(report, "b");
        assert_eq!(b.quality, Quality::Good, "{:?}", b.detail);
        let reg = report.register(b);
        assert!(
            [b.ts, b.ts + chrono::Duration::seconds(1)]
                .iter()
                .any(|&t| expected_value("faulty", reg, t) == b.value),
            "stale or wrong value {:?}",
            b.value
        );
    }
}

#[tokio::test]
async fn a_stray_frame_is_never_taken_for_an_answer() {
    // After every answer the device sends a well-formed reply carrying the
    // transaction id after the one it just answered, with every value 0xDEAD:
    // on one connection kept across polls, as the service keeps it.
    let fault = SimFault {
        device: "faulty".into(),
        register: None,
        action: FaultAction::StrayFrame,
    };
    // One request a poll, so the stray frame has the function, unit and size
    // of the next request as well as its id if ids go up by one.
    let devs = devices(
        "devices:\n  - { name: faulty, host: 127.0.0.1, port: 1, timeout: 300ms, retries: 0, registers: [{ name: a, kind: holding, address: 0, type: u16 }] }\n",
    );
    let (_sim, devs) = start(&devs, vec![fault]).await;
    let device = Arc::clone(&devs[0]);
    let endpoint = Arc::new(Endpoint::new("127.0.0.1", device.port));
    let mut poller = DevicePoller::new(Arc::clone(&device), endpoint);
    let mut good = 0;
    for _ in 0..15 {
        let report = poller.poll().await;
        for r in &report.readings {
            let reg = report.register(r);
            if r.quality != Quality::Good {
                // A stray frame that comes while an answer is awaited puts the
                // stream out of step: that request fails, nothing is taken.
                let detail = r.detail.as_deref().unwrap_or_default();
                assert!(
                    detail.starts_with("protocol:") || detail.starts_with("transport:"),
                    "{}: {detail}",
                    reg.name
                );
                continue;
            }
            good += 1;
            assert!(
                [r.ts, r.ts + chrono::Duration::seconds(1)]
                    .iter()
                    .any(|&t| expected_value("faulty", reg, t) == r.value),
                "{} = {:?} came from a stray frame",
                reg.name,
                r.value
            );
        }
        // The poll interval: the stray frame of the last answer arrives
        // meanwhile and waits on the socket for the next request.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(good >= 15, "only {good} good readings in 15 polls");
}
