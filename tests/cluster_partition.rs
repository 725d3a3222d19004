//! A clustered instance cut off from the database (but not from its
//! devices) fences itself before its lease can expire, so the instance
//! that takes its endpoints over never polls a device at the same time;
//! when the database is back it rejoins and gets its share back. Both
//! instances run in this process; the cut one reaches PostgreSQL through a
//! proxy that stops forwarding, as a lost network does (no reset, only
//! silence).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use regpoll::app::{DeviceSource, Running, Settings};
use regpoll::cluster::{ClusterSettings, link_of, owner_of};
use regpoll::sim::{Bind, RequestLog, Simulator};

const LEASE: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_millis(200);
const MARGIN: Duration = Duration::from_millis(500);

/// A TCP proxy to PostgreSQL that can go silent: while cut, it forwards
/// nothing either way and accepts connections it never serves; healed, it
/// closes what it held (the clients reconnect) and forwards again.
struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(false);
        let state = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let state = state.subscribe();
                tokio::spawn(pipe(client, upstream, state));
            }
        });
        Proxy { addr, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Forwards one connection until it ends, or until the proxy is cut: then
/// it holds both sockets silent until healed, and closes them.
async fn pipe(mut client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    let silent = async |cut: &mut watch::Receiver<bool>| {
        let _ = cut.wait_for(|c| !*c).await;
    };
    if *cut.borrow() {
        silent(&mut cut).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut a, mut b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        // (bytes, from the client) or None: cut.
        let got = tokio::select! {
            n = client.read(&mut a) => Some((n, true)),
            n = server.read(&mut b) => Some((n, false)),
            _ = cut.wait_for(|c| *c) => None,
        };
        let (n, from_client) = match got {
            Some((Ok(n), from_client)) if n > 0 => (n, from_client),
            Some(_) => return,
            None => {
                silent(&mut cut).await;
                return;
            }
        };
        if *cut.borrow() {
            silent(&mut cut).await;
            return;
        }
        let sent = if from_client {
            server.write_all(&a[..n]).await
        } else {
            client.write_all(&b[..n]).await
        };
        if sent.is_err() {
            return;
        }
    }
}

fn settings(url: &str, id: &str, data_dir: &std::path::Path) -> Settings {
    Settings {
        database_url: Some(url.to_string()),
        data_dir: Some(data_dir.to_path_buf()),
        database_retry_max: Duration::from_millis(500),
        cluster: Some(ClusterSettings {
            instance_id: id.to_string(),
            lease: LEASE,
            heartbeat: HEARTBEAT,
            fence_margin: MARGIN,
            address: None,
        }),
        ..Settings::default()
    }
}

async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn links_owned(r: &Running) -> usize {
    r.cluster().map_or(0, |c| c.links_owned)
}

/// A connection and the times of its first and last request.
type Span = (u64, DateTime<Utc>, DateTime<Utc>);

/// The requests each connection sent to each endpoint, by first request.
fn spans(log: &RequestLog) -> BTreeMap<String, Vec<Span>> {
    let mut by: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for r in log.entries() {
        let spans = by.entry(r.endpoint.to_string()).or_default();
        match spans.iter_mut().find(|(c, _, _)| *c == r.connection) {
            Some(span) => {
                span.1 = span.1.min(r.at);
                span.2 = span.2.max(r.at);
            }
            None => spans.push((r.connection, r.at, r.at)),
        }
    }
    for spans in by.values_mut() {
        spans.sort_by_key(|(_, first, _)| *first);
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_the_database_stops_before_its_endpoints_are_taken_over() {
    let url = common::fresh_postgres().await;
    let pg: SocketAddr = {
        let u = url::Url::parse(&url).unwrap();
        format!("{}:{}", u.host_str().unwrap(), u.port().unwrap_or(5432))
            .parse()
            .unwrap()
    };
    let proxy = Proxy::start(pg).await;
    let mut via_proxy = url::Url::parse(&url).unwrap();
    via_proxy.set_port(Some(proxy.addr.port())).unwrap();

    let devices = regpoll::config::parse(
        &common::gateways_yaml(8, 2, 30000, "200ms", "150ms"),
        "cluster.yaml",
    )
    .unwrap();
    let log = RequestLog::new(1_000_000);
    let sim = Simulator::start_with_log(&devices, Bind::Ephemeral, Vec::new(), Arc::clone(&log))
        .await
        .unwrap();
    let devices: Vec<_> = devices
        .iter()
        .map(|d| regpoll::registry::Device {
            port: sim.addr_of(d).unwrap().port(),
            ..d.clone()
        })
        .collect();
    // Both instances must own something for the cut to mean anything.
    let ids = ["cut".to_string(), "kept".to_string()];
    let links: std::collections::BTreeSet<String> = devices.iter().map(link_of).collect();
    let cut_share = links
        .iter()
        .filter(|l| owner_of(l, &ids) == Some("cut"))
        .count();
    assert!(
        (1..links.len()).contains(&cut_share),
        "rendezvous gives `cut` {cut_share} of {} links; pick other ids",
        links.len()
    );

    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let kept = regpoll::app::start(
        &settings(&url, "kept", dirs.0.path()),
        DeviceSource::Devices(devices.clone()),
    )
    .await
    .unwrap();
    let cut = regpoll::app::start(
        &settings(via_proxy.as_str(), "cut", dirs.1.path()),
        DeviceSource::Registry,
    )
    .await
    .unwrap();
    until(
        Duration::from_secs(10),
        "the two instances share the links",
        || links_owned(&cut) == cut_share && links_owned(&kept) == links.len() - cut_share,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    let cut_at = Utc::now();
    proxy.set_cut(true);
    // It stops by its own deadline: at most a lease less the margin after
    // its last renewal, which was at most a heartbeat before the cut.
    until(LEASE, "the cut instance fences itself", || {
        cut.cluster().is_some_and(|c| c.fenced)
    })
    .await;
    let fenced_after = Utc::now() - cut_at;
    until(
        LEASE + HEARTBEAT * 3 + Duration::from_secs(1),
        "the other instance takes every link over",
        || links_owned(&kept) == links.len(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Every endpoint whose connection changed after the cut: the old one's
    // last request came before the new one's first, by at least the margin
    // (the old owner stops a margin before anyone may take over).
    let before_heal = spans(&log);
    let mut moved = 0;
    for (endpoint, conns) in &before_heal {
        for pair in conns.windows(2) {
            let ((old, _, old_last), (new, new_first, _)) = (pair[0], pair[1]);
            assert!(
                new_first > old_last,
                "{endpoint}: connection {new} began at {new_first} while {old} was still polling until {old_last}"
            );
            if old_last > cut_at - chrono::Duration::milliseconds(300) {
                let quiet = (new_first - old_last).to_std().unwrap();
                assert!(
                    quiet >= MARGIN - Duration::from_millis(100),
                    "{endpoint}: only {quiet:?} between the fenced owner's last request and the new owner's first"
                );
                moved += 1;
            }
        }
    }
    assert_eq!(
        moved, cut_share,
        "each of the cut instance's links moved once: {before_heal:#?}"
    );
    assert!(
        cut.stats().polls > 0 && cut.cluster().unwrap().links_owned == 0,
        "the fenced instance owns nothing"
    );

    // Healed: it rejoins as a new member and gets its share back from the
    // other through a planned handover.
    proxy.set_cut(false);
    until(
        Duration::from_secs(10),
        "the cut instance rejoins and gets its links back",
        || links_owned(&cut) == cut_share && links_owned(&kept) == links.len() - cut_share,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    for (endpoint, conns) in spans(&log) {
        for pair in conns.windows(2) {
            assert!(
                pair[1].1 > pair[0].2,
                "{endpoint}: connections {} and {} overlap: {pair:?}",
                pair[0].0,
                pair[1].0
            );
        }
    }
    assert_eq!(log.dropped(), 0);
    println!("fenced {fenced_after} after the cut; {moved} links moved and came back");
    cut.shutdown().await.unwrap();
    kept.shutdown().await.unwrap();
}

/// Two processes cannot share a data dir: the second would replay the
/// first's spool.
#[tokio::test]
async fn a_second_service_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = |name: &str| Settings {
        sqlite_path: dir.path().join(name),
        data_dir: Some(dir.path().join("data")),
        ..Settings::default()
    };
    let first = regpoll::app::start(&sqlite("a.db"), DeviceSource::Registry)
        .await
        .unwrap();
    let e = regpoll::app::start(&sqlite("b.db"), DeviceSource::Registry)
        .await
        .err()
        .expect("the data dir is taken");
    let text = format!("{e:#}");
    assert!(
        text.contains("another regpoll process uses the data dir")
            && text.contains("give each process its own --data-dir"),
        "{text}"
    );
    first.shutdown().await.unwrap();
    // Free again once the first has stopped.
    regpoll::app::start(&sqlite("b.db"), DeviceSource::Registry)
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
}
