//! The plan that learns, against the simulator: a device with holes in its
//! map and gap fill, one refusing reads above N registers, one timing out
//! on one address, one simply silent, and a definition change through the
//! fleet. Requests are counted at the endpoint, as the service counts them.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use regpoll::config;
use regpoll::fleet::{Counters, Fleet};
use regpoll::history::writer::HistoryStats;
use regpoll::latest::memory::LatestMemory;
use regpoll::modbus::endpoint::Endpoint;
use regpoll::modbus::stats::ErrorKind;
use regpoll::poller::DevicePoller;
use regpoll::reading::{PollReport, Quality};
use regpoll::registry::Device;
use regpoll::sim::fault::{FaultAction, Mapped};
use regpoll::sim::{Bind, SimFault, Simulator, expected_value};
use regpoll::sink::Sinks;

/// Three mapped runs with holes between them, read as one request with gap
/// fill (`max_gap: 30`); `refused` is mapped but answers exception 2.
const SPARSE: &str = r#"
defaults: { host: 127.0.0.1, port: 1, every: 100ms, timeout: 300ms, retries: 0, max_gap: 30 }
devices:
  - name: sparse
    unit_id: 1
    registers:
      - { name: a, kind: holding, address: 0, type: u16 }
      - { name: b, kind: holding, address: 1, type: i16 }
      - { name: c, kind: holding, address: 2, type: f32 }
      - { name: d, kind: holding, address: 10, type: u32, order: CDAB }
      - { name: e, kind: holding, address: 12, type: u16 }
      - { name: label, kind: holding, address: 13, type: string, length: 3 }
      - { name: f, kind: holding, address: 30, type: u16 }
      - { name: g, kind: holding, address: 31, type: i16 }
      - { name: refused, kind: holding, address: 32, type: u16 }
      - { name: h, kind: holding, address: 33, type: u16 }
"#;

fn holes(device: &str) -> SimFault {
    SimFault {
        device: device.into(),
        register: None,
        action: FaultAction::Holes(Mapped::default()),
    }
}

/// `SPARSE`'s faults: holes in its map, and `refused` answering exception 2.
fn sparse_faults() -> Vec<SimFault> {
    let refused = SimFault {
        device: "sparse".into(),
        register: Some("refused".into()),
        action: FaultAction::Exception(2),
    };
    vec![holes("sparse"), refused]
}

/// Starts the simulator for `yaml` and returns the device moved to it.
async fn start(yaml: &str, faults: Vec<SimFault>) -> (Simulator, Arc<Device>) {
    let devices = config::parse(yaml, "learning.yaml").unwrap();
    let sim = Simulator::start_with_faults(&devices, Bind::Ephemeral, faults)
        .await
        .unwrap();
    let device = Arc::new(Device {
        port: sim.addr_of(&devices[0]).unwrap().port(),
        ..devices[0].clone()
    });
    (sim, device)
}

/// A device of `n` u16 registers of `kind` at addresses 0 to n−1 (one
/// coalesced request), with `action` on the whole device.
async fn contiguous(
    name: &str,
    kind: &str,
    n: u16,
    action: FaultAction,
) -> (Simulator, Arc<Device>) {
    let registers: String = (0..n)
        .map(|i| format!("      - {{ name: r{i}, kind: {kind}, address: {i}, type: u16 }}\n"))
        .collect();
    let yaml = format!(
        "defaults: {{ host: 127.0.0.1, port: 1, timeout: 300ms, retries: 0 }}\ndevices:\n  - name: {name}\n    registers:\n{registers}"
    );
    let fault = SimFault {
        device: name.into(),
        register: None,
        action,
    };
    start(&yaml, vec![fault]).await
}

fn poller(device: &Arc<Device>) -> (DevicePoller, Arc<Endpoint>) {
    let endpoint = Arc::new(Endpoint::new("127.0.0.1", device.port));
    (
        DevicePoller::new(Arc::clone(device), Arc::clone(&endpoint)),
        endpoint,
    )
}

fn requests(endpoint: &Endpoint) -> u64 {
    endpoint.stats().requests.load(Ordering::Relaxed)
}

/// Polls until the poller has finished learning; returns the polls it took
/// and the last report. Panics past `bound` polls.
async fn poll_until_settled(poller: &mut DevicePoller, bound: usize) -> (usize, PollReport) {
    for n in 1..=bound {
        let report = poller.poll().await;
        if poller.settled() {
            return (n, report);
        }
    }
    panic!("still learning after {bound} polls");
}

/// Every register not in `bad` is good with the simulator's value; those
/// in `bad` are bad with `detail`.
fn assert_readings(report: &PollReport, bad: &[&str], detail: &str) {
    assert_eq!(report.readings.len(), report.device.registers.len());
    for r in &report.readings {
        let reg = report.register(r);
        if bad.contains(&&*reg.name) {
            assert_eq!(r.quality, Quality::Bad, "{}", reg.name);
            assert_eq!(r.detail.as_deref(), Some(detail), "{}", reg.name);
            continue;
        }
        assert_eq!(r.quality, Quality::Good, "{}: {:?}", reg.name, r.detail);
        let ok = [r.ts, r.ts + chrono::Duration::seconds(1)]
            .iter()
            .any(|&t| expected_value(&report.device.name, reg, t) == r.value);
        assert!(
            ok,
            "{} = {:?} is not the simulator's value",
            reg.name, r.value
        );
    }
}

#[tokio::test]
async fn a_device_with_holes_learns_its_blocks_and_keeps_reading_them_coalesced() {
    let (_sim, device) = start(SPARSE, sparse_faults()).await;
    let (mut poller, endpoint) = poller(&device);
    assert_eq!(poller.requests().len(), 1, "gap fill makes one request");

    let (polls, report) = poll_until_settled(&mut poller, 5).await;
    assert!(polls <= 3, "learning took {polls} polls");
    assert_readings(&report, &["refused"], "exception 2 (illegal data address)");
    let learned = poller.learned().expect("the plan was learned");
    assert_eq!(
        learned.to_string(),
        "learned: 4 blocks, 1 address refused (coalesced: 1 request)"
    );
    let blocks: Vec<(u16, u16)> = learned.blocks.iter().map(|b| (b.start, b.count)).collect();
    assert_eq!(blocks, vec![(0, 4), (10, 6), (30, 2), (33, 1)]);
    assert_eq!(learned.refused[0].registers, vec!["refused"]);
    assert_eq!(learned.refused[0].exception, 2);

    // From now on: the learned requests each poll, and nothing more.
    for _ in 0..3 {
        let before = requests(&endpoint);
        let report = poller.poll().await;
        assert_eq!(requests(&endpoint) - before, 5);
        assert_readings(&report, &["refused"], "exception 2 (illegal data address)");
    }
    assert_eq!(poller.learned(), Some(learned));
}

#[tokio::test]
async fn a_device_refusing_reads_above_16_registers_learns_blocks_of_at_most_16() {
    let (_sim, device) = contiguous("narrow", "input", 60, FaultAction::MaxRegisters(16)).await;
    let (mut poller, endpoint) = poller(&device);
    assert_eq!(poller.requests().len(), 1);
    let (polls, report) = poll_until_settled(&mut poller, 5).await;
    assert!(polls <= 2, "learning took {polls} polls");
    assert_readings(&report, &[], "");
    let learned = poller.learned().unwrap();
    assert!(learned.refused.is_empty());
    assert!(learned.blocks.iter().all(|b| b.count <= 16), "{learned:?}");
    assert_eq!(learned.blocks.len(), 4, "{learned:?}");
    let before = requests(&endpoint);
    let errors = endpoint.stats().errors(ErrorKind::Exception);
    assert_readings(&poller.poll().await, &[], "");
    assert_eq!(requests(&endpoint) - before, 4);
    assert_eq!(endpoint.stats().errors(ErrorKind::Exception), errors);
}

/// Four values in one request; a read touching `c` is never answered.
const ONE_MUTE_ADDRESS: &str = r#"
defaults: { host: 127.0.0.1, port: 1, timeout: 150ms, retries: 0 }
devices:
  - name: mute
    registers:
      - { name: a, kind: holding, address: 0, type: u16 }
      - { name: b, kind: holding, address: 1, type: u16 }
      - { name: c, kind: holding, address: 2, type: u16 }
      - { name: d, kind: holding, address: 3, type: u16 }
"#;

#[tokio::test]
async fn a_timeout_where_smaller_reads_answer_is_learned_too() {
    let mute = SimFault {
        device: "mute".into(),
        register: Some("c".into()),
        action: FaultAction::NoReply,
    };
    let (_sim, device) = start(ONE_MUTE_ADDRESS, vec![mute]).await;
    let (mut poller, endpoint) = poller(&device);
    let (_, report) = poll_until_settled(&mut poller, 3).await;
    assert_readings(&report, &["c"], "timeout after 150 ms");
    let shape: Vec<(u16, u16)> = poller
        .requests()
        .iter()
        .map(|r| (r.start, r.count))
        .collect();
    assert_eq!(shape, vec![(0, 2), (2, 1), (3, 1)]);
    let before = requests(&endpoint);
    assert_readings(&poller.poll().await, &["c"], "timeout after 150 ms");
    assert_eq!(requests(&endpoint) - before, 3);
}

#[tokio::test]
async fn a_silent_device_is_not_split() {
    let silent = SimFault {
        device: "mute".into(),
        register: None,
        action: FaultAction::NoReply,
    };
    // With a retry: the coalesced request is sent twice a poll, the halves
    // once each. Demotion is put off (it would stop the asking after three
    // timeouts; tests/gateway.rs covers it) to watch the learning alone.
    let yaml = ONE_MUTE_ADDRESS.replace("retries: 0", "retries: 1, demote_after: 100");
    let (_sim, device) = start(&yaml, vec![silent]).await;
    let (mut poller, endpoint) = poller(&device);
    // The first poll tries the halves once (two more timeouts), finds them
    // silent too, and keeps the request whole; later polls do not try again.
    let mut sent = Vec::new();
    for _ in 0..4 {
        let before = requests(&endpoint);
        let report = poller.poll().await;
        sent.push(requests(&endpoint) - before);
        assert_readings(&report, &["a", "b", "c", "d"], "timeout after 150 ms");
        assert!(!report.reachable);
    }
    assert_eq!(sent, vec![4, 2, 2, 2]);
    assert_eq!(poller.requests().len(), 1);
    assert_eq!(poller.learned(), None);
}

/// A fleet with sinks that go nowhere but memory.
fn fleet() -> (Fleet, Arc<Counters>, Arc<LatestMemory>) {
    let latest = Arc::new(LatestMemory::default());
    // The receiver is dropped: history is not what this test looks at.
    let (history, _) = tokio::sync::mpsc::channel(1024);
    let sinks = Sinks::new(
        Arc::clone(&latest),
        history,
        Arc::new(HistoryStats::default()),
        None,
    );
    let counters = Arc::new(Counters::default());
    (Fleet::new(sinks, Arc::clone(&counters)), counters, latest)
}

/// Waits for polls (on the latest values' updates, not by sleeping) until
/// `done` holds.
async fn until(latest: &LatestMemory, what: &str, mut done: impl FnMut() -> bool) {
    let mut updates = latest.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            updates.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within 10 s"));
}

#[tokio::test]
async fn a_changed_definition_starts_from_the_coalesced_plan_again() {
    let yaml = SPARSE.replace(
        "      - { name: refused, kind: holding, address: 32, type: u16 }\n",
        "",
    );
    let (_sim, device) = start(&yaml, vec![holes("sparse")]).await;
    let (mut fleet, counters, latest) = fleet();
    let exceptions = || -> u64 {
        counters.endpoints.snapshot()[0].errors[ErrorKind::ALL
            .iter()
            .position(|k| *k == ErrorKind::Exception)
            .unwrap()]
    };
    fleet.reconcile(vec![(*device).clone()]).await;
    until(&latest, "the plan learned", || {
        counters
            .learned
            .get("sparse")
            .is_some_and(|l| l.blocks.len() == 4)
    })
    .await;

    // The same definition again changes nothing: the plan is kept, and no
    // read is refused any more.
    let changes = fleet.reconcile(vec![(*device).clone()]).await;
    assert!(changes.is_empty());
    let refused = exceptions();
    let polls = |latest: &LatestMemory| latest.device("sparse").unwrap().state.polls;
    let target = polls(&latest) + 3;
    until(&latest, "three more polls", || polls(&latest) >= target).await;
    assert_eq!(exceptions(), refused);
    assert!(counters.learned.get("sparse").is_some());

    // A changed definition forgets it and starts from the coalesced request,
    // which the device refuses again.
    let mut changed = (*device).clone();
    let mut regs = changed.registers.to_vec();
    regs[0].scale = 0.5;
    changed.registers = regs.into();
    let changes = fleet.reconcile(vec![changed]).await;
    assert_eq!(changes.restarted, vec!["sparse".to_string()]);
    assert_eq!(counters.learned.get("sparse"), None);
    until(&latest, "the coalesced request refused again", || {
        exceptions() > refused
    })
    .await;
    until(&latest, "the plan learned again", || {
        counters
            .learned
            .get("sparse")
            .is_some_and(|l| l.coalesced == 1 && l.blocks.len() == 4)
    })
    .await;
    fleet.stop_all().await;
}

/// `check --probe` prints what each device's plan learned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probe_shows_the_learned_plan() {
    let (_sim, device) = start(SPARSE, sparse_faults()).await;
    let yaml = SPARSE.replace("port: 1,", &format!("port: {},", device.port));
    let (dir, _) = common::write_yaml(&yaml);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regpoll"))
        .args(["check", "devices.yaml", "--probe"])
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The refused register is a bad value: exit 1, as for any other.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("1 of 10 values could not be read: sparse.refused: exception 2"),
        "{stderr}"
    );
    let learned: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("learned:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        learned,
        [
            "learned: 4 blocks, 1 address refused (coalesced: 1 request) after 1 poll",
            "block   holding  0..3 (4)",
            "block   holding  10..15 (6)",
            "block   holding  30..31 (2)",
            "block   holding  33..33 (1)",
            "refused holding  32..32 (1): refused: exception 2 (illegal data address)",
        ],
        "{stdout}"
    );
    for name in ["a", "d", "label", "h"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(line.contains("good"), "{line}");
    }
}

/// A device refusing every read, even of one register: learning goes on
/// for as many polls as it needs, never sending more than the plan's
/// requests plus `LEARN_REQUESTS_PER_POLL` in one, and ends with every
/// value refused alone, each with the device's exception.
#[tokio::test]
async fn a_device_refusing_every_read_is_learned_in_bounded_steps() {
    use regpoll::modbus::learn::LEARN_REQUESTS_PER_POLL;
    let (_sim, device) = contiguous("stubborn", "holding", 40, FaultAction::MaxRegisters(0)).await;
    let (mut poller, endpoint) = poller(&device);
    let all: Vec<&str> = device.registers.iter().map(|r| &*r.name).collect();
    let mut polls = 0;
    loop {
        let planned = poller.requests().len() as u64;
        let before = requests(&endpoint);
        let report = poller.poll().await;
        polls += 1;
        assert!(requests(&endpoint) - before <= planned + LEARN_REQUESTS_PER_POLL as u64);
        assert_readings(&report, &all, "exception 3 (illegal data value)");
        if poller.settled() {
            break;
        }
        assert!(polls < 20, "still learning after {polls} polls");
    }
    // 39 splits of two requests, 8 requests a poll.
    assert_eq!(polls, 10);
    let learned = poller.learned().unwrap();
    assert_eq!((learned.blocks.len(), learned.refused.len()), (0, 40));
    assert!(learned.refused.iter().all(|r| r.exception == 3));
    let before = requests(&endpoint);
    poller.poll().await;
    assert_eq!(requests(&endpoint) - before, 40);
}
