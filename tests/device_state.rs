//! A device's state changes are logged once each: going down with the error,
//! coming back; never once per poll.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use regpoll::app::{self, DeviceSource, Running, Settings};
use regpoll::sim::{Bind, Simulator};

/// Log lines, captured.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits (on updates, not by sleeping) until the device `flaky` is as `done` says.
async fn until(running: &Running, what: &str, done: impl Fn(bool, u64) -> bool) -> u64 {
    let mut updates = running.latest.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(d) = running.latest.device("flaky")
                && done(d.state.up, d.state.polls)
            {
                return d.state.polls;
            }
            updates.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} not seen within 10 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_going_away_and_back_is_logged_once_each_way() {
    let logs = Capture::default();
    let writer = {
        let logs = logs.clone();
        move || logs.clone()
    };
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .finish(),
    )
    .expect("the only subscriber of this test binary");

    let yaml = "devices:\n  - name: flaky\n    host: 127.0.0.1\n    port: {A}\n    every: 100ms\n    timeout: 200ms\n    connect_timeout: 200ms\n    retries: 0\n    registers: [ { name: r, kind: holding, address: 0 } ]\n";
    let fixture = common::simulate(yaml, &["{A}"]).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        sqlite_path: dir.path().join("r.db"),
        ..Settings::default()
    };
    let running = app::start(&settings, DeviceSource::Devices(fixture.devices.clone()))
        .await
        .unwrap();
    until(&running, "the first polls", |up, polls| up && polls >= 2).await;

    drop(fixture.sim);
    let down_at = until(&running, "the device down", |up, _| !up).await;
    until(&running, "more failed polls", |up, polls| {
        !up && polls >= down_at + 3
    })
    .await;

    // Back on the same port.
    let _sim = Simulator::start(&fixture.devices, Bind::AsConfigured)
        .await
        .unwrap();
    let up_at = until(&running, "the device back", |up, _| up).await;
    until(&running, "more good polls", |up, polls| {
        up && polls >= up_at + 3
    })
    .await;
    running.shutdown().await.unwrap();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines = |what: &str| -> Vec<&str> {
        text.lines()
            .filter(|l| l.contains(what) && l.contains("flaky"))
            .collect()
    };
    let down = lines("device went down");
    assert_eq!(down.len(), 1, "{text}");
    assert!(down[0].contains("error="), "{}", down[0]);
    assert_eq!(lines("device is up again").len(), 1, "{text}");
    assert!(lines("down from its first poll").is_empty(), "{text}");
}
