//! Gateways and units that misbehave (issue 22, section 2), against the
//! simulator: a silent unit neither stalls its neighbours nor takes their
//! shared connection down, late replies are recognised and dropped, a unit
//! is demoted after its timeouts and restored by one answer, and a gateway
//! that reboots comes back for every unit behind it. The hostile cases use a
//! gateway written here that answers with the wrong transaction or unit.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use regpoll::config;
use regpoll::modbus::ReadError;
use regpoll::modbus::endpoint::Endpoint;
use regpoll::poller::DevicePoller;
use regpoll::reading::{PollReport, Quality};
use regpoll::registry::{Device, RegisterKind, UnitId};
use regpoll::sim::fault::FaultAction;
use regpoll::sim::{Bind, SimFault, Simulator};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Three units behind one gateway; `silent` is unit 1.
const GATEWAY: &str = r#"
defaults: { host: 127.0.0.1, port: 1, every: 1s, timeout: 200ms, retries: 0 }
devices:
  - name: meter-2
    unit_id: 2
    registers:
      - { name: energy, kind: holding, address: 0, type: u32 }
      - { name: volts, kind: input, address: 10, type: u16 }
  - name: meter-3
    unit_id: 3
    registers:
      - { name: energy, kind: holding, address: 0, type: u32 }
  - name: silent
    unit_id: 1
    registers:
      - { name: energy, kind: holding, address: 0, type: u32 }
"#;

fn devices(yaml: &str) -> Vec<Device> {
    config::parse(yaml, "gateway.yaml").unwrap()
}

use common::start_sim as start;

fn fault(device: &str, action: FaultAction) -> SimFault {
    SimFault {
        device: device.into(),
        register: None,
        action,
    }
}

/// One poller per device, all on one endpoint (one connection), as the
/// service polls devices behind one gateway.
fn pollers(devices: &[Arc<Device>]) -> (Arc<Endpoint>, Vec<DevicePoller>) {
    let endpoint = Arc::new(Endpoint::new("127.0.0.1", devices[0].port));
    let pollers = devices
        .iter()
        .map(|d| DevicePoller::new(Arc::clone(d), Arc::clone(&endpoint)))
        .collect();
    (endpoint, pollers)
}

async fn poll_all(pollers: &mut [DevicePoller]) -> Vec<PollReport> {
    futures::future::join_all(pollers.iter_mut().map(DevicePoller::poll)).await
}

use common::assert_all_good as assert_correct;

fn details(report: &PollReport) -> Vec<String> {
    report
        .readings
        .iter()
        .map(|r| r.detail.clone().unwrap_or_default())
        .collect()
}

/// The timeouts in a row a demoted unit's detail names, checking its form:
/// `demoted after 3 timeouts; next try 12:00:04 UTC`.
fn demoted_after(detail: &str) -> u32 {
    let parsed = detail
        .strip_prefix("demoted after ")
        .and_then(|t| t.split_once(" timeouts; next try "))
        .and_then(|(n, time)| Some((n.parse().ok()?, time.strip_suffix(" UTC")?)));
    let Some((timeouts, time)) = parsed else {
        panic!("unexpected detail {detail:?}");
    };
    chrono::NaiveTime::parse_from_str(time, "%H:%M:%S")
        .unwrap_or_else(|e| panic!("{time:?} in {detail:?} is not HH:MM:SS: {e}"));
    timeouts
}

/// The gateway of `GATEWAY` with its unit 1 never answering, polled.
async fn silent_gateway() -> (
    Simulator,
    Vec<Arc<Device>>,
    Arc<Endpoint>,
    Vec<DevicePoller>,
) {
    let (sim, devs) = start(
        &devices(GATEWAY),
        vec![fault("silent", FaultAction::NoReply)],
    )
    .await;
    let (endpoint, pollers) = pollers(&devs);
    (sim, devs, endpoint, pollers)
}

#[tokio::test]
async fn a_silent_unit_behind_a_gateway_is_demoted_and_its_neighbours_keep_the_connection() {
    let (_sim, _, endpoint, mut pollers) = silent_gateway().await;
    for round in 0..3 {
        let reports = poll_all(&mut pollers).await;
        assert_correct(&reports[0]);
        assert_correct(&reports[1]);
        assert_eq!(
            details(&reports[2]),
            ["timeout after 200 ms"],
            "round {round}"
        );
    }
    let stats = endpoint.stats();
    assert_eq!(stats.demoted.load(Ordering::Relaxed), 1);
    // Demoted: not asked (no timeout to wait for), with when it will be.
    let requests = stats.requests.load(Ordering::Relaxed);
    let reports = poll_all(&mut pollers).await;
    assert_correct(&reports[0]);
    assert_correct(&reports[1]);
    assert_eq!(demoted_after(&details(&reports[2])[0]), 3);
    assert_eq!(reports[2].readings[0].quality, Quality::Bad);
    assert!(
        reports[2].latency < Duration::from_millis(100),
        "{:?}",
        reports[2].latency
    );
    assert_eq!(
        stats.requests.load(Ordering::Relaxed) - requests,
        3,
        "only the neighbours' three requests went out"
    );
    assert_eq!(
        stats.connects.load(Ordering::Relaxed),
        1,
        "the shared connection was re-opened"
    );
}

#[tokio::test]
async fn late_replies_are_recognised_by_their_transaction_and_never_taken_as_data() {
    // The silent unit answers 100 ms after the 200 ms timeout; the gateway
    // serves the neighbours' requests after it, so each late reply arrives
    // on the shared connection ahead of a neighbour's answer.
    let (_sim, devs) = start(
        &devices(GATEWAY),
        vec![fault(
            "silent",
            FaultAction::Delay(Duration::from_millis(300)),
        )],
    )
    .await;
    let (endpoint, mut pollers) = pollers(&devs);
    for _ in 0..3 {
        let reports = poll_all(&mut pollers).await;
        assert_correct(&reports[0]);
        assert_correct(&reports[1]);
        assert_eq!(details(&reports[2]), ["timeout after 200 ms"]);
    }
    let stats = endpoint.stats();
    assert!(
        stats.late_replies.load(Ordering::Relaxed) >= 2,
        "late replies seen: {}",
        stats.late_replies.load(Ordering::Relaxed)
    );
    assert_eq!(stats.connects.load(Ordering::Relaxed), 1);
}

/// The gateway back on its port, without faults. The old simulator's
/// listener closes when its aborted task is dropped, which the runtime does
/// soon but not at once.
async fn restart(devs: &[Arc<Device>]) -> Simulator {
    let devices: Vec<Device> = devs.iter().map(|d| (**d).clone()).collect();
    for _ in 0..100 {
        match Simulator::start(&devices, Bind::AsConfigured).await {
            Ok(sim) => return sim,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the old simulator still holds its port");
}

/// Polls until every device's readings are good, or `limit` passes;
/// returns how long it took.
async fn until_all_good(pollers: &mut [DevicePoller], limit: Duration) -> Duration {
    let clock = tokio::time::Instant::now();
    loop {
        let reports = poll_all(pollers).await;
        if reports
            .iter()
            .all(|r| r.readings.iter().all(|x| x.quality == Quality::Good))
        {
            return clock.elapsed();
        }
        assert!(
            clock.elapsed() < limit,
            "not all good after {limit:?}: {:?}",
            reports.iter().map(details).collect::<Vec<_>>()
        );
        // The next poll interval; what is awaited is the backoff's expiry.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn one_answer_restores_a_demoted_unit_when_its_backoff_expires() {
    let (sim, devs, endpoint, mut pollers) = silent_gateway().await;
    for _ in 0..3 {
        poll_all(&mut pollers).await;
    }
    let demoted_at = tokio::time::Instant::now();
    assert_eq!(endpoint.stats().demoted.load(Ordering::Relaxed), 1);
    // The unit comes back: the same gateway without the fault.
    drop(sim);
    let _sim = restart(&devs).await;
    until_all_good(&mut pollers, Duration::from_secs(3)).await;
    // The first backoff is 1 s ±20 %; its probe is the one answer.
    let took = demoted_at.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "restored after {took:?}"
    );
    assert_eq!(endpoint.stats().demoted.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_gateway_reboot_recovers_within_one_backoff_step_for_every_unit() {
    let (sim, devs) = start(&devices(GATEWAY), Vec::new()).await;
    let (endpoint, mut pollers) = pollers(&devs);
    for r in poll_all(&mut pollers).await {
        assert_correct(&r);
    }
    // Rebooting: the listener and the connection close, connects are refused.
    drop(sim);
    let reports = poll_all(&mut pollers).await;
    let refused = reports
        .iter()
        .flat_map(details)
        .filter(|d| d == "connect: connection refused");
    assert!(
        refused.count() > 0,
        "{:?}",
        reports.iter().map(details).collect::<Vec<_>>()
    );
    let _sim = restart(&devs).await;
    // One reconnect backoff step: 500 ms ±20 %, and a poll round.
    let took = until_all_good(&mut pollers, Duration::from_secs(3)).await;
    assert!(
        took < Duration::from_millis(900),
        "recovered after {took:?}"
    );
    assert_eq!(endpoint.stats().connects.load(Ordering::Relaxed), 2);
    assert_eq!(endpoint.stats().demoted.load(Ordering::Relaxed), 0);
}

/// A gateway that answers every request as `reply` builds it from the
/// request's 12 bytes; counts the connections it accepted.
async fn lying_gateway(
    reply: fn(&[u8; 12]) -> Vec<u8>,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut request = [0u8; 12];
                while stream.read_exact(&mut request).await.is_ok() {
                    if stream.write_all(&reply(&request)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

/// A correct answer of one register holding 7, for `request`.
fn one_register(request: &[u8; 12]) -> Vec<u8> {
    let mut r = request[..7].to_vec();
    r[5] = 5;
    r.extend_from_slice(&[request[7], 2, 0, 7]);
    r
}

/// The endpoint at `port` one request at a time, and pipelined.
fn both_paths(port: u16) -> [Endpoint; 2] {
    [
        Endpoint::new("127.0.0.1", port),
        Endpoint::new("127.0.0.1", port).with_max_in_flight(4),
    ]
}

async fn read_once(endpoint: &Endpoint) -> Result<regpoll::modbus::Words, ReadError> {
    let limits = regpoll::registry::RequestLimits {
        retries: 0,
        ..Default::default()
    };
    let mut session = endpoint.session().await;
    session
        .read(
            UnitId(4),
            RegisterKind::Holding,
            0,
            1,
            Duration::from_millis(300),
            &limits,
        )
        .await
        .1
}

#[tokio::test]
async fn an_answer_with_a_transaction_never_sent_drops_the_connection() {
    let (port, accepted) = lying_gateway(|req| {
        let mut r = one_register(req);
        // Half the id space away: never one of this connection's recent ids.
        r[0] ^= 0x80;
        r
    })
    .await;
    let mut connections = 0;
    for endpoint in both_paths(port) {
        for _ in 1..=2 {
            match read_once(&endpoint).await {
                Err(ReadError::Protocol(m)) => assert!(m.contains("which was never sent"), "{m}"),
                other => panic!("{other:?}"),
            }
            connections += 1;
            assert_eq!(
                accepted.load(Ordering::Relaxed),
                connections,
                "a new connection per refused answer"
            );
        }
    }
}

#[tokio::test]
async fn an_answer_for_the_right_transaction_from_the_wrong_unit_is_refused() {
    let (port, accepted) = lying_gateway(|req| {
        let mut r = one_register(req);
        r[6] = req[6] + 1;
        r
    })
    .await;
    for endpoint in both_paths(port) {
        match read_once(&endpoint).await {
            Err(ReadError::Protocol(m)) => {
                assert!(m.ends_with("from unit 5, expected unit 4"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
    // A gateway answering for the right unit is read, on both paths.
    let (port, _) = lying_gateway(one_register).await;
    for honest in both_paths(port) {
        assert_eq!(
            read_once(&honest).await,
            Ok(regpoll::modbus::Words::Registers(vec![7]))
        );
    }
}

/// A gateway of eight healthy meters and, when `with_silent`, a ninth unit
/// that never answers, all polled every 100 ms.
fn fleet_yaml(with_silent: bool) -> String {
    let mut yaml = String::from(
        "defaults: { host: 127.0.0.1, port: {A}, every: 100ms, timeout: 80ms, retries: 0 }\ndevices:\n",
    );
    for unit in 1..=8 {
        yaml.push_str(&format!(
            "  - {{ name: meter-{unit}, unit_id: {unit}, registers: [{{ name: energy, kind: holding, address: 0, type: u32 }}] }}\n"
        ));
    }
    if with_silent {
        yaml.push_str("  - { name: silent, unit_id: 9, registers: [{ name: energy, kind: holding, address: 0, type: u32 }] }\n");
    }
    yaml
}

async fn silent_fleet(
    with_silent: bool,
    settings: regpoll::app::Settings,
) -> (
    common::SimFixture,
    regpoll::app::Running,
    std::net::SocketAddr,
) {
    let faults = if with_silent {
        vec![fault("silent", FaultAction::NoReply)]
    } else {
        Vec::new()
    };
    let fixture = common::simulate_with_faults(&fleet_yaml(with_silent), &["{A}"], faults).await;
    let (running, addr) = common::start_with_api(&fixture, settings).await;
    (fixture, running, addr)
}

fn sqlite_settings(dir: &tempfile::TempDir) -> regpoll::app::Settings {
    regpoll::app::Settings {
        sqlite_path: dir.path().join("r.db"),
        ..Default::default()
    }
}

/// Waits (on updates, not by sleeping) until `done` holds for the latest
/// state of `device`.
async fn until_state(
    running: &regpoll::app::Running,
    device: &str,
    done: impl Fn(&regpoll::latest::memory::DeviceState) -> bool,
) -> regpoll::latest::memory::DeviceState {
    let mut updates = running.latest.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(d) = running.latest.device(device)
                && done(&d.state)
            {
                return d.state;
            }
            updates.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{device}: state not reached within 10 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_unit_shows_on_the_api_redis_and_metrics() {
    use redis::AsyncCommands as _;
    let (redis_url, prefix) = common::redis();
    let dir = tempfile::tempdir().unwrap();
    let settings = regpoll::app::Settings {
        redis_url: Some(redis_url.clone()),
        redis_prefix: prefix.clone(),
        ..sqlite_settings(&dir)
    };
    let (fixture, running, http) = silent_fleet(true, settings).await;
    let state = until_state(&running, "silent", |s| s.demoted).await;
    assert!(!state.up);
    assert_eq!(demoted_after(state.error.as_deref().unwrap()), 3);

    let devices = common::http_get(http, "/api/devices").await.json();
    let row = |name: &str| {
        devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("silent")["state"], "demoted", "{devices}");
    // Later probes that fail count on: 3, then 4, …
    assert!(demoted_after(row("silent")["last_error"].as_str().unwrap()) >= 3);
    assert_eq!(row("meter-1")["state"], "up");
    let fleet = common::http_get(http, "/api/fleet").await.json();
    assert_eq!(fleet["summary"]["states"]["demoted"], 1, "{fleet}");

    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}:device:silent");
    let hash = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let h: std::collections::HashMap<String, String> = con.hgetall(&key).await.unwrap();
            if h.get("state").map(String::as_str) == Some("demoted") {
                return h;
            }
            // Redis is written after each poll; the next one is 100 ms away.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("Redis never showed the unit demoted");
    assert!(demoted_after(&hash["error"]) >= 3);

    let metrics = common::http_get(http, "/metrics").await.body;
    let port = fixture.devices[0].port;
    let gauge = format!("regpoll_modbus_demoted_units{{endpoint=\"127.0.0.1:{port}\"}} 1");
    assert!(metrics.contains(&gauge), "no `{gauge}` in /metrics");
    // One connection, or two when the silent unit happened to be asked
    // first: alone, its timeout cannot be told from a dead gateway's.
    let connects = format!("regpoll_modbus_connects_total{{endpoint=\"127.0.0.1:{port}\"}} ");
    let n: u32 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&connects))
        .unwrap_or_else(|| panic!("no `{connects}` in /metrics"))
        .parse()
        .unwrap();
    assert!((1..=2).contains(&n), "{n} connections");
    running.shutdown().await.unwrap();
}

/// The schedule lateness the service records, p99, over 30 polls of every
/// device, and the ticks skipped because a poll was still running.
async fn lateness_p99(with_silent: bool) -> (Duration, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (_fixture, running, _) = silent_fleet(with_silent, sqlite_settings(&dir)).await;
    common::wait_for_polls(&running, 30).await;
    let p99 = running.lateness(&[0.99]).unwrap()[0];
    let overruns = running.overruns();
    running.shutdown().await.unwrap();
    (p99, overruns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_units_keep_their_schedule() {
    let (without, _) = lateness_p99(false).await;
    let (with, overruns) = lateness_p99(true).await;
    // Below 5 ms the scheduler's own noise on a shared machine dominates.
    let bound = 2 * without.max(Duration::from_millis(5));
    eprintln!("lateness p99: {without:?} without a silent unit, {with:?} with one");
    assert!(
        with <= bound,
        "lateness p99 {with:?} with a silent unit, {without:?} without it"
    );
    // Lateness is taken when a poll wakes; a poll that waited for the
    // connection behind the silent unit so long that it overran its
    // interval shows as a skipped tick instead. None may be skipped.
    assert_eq!(overruns, 0, "ticks skipped with a silent unit");
}

/// A gateway that takes several transactions: it gathers the requests that
/// arrive within 300 ms of the first, records how many were outstanding
/// together, and answers them last first, each with one register holding
/// its unit id × 100; unit 9 never answers.
async fn reordering_gateway() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&most);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                loop {
                    let mut batch = vec![[0u8; 12]];
                    if stream.read_exact(&mut batch[0]).await.is_err() {
                        return;
                    }
                    let window = tokio::time::sleep(Duration::from_millis(300));
                    tokio::pin!(window);
                    loop {
                        let mut next = [0u8; 12];
                        tokio::select! {
                            read = stream.read_exact(&mut next) => {
                                if read.is_err() { return; }
                                batch.push(next);
                            }
                            () = &mut window => break,
                        }
                    }
                    seen.fetch_max(batch.len(), Ordering::Relaxed);
                    for req in batch.iter().rev().filter(|r| r[6] != 9) {
                        let mut answer = one_register(req);
                        let value = u16::from(req[6]) * 100;
                        answer[9..11].copy_from_slice(&value.to_be_bytes());
                        if stream.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, most)
}

/// Reads one register of each unit at once through `endpoint`.
async fn read_units_at_once(
    endpoint: &Endpoint,
    units: &[u8],
) -> Vec<Result<regpoll::modbus::Words, ReadError>> {
    let limits = regpoll::registry::RequestLimits {
        retries: 0,
        ..Default::default()
    };
    futures::future::join_all(units.iter().map(|&unit| async move {
        let mut session = endpoint.session().await;
        session
            .read(
                UnitId(unit),
                RegisterKind::Holding,
                0,
                1,
                Duration::from_millis(800),
                &limits,
            )
            .await
            .1
    }))
    .await
}

#[tokio::test]
async fn with_max_in_flight_requests_to_different_units_overlap_and_answers_are_matched_out_of_order()
 {
    let (port, most) = reordering_gateway().await;
    let endpoint = Endpoint::new("127.0.0.1", port).with_max_in_flight(3);
    let answers = read_units_at_once(&endpoint, &[1, 2, 9]).await;
    assert_eq!(
        most.load(Ordering::Relaxed),
        3,
        "all three were outstanding together"
    );
    // Answered 2 then 1; each value is its own unit's.
    assert_eq!(answers[0], Ok(regpoll::modbus::Words::Registers(vec![100])));
    assert_eq!(answers[1], Ok(regpoll::modbus::Words::Registers(vec![200])));
    assert_eq!(
        answers[2],
        Err(ReadError::Timeout(Duration::from_millis(800)))
    );
    // Unit 9's silence did not cost the others their connection.
    let again = read_units_at_once(&endpoint, &[2]).await;
    assert_eq!(again[0], Ok(regpoll::modbus::Words::Registers(vec![200])));
    assert_eq!(endpoint.stats().connects.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn with_max_in_flight_at_its_default_of_one_requests_wait_for_each_others_answers() {
    let (port, most) = reordering_gateway().await;
    let endpoint = Endpoint::new("127.0.0.1", port);
    let answers = read_units_at_once(&endpoint, &[1, 2]).await;
    assert_eq!(most.load(Ordering::Relaxed), 1);
    assert_eq!(answers[0], Ok(regpoll::modbus::Words::Registers(vec![100])));
    assert_eq!(answers[1], Ok(regpoll::modbus::Words::Registers(vec![200])));
}
