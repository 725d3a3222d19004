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

async fn poll_all(pollers: &[DevicePoller]) -> Vec<PollReport> {
    futures::future::join_all(pollers.iter().map(DevicePoller::poll)).await
}

use common::assert_all_good as assert_correct;

fn details(report: &PollReport) -> Vec<String> {
    report
        .readings
        .iter()
        .map(|r| r.detail.clone().unwrap_or_default())
        .collect()
}

/// The detail of a demoted unit's readings, e.g.
/// `demoted after 3 timeouts; next try 12:00:04 UTC`.
fn assert_demoted_detail(detail: &str, timeouts: u32) {
    let prefix = format!("demoted after {timeouts} timeouts; next try ");
    let time = detail
        .strip_prefix(&prefix)
        .and_then(|t| t.strip_suffix(" UTC"))
        .unwrap_or_else(|| panic!("unexpected detail {detail:?}"));
    chrono::NaiveTime::parse_from_str(time, "%H:%M:%S")
        .unwrap_or_else(|e| panic!("{time:?} in {detail:?} is not HH:MM:SS: {e}"));
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
    let (_sim, _, endpoint, pollers) = silent_gateway().await;
    for round in 0..3 {
        let reports = poll_all(&pollers).await;
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
    let reports = poll_all(&pollers).await;
    assert_correct(&reports[0]);
    assert_correct(&reports[1]);
    assert_demoted_detail(&details(&reports[2])[0], 3);
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
    let (endpoint, pollers) = pollers(&devs);
    for _ in 0..3 {
        let reports = poll_all(&pollers).await;
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
async fn until_all_good(pollers: &[DevicePoller], limit: Duration) -> Duration {
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
    let (sim, devs, endpoint, pollers) = silent_gateway().await;
    for _ in 0..3 {
        poll_all(&pollers).await;
    }
    let demoted_at = tokio::time::Instant::now();
    assert_eq!(endpoint.stats().demoted.load(Ordering::Relaxed), 1);
    // The unit comes back: the same gateway without the fault.
    drop(sim);
    let _sim = restart(&devs).await;
    until_all_good(&pollers, Duration::from_secs(3)).await;
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
    let (endpoint, pollers) = pollers(&devs);
    for r in poll_all(&pollers).await {
        assert_correct(&r);
    }
    // Rebooting: the listener and the connection close, connects are refused.
    drop(sim);
    let reports = poll_all(&pollers).await;
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
    let took = until_all_good(&pollers, Duration::from_secs(3)).await;
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

async fn read_once(port: u16, endpoint: &Endpoint) -> Result<regpoll::modbus::Words, ReadError> {
    let _ = port;
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
    let endpoint = Endpoint::new("127.0.0.1", port);
    for n in 1..=2 {
        match read_once(port, &endpoint).await {
            Err(ReadError::Protocol(m)) => assert!(m.contains("which was never sent"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            n,
            "a new connection per refused answer"
        );
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
    let endpoint = Endpoint::new("127.0.0.1", port);
    match read_once(port, &endpoint).await {
        Err(ReadError::Protocol(m)) => assert!(m.ends_with("from unit 5, expected unit 4"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The honest answer is read; the same gateway answering right works.
    let (port, _) = lying_gateway(one_register).await;
    let honest = Endpoint::new("127.0.0.1", port);
    assert_eq!(
        read_once(port, &honest).await,
        Ok(regpoll::modbus::Words::Registers(vec![7]))
    );
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
}
