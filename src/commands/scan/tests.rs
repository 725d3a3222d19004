//! The scan against the simulator: a gateway with several units, a device
//! that takes at most 40 registers, a register that answers exception 2, a
//! silent unit and a small budget.

use std::time::Duration;

use super::probe::{Piece, Presence, Report};
use super::*;
use crate::modbus::ReadError;
use crate::registry::{LogFrames, RegisterKind, Transport};
use crate::sim::{Bind, FaultAction, SimFault, Simulator};
use tokio_modbus::ExceptionCode;

/// Units 1, 2 and 5 behind one gateway; unit 2 has a u16 at 100 and an f32
/// at 200 among its registers.
const GATEWAY: &str = "\
defaults: { host: 127.0.0.1, port: 5020 }
devices:
  - name: meter
    unit_id: 1
    registers: [ { name: v, kind: holding, address: 0 } ]
  - name: boiler
    unit_id: 2
    registers:
      - { name: t, kind: holding, address: 0 }
      - { name: status, kind: holding, address: 100 }
      - { name: flow, kind: holding, address: 200, type: f32 }
      - { name: hang, kind: holding, address: 300 }
      - { name: label, kind: holding, address: 400, type: string, length: 100 }
  - name: pump
    unit_id: 5
    registers: [ { name: on, kind: coil, address: 3 } ]
";

fn plan(units: &[u8], window: (u16, u16)) -> Plan {
    Plan {
        units: units.iter().copied().map(UnitId).collect(),
        kind: RegisterKind::Holding,
        window,
        timeout: Duration::from_millis(200),
        resolution: 8,
        max_time: Duration::from_secs(60),
        max_requests: 50_000,
        log_frames: LogFrames::Off,
    }
}

/// The gateway, with `faults` on device/register names of `GATEWAY`.
async fn gateway(faults: &[(&str, Option<&str>, FaultAction)]) -> (Simulator, Endpoint) {
    let devices = crate::config::parse(GATEWAY, "gateway.yaml").unwrap();
    let faults = faults
        .iter()
        .map(|(device, register, action)| SimFault {
            device: device.to_string(),
            register: register.map(str::to_string),
            action: action.clone(),
        })
        .collect();
    let sim = Simulator::start_with_faults(&devices, Bind::Ephemeral, faults)
        .await
        .unwrap();
    let port = sim.addr_of(&devices[0]).unwrap().port();
    (sim, Endpoint::new("127.0.0.1", port))
}

async fn scanned(endpoint: &Endpoint, plan: &Plan) -> (Report, String) {
    let mut progress = Vec::new();
    let report = scan_endpoint(endpoint, plan, &mut progress).await.unwrap();
    (report, String::from_utf8(progress).unwrap())
}

/// [`scanned`], failing when the scan takes `bound` or longer.
async fn scanned_within(endpoint: &Endpoint, plan: &Plan, bound: Duration) -> (Report, String) {
    let started = std::time::Instant::now();
    let scan = scanned(endpoint, plan).await;
    let took = started.elapsed();
    assert!(took < bound, "{took:?}, bound {bound:?}:\n{}", scan.1);
    scan
}

/// The skeleton of a scan of the simulated gateway at 127.0.0.1:5020.
fn tcp_skeleton(report: &Report, kind: RegisterKind) -> String {
    skeleton::skeleton("127.0.0.1", 5020, &Transport::Tcp, kind, report).unwrap()
}

fn readable(first: u16, last: u16) -> Piece {
    Piece {
        first,
        last,
        refused: None,
    }
}

fn refused(first: u16, last: u16, code: u8) -> Piece {
    Piece {
        first,
        last,
        refused: Some(ReadError::Exception(ExceptionCode::new(code))),
    }
}

#[tokio::test]
async fn finds_the_units_behind_a_gateway_and_not_the_absent_ones() {
    let (_sim, endpoint) = gateway(&[]).await;
    let (report, progress) = scanned(&endpoint, &plan(&[1, 2, 3, 4, 5, 6], (0, 999))).await;
    assert_eq!(
        report.answering().collect::<Vec<_>>(),
        [1, 2, 5].map(UnitId)
    );
    let nobody = Presence::Nobody(ReadError::Exception(ExceptionCode::new(11)));
    assert_eq!(report.presence[2], (UnitId(3), nobody.clone()));
    assert_eq!(report.presence[5], (UnitId(6), nobody));
    // Absent units in a row share a line; the ones that answer have their own.
    for line in [
        "scanning 127.0.0.1:",
        "unit 1: answers\n",
        "units 3-4: nobody there (exception 11 (gateway target device failed to respond))\n",
        "unit 5: answers\n",
        "unit 6: nobody there",
        "unit 1: largest read 125 registers (the protocol's limit)\n",
        "unit 1: holding 0-999 readable\n",
        "3 of 6 units answer;",
    ] {
        assert!(progress.contains(line), "{line:?} in\n{progress}");
    }
    assert!(report.stopped.is_none(), "{report:?}");
    for u in &report.units {
        assert_eq!(u.pieces, [readable(0, 999)], "unit {}", u.unit.0);
    }
}

#[tokio::test]
async fn finds_the_largest_read_of_a_device_that_takes_40() {
    let (_sim, endpoint) = gateway(&[("boiler", None, FaultAction::MaxRegisters(40))]).await;
    let (report, progress) = scanned(&endpoint, &plan(&[2], (0, 999))).await;
    let unit = &report.units[0];
    assert_eq!(unit.largest, 40);
    assert!(
        progress.contains(
            "unit 2: largest read 40 registers (41 answers exception 3 (illegal data value))"
        ),
        "{progress}"
    );
    // Read in blocks of 40, which the device takes: all of it readable.
    assert_eq!(unit.pieces, [readable(0, 999)]);
    let yaml = tcp_skeleton(&report, RegisterKind::Holding);
    assert!(
        yaml.contains("    max_registers_per_request: 40\n"),
        "{yaml}"
    );
}

/// A device that checks the address before the count (the protocol says
/// the count first) answers exception 2 to the first, long read over its
/// refused register, so the largest read is found wrong at first; the read
/// refused for its count later finds it again. A resolution above it is
/// held to it.
#[tokio::test]
async fn a_count_refused_after_the_first_bisection_is_bisected_again_where_refused() {
    // The later fault wins where both apply: exception 2 over the count.
    let (_sim, endpoint) = gateway(&[
        ("boiler", None, FaultAction::MaxRegisters(40)),
        ("boiler", Some("status"), FaultAction::Exception(2)),
    ])
    .await;
    let mut p = plan(&[2], (0, 999));
    p.resolution = 2000;
    let (report, progress) = scanned(&endpoint, &p).await;
    assert!(
        progress.contains("unit 2: largest read 125 registers (the protocol's limit)\n"),
        "{progress}"
    );
    assert!(
        progress.contains("unit 2: a read of 125 from 125 was refused for its count (exception 3); probing again\n"),
        "{progress}"
    );
    assert!(
        progress.contains(
            "unit 2: largest read 40 registers (41 answers exception 3 (illegal data value))\n"
        ),
        "{progress}"
    );
    assert_eq!(report.units[0].largest, 40);
    assert_eq!(
        report.units[0].pieces,
        [readable(0, 99), refused(100, 100, 2), readable(101, 999)],
        "{progress}"
    );
}

#[tokio::test]
async fn a_register_that_answers_exception_2_is_a_gap_found_exactly() {
    let refuse = FaultAction::Exception(2);
    let (_sim, endpoint) = gateway(&[
        ("boiler", Some("status"), refuse.clone()),
        ("boiler", Some("flow"), refuse),
    ])
    .await;
    let (report, progress) = scanned(&endpoint, &plan(&[2], (0, 999))).await;
    assert_eq!(
        report.units[0].pieces,
        [
            readable(0, 99),
            refused(100, 100, 2),
            readable(101, 199),
            refused(200, 201, 2),
            readable(202, 999),
        ]
    );
    for line in [
        "unit 2: holding 0-99 readable\n",
        "unit 2: holding 100 not readable: exception 2 (illegal data address)\n",
        "unit 2: holding 200-201 not readable: exception 2 (illegal data address)\n",
        "unit 2: holding 202-999 readable\n",
    ] {
        assert!(progress.contains(line), "{line:?} in\n{progress}");
    }
    // Printed in address order, each range once.
    assert_eq!(progress.matches("unit 2: holding").count(), 5, "{progress}");
    // Far fewer requests than one per address.
    assert!(report.requests < 100, "{} requests", report.requests);
}

#[tokio::test]
async fn a_refused_address_at_the_window_edges_and_a_refused_window_are_reported() {
    let (_sim, endpoint) = gateway(&[("boiler", Some("status"), FaultAction::Exception(2))]).await;
    let (report, _) = scanned(&endpoint, &plan(&[2], (100, 120))).await;
    assert_eq!(
        report.units[0].pieces,
        [refused(100, 100, 2), readable(101, 120)]
    );
    let (report, _) = scanned(&endpoint, &plan(&[2], (90, 100))).await;
    assert_eq!(
        report.units[0].pieces,
        [readable(90, 99), refused(100, 100, 2)]
    );
    // A refused piece at either end of the window holds readable addresses
    // too: they are found, though no readable piece lies beyond them.
    let (report, _) = scanned(&endpoint, &plan(&[2], (96, 110))).await;
    assert_eq!(
        report.units[0].pieces,
        [readable(96, 99), refused(100, 100, 2), readable(101, 110)]
    );
    let (report, _) = scanned(&endpoint, &plan(&[2], (90, 104))).await;
    assert_eq!(
        report.units[0].pieces,
        [readable(90, 99), refused(100, 100, 2), readable(101, 104)]
    );
    let (report, _) = scanned(&endpoint, &plan(&[2], (100, 100))).await;
    assert_eq!(report.units[0].pieces, [refused(100, 100, 2)]);
    assert_eq!(
        skeleton::skeleton(
            "127.0.0.1",
            5020,
            &Transport::Tcp,
            RegisterKind::Holding,
            &report
        ),
        None,
        "nothing readable: no skeleton"
    );
}

#[tokio::test]
async fn a_silent_unit_costs_one_timeout_and_the_scan_goes_on() {
    let (_sim, endpoint) = gateway(&[("boiler", None, FaultAction::NoReply)]).await;
    let mut p = plan(&[1, 2, 3], (0, 99));
    p.timeout = Duration::from_millis(100);
    // One timeout for unit 2; the rest answers at once.
    let (report, progress) = scanned_within(&endpoint, &p, Duration::from_secs(2)).await;
    assert_eq!(
        report.presence[1],
        (
            UnitId(2),
            Presence::Silent(ReadError::Timeout(Duration::from_millis(100)))
        )
    );
    assert!(
        progress.contains("unit 2: no answer (timeout after 100 ms)"),
        "{progress}"
    );
    assert_eq!(report.answering().collect::<Vec<_>>(), [UnitId(1)]);
}

#[tokio::test]
async fn an_address_that_hangs_the_unit_is_a_gap_and_the_scan_goes_on() {
    // Every read that touches address 300 goes unanswered.
    let (_sim, endpoint) = gateway(&[("boiler", Some("hang"), FaultAction::NoReply)]).await;
    let mut p = plan(&[2], (0, 999));
    p.timeout = Duration::from_millis(50);
    let (report, progress) = scanned_within(&endpoint, &p, Duration::from_secs(3)).await;
    // The block and the one piece of it holding 300 time out (timeouts are
    // not bisected: each step would cost a timeout); the rest is read.
    let timeout = Some(ReadError::Timeout(Duration::from_millis(50)));
    let unit = &report.units[0];
    assert_eq!(
        unit.pieces,
        [
            readable(0, 297),
            Piece {
                first: 298,
                last: 305,
                refused: timeout
            },
            readable(306, 999)
        ],
        "{progress}"
    );
    assert!(unit.stopped.is_none(), "{progress}");
}

#[tokio::test]
async fn a_unit_that_answers_garbage_is_not_taken_for_a_device_and_its_neighbours_are_found() {
    for fault in [FaultAction::Garbage, FaultAction::ShortFrame] {
        let (_sim, endpoint) = gateway(&[("boiler", None, fault.clone())]).await;
        let (report, progress) = scanned(&endpoint, &plan(&[1, 2, 5], (0, 99))).await;
        assert_eq!(
            report.answering().collect::<Vec<_>>(),
            [UnitId(1), UnitId(5)],
            "{fault:?}: {progress}"
        );
        assert!(
            matches!(
                &report.presence[1],
                (UnitId(2), Presence::Silent(ReadError::Protocol(_)))
            ),
            "{fault:?}: {progress}"
        );
        assert!(
            progress.contains("unit 2: no usable answer (protocol: "),
            "{progress}"
        );
        assert!(
            progress.contains("unit 5: holding 0-99 readable"),
            "{progress}"
        );
    }
}

#[tokio::test]
async fn a_unit_that_stops_answering_mid_scan_is_given_up_and_the_rest_named() {
    // Every read that touches 400-499 goes unanswered: a hundred addresses
    // of silence, past what the scan waits out.
    let (_sim, endpoint) = gateway(&[("boiler", Some("label"), FaultAction::NoReply)]).await;
    let mut p = plan(&[2], (390, 999));
    p.timeout = Duration::from_millis(30);
    let silent_for = Duration::from_millis(30) * (probe::SILENT_AFTER + 2);
    let bound = silent_for + Duration::from_millis(500);
    let (report, progress) = scanned_within(&endpoint, &p, bound).await;
    let unit = &report.units[0];
    let why = unit
        .stopped
        .as_deref()
        .unwrap_or_else(|| panic!("{progress}"));
    assert!(
        why.starts_with("stopped answering (8 timeouts in a row)"),
        "{why}"
    );
    let next = unit.pieces.last().unwrap().last + 1;
    assert!(why.ends_with(&format!("; {next}-999 not probed")), "{why}");
    assert_eq!(unit.pieces[0], readable(390, 397), "{progress}");
    assert!(report.stopped.is_none(), "only this unit is given up");
}

#[tokio::test]
async fn a_slow_unit_is_scanned_until_the_time_budget_and_says_what_is_left() {
    // 20 ms an answer: the whole address space would take over 10 s.
    let slow = FaultAction::Delay(Duration::from_millis(20));
    let (_sim, endpoint) = gateway(&[("boiler", None, slow)]).await;
    let mut p = plan(&[2], (0, 65535));
    p.max_time = Duration::from_millis(400);
    let (report, progress) = scanned_within(&endpoint, &p, Duration::from_millis(1000)).await;
    let unit = &report.units[0];
    let why = unit
        .stopped
        .as_deref()
        .unwrap_or_else(|| panic!("{progress}"));
    assert!(why.starts_with("out of budget (--max-time 400ms"), "{why}");
    let next = unit.pieces.last().unwrap().last + 1;
    assert!(
        why.ends_with(&format!("; {next}-65535 not probed")),
        "{why}"
    );
    assert!(progress.contains(&format!("unit 2: {why}")), "{progress}");
}

#[tokio::test]
async fn the_request_budget_is_shared_among_the_units_that_answer() {
    let (_sim, endpoint) = gateway(&[]).await;
    let mut p = plan(&[1, 2], (0, 65535));
    p.max_requests = 100;
    let (report, progress) = scanned(&endpoint, &p).await;
    assert!(report.requests <= 100, "{}", report.requests);
    // Both units get their share: neither is starved by the other.
    assert_eq!(report.units.len(), 2, "{progress}");
    for u in &report.units {
        let why = u.stopped.as_deref().unwrap_or_else(|| panic!("{progress}"));
        assert!(why.contains("--max-requests 100"), "{why}");
        assert!(u.pieces[0].last > 1000, "{:?}", u.pieces);
    }
    // What was found is still a skeleton `check` takes.
    let yaml = tcp_skeleton(&report, RegisterKind::Holding);
    assert!(
        yaml.contains("# The scan ended early") || yaml.contains("probing ended early"),
        "{yaml}"
    );
    let devices = crate::config::parse(&yaml, "skeleton.yaml").unwrap();
    assert_eq!(devices.len(), 2);
}

#[tokio::test]
async fn coils_are_scanned_in_bits_up_to_2000() {
    let (_sim, endpoint) = gateway(&[]).await;
    let mut p = plan(&[5], (0, 4999));
    p.kind = RegisterKind::Coil;
    let (report, progress) = scanned(&endpoint, &p).await;
    assert_eq!(report.units[0].largest, 2000, "{progress}");
    assert_eq!(report.units[0].pieces, [readable(0, 4999)]);
    let yaml = tcp_skeleton(&report, RegisterKind::Coil);
    assert!(
        yaml.contains("{ name: coil_0, kind: coil, address: 0, type: bool }"),
        "{yaml}"
    );
    assert!(!yaml.contains("max_bits_per_request"), "{yaml}");
    crate::config::parse(&yaml, "skeleton.yaml").unwrap();
}

#[tokio::test]
async fn the_skeleton_lists_each_readable_range_and_parses_as_devices_yaml() {
    let (_sim, endpoint) = gateway(&[
        ("boiler", Some("status"), FaultAction::Exception(2)),
        ("boiler", None, FaultAction::MaxRegisters(40)),
    ])
    .await;
    let (report, _) = scanned(&endpoint, &plan(&[1, 2], (0, 999))).await;
    let yaml = tcp_skeleton(&report, RegisterKind::Holding);
    for part in [
        "  - name: 127.0.0.1-unit-2\n    host: \"127.0.0.1\"\n    port: 5020\n    unit_id: 2\n    max_registers_per_request: 40\n",
        "      # holding 0-99 readable (100 addresses; the first 8 listed)\n",
        "      - { name: holding_7, kind: holding, address: 7, type: u16 }\n",
        "      # holding 100 not readable: exception 2 (illegal data address)\n",
        "      - { name: holding_101, kind: holding, address: 101, type: u16 }\n",
    ] {
        assert!(yaml.contains(part), "{part:?} in\n{yaml}");
    }
    let devices = crate::config::parse(&yaml, "skeleton.yaml").unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[1].registers.len(), 16);
    assert_eq!(devices[1].limits.max_registers, 40);
}

#[tokio::test]
async fn an_endpoint_nobody_listens_on_is_an_error_that_says_so() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = Endpoint::new("127.0.0.1", closed);
    let mut progress = Vec::new();
    let e = scan_endpoint(&endpoint, &plan(&[1, 2], (0, 9)), &mut progress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot reach the endpoint: connect: connection refused"),
        "{e}"
    );
}

#[test]
fn unit_lists_print_as_ranges() {
    let units: Vec<UnitId> = [1, 2, 3, 5, 7, 8].map(UnitId).to_vec();
    assert_eq!(units_text(&units), "1-3,5,7-8");
    assert_eq!(units_text(&[UnitId(247)]), "247");
}

/// Scanning speaks the device's transport: RTU frames over TCP and on a
/// serial line (the simulator's pseudo-terminal), and the skeleton says
/// how to reach what it found, as devices.yaml takes it.
#[tokio::test]
async fn scans_over_rtu_over_tcp_and_a_serial_line_and_the_skeleton_keeps_the_link() {
    let yaml = "\
devices:
  - name: drive
    host: 127.0.0.1
    port: 5020
    transport: rtu-over-tcp
    unit_id: 4
    registers: [ { name: speed, kind: holding, address: 10 } ]
  - name: meter
    transport: rtu
    unit_id: 9
    serial: { path: /dev/ttyUSB0, baud: 19200, parity: even }
    registers: [ { name: v, kind: holding, address: 0 } ]
";
    let devices = crate::config::parse(yaml, "rtu.yaml").unwrap();
    let sim = Simulator::start(&devices, Bind::Ephemeral).await.unwrap();
    for (device, unit) in [(&devices[0], 4), (&devices[1], 9)] {
        let d = sim.reach(device);
        let endpoint = Endpoint::with_transport(d.host.clone(), d.port, d.transport.clone());
        let (report, progress) = scanned(&endpoint, &plan(&[unit - 1, unit], (0, 99))).await;
        assert_eq!(
            report.answering().collect::<Vec<_>>(),
            [UnitId(unit)],
            "{progress}"
        );
        assert_eq!(report.units[0].pieces, [readable(0, 99)], "{progress}");
        let yaml = skeleton::skeleton(
            &d.host,
            d.port,
            &d.transport,
            RegisterKind::Holding,
            &report,
        )
        .unwrap();
        let found = crate::config::parse(&yaml, "skeleton.yaml")
            .unwrap_or_else(|e| panic!("{e:?}\n{yaml}"));
        assert_eq!(found[0].transport, d.transport, "{yaml}");
        assert_eq!(found[0].unit_id, UnitId(unit), "{yaml}");
    }
}
