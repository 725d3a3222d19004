use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::connection::{self as resp, Target};
use super::*;
use crate::latest::contract::*;
use crate::reading::{PollReport, Quality, Reading, Value};

fn report() -> PollReport {
    let yaml = "devices:\n  - name: boiler-1\n    host: 127.0.0.1\n    port: 502\n    registers:\n      - { name: t, kind: holding, address: 0, type: f32, unit: \"°C\" }\n      - { name: on, kind: coil, address: 0 }\n      - { name: sn, kind: holding, address: 10, type: string, length: 2 }\n      - { name: p, kind: holding, address: 20 }\n";
    let device = Arc::new(crate::config::parse(yaml, "t").unwrap().remove(0));
    let ts = DateTime::parse_from_rfc3339("2026-11-23T10:00:00.1239Z")
        .unwrap()
        .with_timezone(&Utc);
    let reading = |index, value, quality, detail: Option<&str>| Reading {
        index,
        ts,
        value,
        quality,
        detail: detail.map(str::to_string),
    };
    PollReport {
        device,
        started: ts,
        latency: Duration::from_micros(1500),
        error: Some("exception 2 (illegal data address)".into()),
        reachable: true,
        demoted: false,
        readings: vec![
            reading(0, Value::Number(21.5), Quality::Good, None),
            reading(1, Value::Bool(true), Quality::Good, None),
            reading(
                2,
                Value::Text("A\"\n".into()),
                Quality::Uncertain,
                Some("odd"),
            ),
            reading(
                3,
                Value::None,
                Quality::Bad,
                Some("exception 2 (illegal data address)"),
            ),
        ],
    }
}

#[test]
fn timestamps_are_written_as_rfc3339_writes_them() {
    for text in [
        "2026-11-23T10:00:00.1239Z",
        "1999-12-31T23:59:59.999999Z",
        "2024-02-29T00:00:00Z",
        "0001-01-01T00:00:00Z",
    ] {
        let ts = DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc);
        let mut out = Vec::new();
        push_rfc3339(&mut out, ts);
        assert_eq!(String::from_utf8(out).unwrap(), rfc3339(ts));
    }
}

#[test]
fn the_byte_writer_matches_the_json_contract() {
    let report = report();
    for r in &report.readings {
        let mut out = Vec::new();
        push_latest_json(&mut out, &report, r, &mut None);
        let want = latest_json(
            &r.value,
            r.quality,
            r.ts,
            report.register(r).unit.as_deref(),
            r.detail.as_deref(),
        );
        assert_eq!(String::from_utf8(out).unwrap(), want.to_string());
    }
}

/// The commands of a packed pipeline, each as its arguments.
fn unpack(packed: &[u8]) -> Vec<Vec<String>> {
    fn line<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
        let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let (l, r) = rest.split_at(end);
        *rest = &r[2..];
        l
    }
    let number = |l: &[u8], tag: u8| -> usize {
        assert_eq!(l[0], tag, "{}", String::from_utf8_lossy(l));
        std::str::from_utf8(&l[1..]).unwrap().parse().unwrap()
    };
    let mut rest = packed;
    let mut cmds = Vec::new();
    while !rest.is_empty() {
        let args = number(line(&mut rest), b'*');
        let mut cmd = Vec::new();
        for _ in 0..args {
            let len = number(line(&mut rest), b'$');
            cmd.push(String::from_utf8(rest[..len].to_vec()).unwrap());
            assert_eq!(&rest[len..len + 2], b"\r\n");
            rest = &rest[len + 2..];
        }
        cmds.push(cmd);
    }
    cmds
}

#[test]
fn a_poll_is_its_hashes_and_message_and_an_error_is_set_with_the_state() {
    let mut report = report();
    let settings = RedisSettings {
        prefix: "p".into(),
        ttl: None,
        ..RedisSettings::default()
    };
    let cmds = unpack(&packed_report(&settings, &report));
    let names: Vec<&str> = cmds.iter().map(|c| c[0].as_str()).collect();
    assert_eq!(names, ["HSET", "HSET", "PUBLISH"]);
    assert_eq!(cmds[0][1], "p:latest:boiler-1");
    let fields: Vec<&str> = cmds[0][2..].iter().step_by(2).map(String::as_str).collect();
    assert_eq!(fields, ["t", "on", "sn", "p"]);
    for (r, json) in report.readings.iter().zip(cmds[0][3..].iter().step_by(2)) {
        let mut want = Vec::new();
        push_latest_json(&mut want, &report, r, &mut None);
        assert_eq!(json.as_bytes(), want);
    }
    assert_eq!(
        cmds[1],
        [
            "HSET",
            "p:device:boiler-1",
            "state",
            "up",
            "last_poll",
            "2026-11-23T10:00:00.123Z",
            "latency_ms",
            "1.500",
            "last_success",
            "2026-11-23T10:00:00.123Z",
            "error",
            "exception 2 (illegal data address)"
        ]
    );
    assert_eq!(cmds[2][1], "p:updates:boiler-1");

    // A poll without an error clears the last one's; one that reached
    // nothing is down and has no last_success.
    report.error = None;
    report.reachable = false;
    let settings = RedisSettings {
        prefix: "p".into(),
        ttl: Some(Duration::from_secs(90)),
        ..RedisSettings::default()
    };
    let cmds = unpack(&packed_report(&settings, &report));
    assert_eq!(cmds[1][2..4], ["state", "down"]);
    assert_eq!(cmds[1].len(), 8, "{:?}", cmds[1]);
    assert_eq!(cmds[2], ["HDEL", "p:device:boiler-1", "error"]);
    assert_eq!(cmds[3], ["EXPIRE", "p:latest:boiler-1", "90"]);
    assert_eq!(cmds[4], ["EXPIRE", "p:device:boiler-1", "90"]);
    assert_eq!(cmds[5][0], "PUBLISH");
    assert_eq!(cmds.len(), 6);
}

#[test]
fn a_tenant_devices_keys_and_channel_all_carry_its_tenant() {
    let mut report = report();
    let mut device = crate::registry::Device::clone(&report.device);
    device.tenant = Some(crate::registry::Tenant::parse("acme").unwrap());
    report.device = Arc::new(device);
    report.error = None;
    let settings = RedisSettings {
        prefix: "p".into(),
        ttl: Some(Duration::from_secs(90)),
        ..RedisSettings::default()
    };
    let cmds = unpack(&packed_report(&settings, &report));
    let keys: Vec<&str> = cmds.iter().map(|c| c[1].as_str()).collect();
    assert_eq!(
        keys,
        [
            "p:acme:latest:boiler-1",
            "p:acme:device:boiler-1",
            "p:acme:device:boiler-1",
            "p:acme:latest:boiler-1",
            "p:acme:device:boiler-1",
            "p:acme:updates:boiler-1",
        ]
    );
}

#[test]
fn registry_changes_of_a_tenant_device_touch_only_its_tenants_keys() {
    use crate::latest::notice::{Notice, Stopped};
    use crate::registry::Tenant;
    let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let acme = Some(Tenant::parse("acme").unwrap());
    let settings = RedisSettings {
        prefix: "p".into(),
        ttl: Some(Duration::from_secs(90)),
        ..RedisSettings::default()
    };
    let commands_of = |notice: Notice| {
        let mut out = super::connection::Commands::default();
        super::commands::add_notice(&mut out, &settings, &notice);
        unpack(&out.into_bytes())
    };
    let removed = commands_of(Notice::RegistersRemoved {
        device: "d".into(),
        tenant: acme.clone(),
        registers: vec!["t".into()],
        at,
    });
    assert_eq!(removed[0], ["HDEL", "p:acme:latest:d", "t"]);
    assert_eq!(removed[1][..2], ["PUBLISH", "p:acme:updates:d"]);
    let stopped = commands_of(Notice::DeviceStopped {
        device: "d".into(),
        tenant: acme.clone(),
        state: Stopped::Inactive,
        reason: None,
        at,
    });
    let keys: Vec<&str> = stopped.iter().map(|c| c[1].as_str()).collect();
    assert_eq!(
        keys,
        [
            "p:acme:latest:d",
            "p:acme:device:d",
            "p:acme:device:d",
            "p:acme:device:d",
            "p:acme:updates:d"
        ]
    );
    // A move deletes the keys where the device was, and says nothing on
    // the old tenant's channel.
    let moved = commands_of(Notice::TenantChanged {
        device: "d".into(),
        from: acme,
    });
    assert_eq!(moved, [["DEL", "p:acme:latest:d", "p:acme:device:d"]]);
    let moved = commands_of(Notice::TenantChanged {
        device: "d".into(),
        from: None,
    });
    assert_eq!(moved, [["DEL", "p:latest:d", "p:device:d"]]);
}

#[test]
fn a_pipeline_carries_the_hashes_and_the_update_message() {
    let report = report();
    let settings = RedisSettings {
        prefix: "p".into(),
        ttl: Some(Duration::from_secs(60)),
        ..RedisSettings::default()
    };
    let packed = String::from_utf8_lossy(&packed_report(&settings, &report)).into_owned();
    assert!(packed.contains("p:latest:boiler-1"));
    assert!(packed.contains("EXPIRE"));
    let message = packed
        .split("\r\n")
        .find(|l| l.starts_with("{\"device\""))
        .expect("update message");
    let parsed: serde_json::Value = serde_json::from_str(message).unwrap();
    assert_eq!(parsed["device"], "boiler-1");
    assert_eq!(parsed["ts"], "2026-11-23T10:00:00.123Z");
    assert_eq!(parsed["state"], "up");
    assert_eq!(parsed["latency_ms"], 1.5);
    assert_eq!(parsed["error"], "exception 2 (illegal data address)");
    assert_eq!(parsed["values"]["t"]["value"], 21.5);
    assert_eq!(parsed["values"]["t"]["unit"], "°C");
    assert_eq!(parsed["values"]["sn"]["value"], "A\"\n");
    assert_eq!(
        parsed["values"]["p"]["detail"],
        "exception 2 (illegal data address)"
    );
    let keys: Vec<&String> = parsed.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["device", "ts", "state", "latency_ms", "error", "values"]
    );
}

fn report_for(device: &str) -> Arc<PollReport> {
    let mut r = report();
    let mut d = (*r.device).clone();
    d.name = device.into();
    r.device = Arc::new(d);
    Arc::new(r)
}

/// A stand-in for Redis on a free port: it answers every command `:1`,
/// or a WRONGTYPE error for keys with "wrongtype" in them, except that
/// its first connection reads and never answers when `mute_first`. It
/// keeps each connection's commands.
async fn fake_redis(mute_first: bool) -> (String, Arc<std::sync::Mutex<Vec<Vec<Vec<String>>>>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        for n in 0.. {
            let (mut s, _) = listener.accept().await.unwrap();
            let log = Arc::clone(&log);
            let conn = {
                let mut l = log.lock().unwrap();
                l.push(Vec::new());
                l.len() - 1
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut answers = Vec::new();
                    while let Some((len, _)) = resp::next_reply(&buf).unwrap() {
                        let cmd = unpack(&buf[..len]).remove(0);
                        answers.extend_from_slice(if cmd.iter().any(|a| a.contains("wrongtype")) {
                            &b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"[..]
                        } else {
                            b":1\r\n"
                        });
                        log.lock().unwrap()[conn].push(cmd);
                        buf.drain(..len);
                    }
                    if !(mute_first && n == 0) {
                        s.write_all(&answers).await.unwrap();
                    }
                }
            });
        }
    });
    (url, seen)
}

fn start_writer(url: &str) -> (Arc<Coalescer>, Arc<RedisStats>, tokio::task::JoinHandle<()>) {
    let queue = Arc::new(Coalescer::default());
    let stats = Arc::new(RedisStats::default());
    let settings = RedisSettings {
        prefix: "p".into(),
        ttl: None,
        ..RedisSettings::default()
    };
    let task = tokio::spawn(run_writer(
        Target::parse(url, &super::RedisTls::default()).unwrap(),
        settings,
        Arc::clone(&queue),
        Arc::clone(&stats),
    ));
    (queue, stats, task)
}

async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_silent_redis_is_given_up_on_and_its_polls_written_after_reconnecting() {
    let (url, seen) = fake_redis(true).await;
    let (queue, stats, task) = start_writer(&url);
    let pushed = std::time::Instant::now();
    queue.push(report_for("boiler-1"));
    until("the poll to be written", || {
        stats.polls_written.load(Ordering::Relaxed) == 1
    })
    .await;
    let took = pushed.elapsed();
    let timeout = RedisSettings::default().timeout;
    assert!(took >= timeout, "given up after {took:?}");
    assert!(took < timeout * 2, "written again only after {took:?}");
    assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        2,
        "one connection given up on, one that answered"
    );
    for commands in &seen {
        assert_eq!(commands[0][..2], ["HSET", "p:latest:boiler-1"]);
    }
    queue.close();
    task.await.unwrap();
}

#[tokio::test]
async fn a_refused_command_fails_its_own_poll_only() {
    let (url, seen) = fake_redis(false).await;
    let (queue, stats, task) = start_writer(&url);
    for device in ["a", "wrongtype", "b"] {
        queue.push(report_for(device));
    }
    queue.close();
    task.await.unwrap();
    assert_eq!(stats.polls_written.load(Ordering::Relaxed), 2);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
    assert_eq!(stats.visible.snapshot().count(), 2);
    // Redis ran the other commands of the pipeline all the same.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].iter().filter(|c| c[0] == "PUBLISH").count(), 3);
}

#[tokio::test]
async fn a_redis_that_is_not_there_keeps_the_newest_report_until_it_is() {
    // A port where nothing listens, then something does.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let (queue, stats, task) = start_writer(&url);
    let mut old = report();
    old.latency = Duration::from_millis(1);
    let old = Arc::new(old);
    queue.push(old);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newer = report_for("boiler-1");
    queue.push(Arc::clone(&newer));
    assert_eq!(
        stats.failures.load(Ordering::Relaxed),
        0,
        "waiting is not failing"
    );
    assert_eq!(queue.coalesced.load(Ordering::Relaxed), 1);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(2), listener.accept())
        .await
        .expect("the writer tries again within its reconnect delay")
        .unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = Vec::new();
    let mut commands = Vec::new();
    while commands
        .last()
        .is_none_or(|c: &Vec<String>| c[0] != "PUBLISH")
    {
        s.read_buf(&mut buf).await.unwrap();
        while let Some((len, _)) = resp::next_reply(&buf).unwrap() {
            commands.extend(unpack(&buf[..len]));
            buf.drain(..len);
            s.write_all(b":1\r\n").await.unwrap();
        }
    }
    // Only the newest report of the group was written, once.
    assert_eq!(commands.iter().filter(|c| c[0] == "PUBLISH").count(), 1);
    let latency = &commands[1][commands[1].iter().position(|a| a == "latency_ms").unwrap() + 1];
    assert_eq!(latency, "1.500");
    until("the poll to be counted", || {
        stats.polls_written.load(Ordering::Relaxed) == 1
    })
    .await;
    queue.close();
    task.await.unwrap();
}

#[test]
fn the_coalescer_keeps_the_newest_report_of_each_group() {
    let queue = Coalescer::default();
    let tagged = |device: &str, first: usize, latency_ms: u64| {
        let mut r = (*report_for(device)).clone();
        r.readings.retain(|x| x.index >= first);
        r.latency = Duration::from_millis(latency_ms);
        Arc::new(r)
    };
    queue.push(tagged("a", 0, 1));
    queue.push(tagged("a", 0, 2));
    // Another group of the same device, and the same registers of another device.
    queue.push(tagged("a", 2, 3));
    queue.push(tagged("b", 0, 4));
    assert_eq!(queue.coalesced.load(Ordering::Relaxed), 1);
    // Put back after a lost connection: only where nothing newer came.
    queue.requeue(vec![tagged("a", 0, 5), tagged("c", 0, 6)]);
    let mut kept: Vec<(String, usize, u128)> = queue
        .drain()
        .iter()
        .map(|r| {
            (
                r.device.name.clone(),
                r.readings[0].index,
                r.latency.as_millis(),
            )
        })
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            ("a".into(), 0, 2),
            ("a".into(), 2, 3),
            ("b".into(), 0, 4),
            ("c".into(), 0, 6)
        ]
    );
}

#[tokio::test]
async fn a_redis_that_drops_every_connection_is_retried_ten_times_a_second_and_shutdown_ends() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            drop(s);
        }
    });
    let (queue, stats, task) = start_writer(&url);
    queue.push(report_for("boiler-1"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = accepted.load(Ordering::Relaxed);
    assert!((3..=15).contains(&n), "{n} connections in a second");
    assert!(stats.failures.load(Ordering::Relaxed) >= 3);
    assert_eq!(stats.polls_written.load(Ordering::Relaxed), 0);
    queue.close();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the writer ends once closed, though Redis keeps dropping it")
        .unwrap();
}

fn notices() -> [crate::latest::notice::Notice; 2] {
    use crate::latest::notice::{Notice, Stopped};
    let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    [
        Notice::RegistersRemoved {
            device: "boiler-1".into(),
            tenant: None,
            registers: vec!["t".into(), "sn".into()],
            at,
        },
        Notice::DeviceStopped {
            device: "pump".into(),
            tenant: None,
            state: Stopped::Skipped,
            reason: Some("register `p`: unknown type `float`".into()),
            at,
        },
    ]
}

#[tokio::test]
async fn registry_changes_are_written_after_the_reports_pending_with_them() {
    let (url, seen) = fake_redis(false).await;
    let (queue, stats, task) = start_writer(&url);
    queue.push(report_for("boiler-1"));
    for n in notices() {
        queue.push_notice(n);
    }
    queue.close();
    task.await.unwrap();
    assert_eq!(stats.polls_written.load(Ordering::Relaxed), 1);
    let seen = seen.lock().unwrap().clone();
    let commands: Vec<Vec<String>> = seen.into_iter().flatten().collect();
    let tail: Vec<Vec<&str>> = commands[commands.len() - 5..]
        .iter()
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    assert_eq!(tail[0], ["HDEL", "p:latest:boiler-1", "t", "sn"]);
    assert_eq!(tail[1][..2], ["PUBLISH", "p:updates:boiler-1"]);
    let removed: serde_json::Value = serde_json::from_str(tail[1][2]).unwrap();
    assert_eq!(removed["removed"], serde_json::json!(["t", "sn"]));
    assert_eq!(tail[2], ["DEL", "p:latest:pump"]);
    assert_eq!(
        tail[3],
        [
            "HSET",
            "p:device:pump",
            "state",
            "skipped",
            "error",
            "register `p`: unknown type `float`"
        ]
    );
    let stopped: serde_json::Value = serde_json::from_str(tail[4][2]).unwrap();
    assert_eq!(stopped["state"], "skipped");
    assert_eq!(stopped["error"], "register `p`: unknown type `float`");
    // The poll's own commands came first.
    assert_eq!(commands[0][..2], ["HSET", "p:latest:boiler-1"]);
}

#[tokio::test]
async fn registry_changes_lost_with_a_silent_redis_are_written_after_reconnecting() {
    let (url, seen) = fake_redis(true).await;
    let (queue, _stats, task) = start_writer(&url);
    let [removed, _] = notices();
    queue.push_notice(removed);
    until("the change written on a second connection", || {
        seen.lock()
            .unwrap()
            .get(1)
            .is_some_and(|c| c.iter().any(|cmd| cmd[0] == "PUBLISH"))
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    for connection in &seen[..2] {
        assert_eq!(connection[0], ["HDEL", "p:latest:boiler-1", "t", "sn"]);
    }
    queue.close();
    task.await.unwrap();
}
