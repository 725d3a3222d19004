//! A registry change reaches every instance of a cluster: a device added by
//! a sync is polled by exactly one of them, a deactivated one by none (its
//! owner marks it inactive in Redis), and Redis holds the latest values of
//! every device whichever instance polls it.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use redis::AsyncCommands as _;
use regpoll::app::{DeviceSource, Running, Settings};
use regpoll::cluster::ClusterSettings;
use regpoll::db::Db;
use regpoll::registry::Device;
use regpoll::sim::{Bind, Simulator};

fn settings(url: &str, redis: (&str, &str), id: &str, dir: &std::path::Path) -> Settings {
    Settings {
        database_url: Some(url.to_string()),
        redis_url: Some(redis.0.to_string()),
        redis_prefix: redis.1.to_string(),
        data_dir: Some(dir.to_path_buf()),
        reload_interval: Duration::from_millis(500),
        cluster: Some(ClusterSettings {
            instance_id: id.to_string(),
            lease: Duration::from_secs(2),
            heartbeat: Duration::from_millis(200),
            fence_margin: Duration::from_millis(500),
            address: None,
        }),
        ..Settings::default()
    }
}

fn polled(r: &Running) -> BTreeSet<String> {
    r.devices().iter().map(|d| d.name.clone()).collect()
}

/// Waits until the two instances poll `expected` between them, each device
/// by one.
async fn until_split(a: &Running, b: &Running, expected: &BTreeSet<String>) {
    let start = tokio::time::Instant::now();
    loop {
        let (pa, pb) = (polled(a), polled(b));
        let union: BTreeSet<String> = pa.union(&pb).cloned().collect();
        if &union == expected && pa.is_disjoint(&pb) && !pa.is_empty() && !pb.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not split within 10 s: a polls {pa:?}, b polls {pb:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every device of `devices` is `up` in Redis (none marked inactive).
async fn assert_up(con: &mut redis::aio::MultiplexedConnection, prefix: &str, devices: &[Device]) {
    for d in devices {
        let state = device_hash(con, prefix, "device", &d.name).await;
        assert_eq!(
            state.get("state").map(String::as_str),
            Some("up"),
            "{}",
            d.name
        );
    }
}

async fn device_hash(
    con: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    kind: &str,
    device: &str,
) -> HashMap<String, String> {
    con.hgetall(format!("{prefix}:{kind}:{device}"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_changes_reach_every_instance_and_redis_follows_the_owner() {
    let url = common::fresh_postgres().await;
    let (redis_url, prefix) = common::redis();
    let staged = regpoll::config::parse(
        &common::gateways_yaml(5, 2, 31000, "300ms", "200ms"),
        "cluster.yaml",
    )
    .unwrap();
    let sim = Simulator::start(&staged, Bind::Ephemeral).await.unwrap();
    let all: Vec<Device> = staged
        .iter()
        .map(|d| Device {
            port: sim.addr_of(d).unwrap().port(),
            ..d.clone()
        })
        .collect();
    let names = |devices: &[Device]| -> BTreeSet<String> {
        devices.iter().map(|d| d.name.clone()).collect()
    };
    // Four endpoints at first; the fifth comes with a sync.
    let first: Vec<Device> = all
        .iter()
        .filter(|d| !d.name.starts_with("e4"))
        .cloned()
        .collect();

    // The ports, hence the links, differ from run to run: name the second
    // instance so that rendezvous gives each instance some of the first
    // four links (and so some devices to each).
    let first_links: BTreeSet<String> = first.iter().map(regpoll::cluster::link_of).collect();
    let second = (0..)
        .map(|n| format!("b{n}"))
        .find(|id| {
            let ids = ["a".to_string(), id.clone()];
            let share = first_links
                .iter()
                .filter(|l| regpoll::cluster::owner_of(l, &ids) == Some("a"))
                .count();
            (1..first_links.len()).contains(&share)
        })
        .unwrap();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let redis = (redis_url.as_str(), prefix.as_str());
    let a = regpoll::app::start(
        &settings(&url, redis, "a", dirs.0.path()),
        DeviceSource::Devices(first.clone()),
    )
    .await
    .unwrap();
    let b = regpoll::app::start(
        &settings(&url, redis, &second, dirs.1.path()),
        DeviceSource::Registry,
    )
    .await
    .unwrap();
    until_split(&a, &b, &names(&first)).await;

    // Redis has every device's latest value, from whichever instance polls it.
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    for d in &first {
        let latest = device_hash(&mut con, &prefix, "latest", &d.name).await;
        assert!(latest.contains_key("v"), "{}: {latest:?}", d.name);
    }
    assert_up(&mut con, &prefix, &first).await;

    // A sync made elsewhere (another instance's file, or an operator's
    // `devices sync`) adds an endpoint: exactly one instance polls it.
    let db = Db::postgres(&url).await.unwrap();
    db.sync_devices(&all).await.unwrap();
    until_split(&a, &b, &names(&all)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    for name in ["e4-u1", "e4-u2"] {
        let latest = device_hash(&mut con, &prefix, "latest", name).await;
        assert!(latest.contains_key("v"), "{name}: {latest:?}");
    }

    // A device deactivated: nobody polls it, and its owner marks it
    // inactive (another instance never polled it, so must not).
    let gone = "e0-u1";
    let kept: Vec<Device> = all.iter().filter(|d| d.name != gone).cloned().collect();
    db.sync_devices(&kept).await.unwrap();
    until_split(&a, &b, &names(&kept)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = device_hash(&mut con, &prefix, "device", gone).await;
    assert_eq!(
        state.get("state").map(String::as_str),
        Some("inactive"),
        "{state:?}"
    );
    assert!(
        device_hash(&mut con, &prefix, "latest", gone)
            .await
            .is_empty()
    );
    // A device that moved to the other instance is not marked inactive: the
    // states of every kept device are still up.
    assert_up(&mut con, &prefix, &kept).await;

    a.shutdown().await.unwrap();
    // The survivor takes the leaver's devices over at once (a planned
    // handover), and none of them is marked inactive on the way.
    let start = tokio::time::Instant::now();
    while polled(&b) != names(&kept) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "b polls {:?}",
            polled(&b)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_up(&mut con, &prefix, &kept).await;
    b.shutdown().await.unwrap();
}
