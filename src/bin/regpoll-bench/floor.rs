//! The floor under regpoll's CPU figure: the fleet's requests made by the
//! simplest loop that can make them, alone and then with the bytes
//! regpoll's sinks would send for them replayed to the same Redis and
//! PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Utc;
use regpoll::history::row::{Row, rows_of};
use regpoll::history::store::{COPY_STATEMENT, copy_bytes};
use regpoll::history::writer::BatchSettings;
use regpoll::latest::redis::{
    RedisSettings, RedisTls, Stream, connect_raw, next_reply, packed_report,
};
use sqlx::{Connection as _, Executor as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::fleet::FleetSpec;
use crate::proc_stats::own_cpu_user_system;
use crate::workload::{device_words, synthetic_reports};

/// One window of the floor: requests made, CPU seconds (and the user part
/// of them), wall seconds.
pub struct Window {
    pub requests: f64,
    pub cpu: f64,
    pub user: f64,
    pub secs: f64,
}

impl Window {
    pub fn us_per_reading(&self, registers: usize) -> f64 {
        self.cpu * 1e6 / (self.requests * registers as f64)
    }

    pub fn user_us_per_reading(&self, registers: usize) -> f64 {
        self.user * 1e6 / (self.requests * registers as f64)
    }
}

/// The floor's two windows: the requests alone, then with the sinks' bytes
/// sent as well (when the run had Redis or PostgreSQL).
pub struct Floor {
    pub requests: Window,
    pub with_sinks: Option<(Window, SinksSent)>,
}

/// What the sinks' replay has sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct SinksSent {
    pub redis_bytes: u64,
    pub copies: u64,
    pub copy_rows: u64,
}

/// The fleet's requests from the simplest loop that can make them: one
/// tokio-modbus connection per simulator port, sending its units' requests in
/// turn at the fleet's rate on a tokio runtime like `run`'s, with nothing
/// scheduled per device, decoded, checked or stored. Its CPU per reading is
/// what any poller on this machine pays for the TCP round trips alone
/// (system calls, loopback, wake-ups), the floor under regpoll's figure.
///
/// A second window adds what any poller keeping regpoll's contracts pays to
/// hand the values on (see [`SinkReplay`]): the same loop while the bytes
/// regpoll's writers would send for its polls go to the run's Redis and
/// PostgreSQL.
pub async fn bare_request_loop(
    spec: &FleetSpec,
    ports: &[u16],
    database_url: Option<&str>,
    window: Duration,
) -> anyhow::Result<Floor> {
    use tokio_modbus::client::{Reader as _, tcp};
    use tokio_modbus::prelude::SlaveContext as _;
    let replay = SinkReplay::prepare(spec, spec.redis_url.as_deref(), database_url).await?;
    let words = device_words(spec.registers);
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    // Every port's loop starts on the same phase step of the wall clock, as
    // regpoll's schedules fire: when a loop's period is a whole number of
    // steps (10 ms at b and c), its requests go out on the ticks where
    // regpoll's of that step do, all ports' together.
    let step = regpoll::schedule::phase_step(spec.every);
    let since_step = Duration::from_micros(
        (Utc::now().timestamp_micros() as u64) % step.as_micros().max(1) as u64,
    );
    let first_step = tokio::time::Instant::now() + step.saturating_sub(since_step) + step;
    for (p, port) in ports.iter().enumerate() {
        let units = spec
            .devices
            .saturating_sub(p * spec.units_per_port)
            .min(spec.units_per_port);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
        let mut ctx = tcp::connect(addr)
            .await
            .with_context(|| format!("bare loop: cannot connect to {addr}"))?;
        let count = Arc::clone(&count);
        let mut stop = stop_rx.clone();
        let period = spec.every / units.max(1) as u32;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(first_step, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut unit = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                ctx.set_slave(tokio_modbus::Slave(unit as u8 + 1));
                unit = (unit + 1) % units;
                match ctx.read_holding_registers(0, words).await {
                    Ok(Ok(_)) => {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    other => return Err(anyhow::anyhow!("bare loop: {other:?}")),
                }
            }
            Ok(())
        }));
    }
    let measure = async || -> anyhow::Result<Window> {
        let (n0, (user0, sys0), t0) = (
            count.load(std::sync::atomic::Ordering::Relaxed),
            own_cpu_user_system()?,
            Instant::now(),
        );
        tokio::time::sleep(window).await;
        let (user1, sys1) = own_cpu_user_system()?;
        Ok(Window {
            requests: (count.load(std::sync::atomic::Ordering::Relaxed) - n0) as f64,
            cpu: user1 + sys1 - user0 - sys0,
            user: user1 - user0,
            secs: t0.elapsed().as_secs_f64(),
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = measure().await?;
    let with_sinks = match replay {
        Some(replay) => {
            eprintln!(
                "bench {}: measuring it again for {window:?} with the sinks' bytes sent as well",
                spec.name
            );
            let running = replay.start(Arc::clone(&count), stop_rx.clone());
            tokio::time::sleep(Duration::from_secs(1)).await;
            running.take_sent();
            let w = measure().await?;
            let sent = running.take_sent();
            let _ = stop.send(true);
            running.finish().await?;
            Some((w, sent))
        }
        None => None,
    };
    let _ = stop.send(true);
    for t in tasks {
        t.await??;
    }
    Ok(Floor {
        requests,
        with_sinks,
    })
}

/// The sinks' part of the floor: the bytes regpoll's writers send for a
/// poll, made before the window by the writers' own encoders from a
/// synthetic poll of the fleet's shape, so that the window holds only
/// sending them and taking the answers, as often as the writers would. To
/// Redis, the pipeline of each poll made since the last send, every 2 ms
/// (the writer's linger) or, when polls come less often, once a poll; the
/// answers are read and only checked for errors. To PostgreSQL, a binary
/// COPY of the rows owed whenever a batch would be full at the fleet's rate
/// or the batch delay is up, into a temporary table of `register_readings`'
/// shape.
struct SinkReplay {
    /// The connection, one poll's bytes, and the command that deletes the
    /// keys they write.
    redis: Option<(Stream, Vec<u8>, Vec<u8>)>,
    copy: Option<(sqlx::PgConnection, CopyBytes)>,
    readings_per_poll: usize,
    /// How often the bare loop polls, on average.
    poll_every: Duration,
}

/// Every how often the replay sends Redis the polls made meanwhile.
const REPLAY_LINGER: Duration = Duration::from_millis(2);

impl SinkReplay {
    async fn prepare(
        spec: &FleetSpec,
        redis_url: Option<&str>,
        database_url: Option<&str>,
    ) -> anyhow::Result<Option<SinkReplay>> {
        if redis_url.is_none() && database_url.is_none() {
            return Ok(None);
        }
        let polls = BatchSettings::default().max_rows.div_ceil(spec.registers);
        let reports = synthetic_reports(spec.devices.clamp(1, 100), spec.registers, polls)?;
        let redis = match redis_url {
            Some(url) => {
                let settings = RedisSettings {
                    prefix: "regpoll-bench-floor".into(),
                    ttl: None,
                    ..RedisSettings::default()
                };
                let per_poll = packed_report(&settings, &reports[0]);
                let keys = ["latest", "device"]
                    .map(|kind| format!("{}:{kind}:{}", settings.prefix, reports[0].device.name));
                let delete = redis::cmd("DEL")
                    .arg(&keys[0])
                    .arg(&keys[1])
                    .get_packed_command();
                let tls = RedisTls {
                    ca: spec.redis_ca.clone(),
                    ..RedisTls::default()
                };
                let stream = connect_raw(url, &tls, settings.timeout)
                    .await
                    .context("floor")?;
                Some((stream, per_poll, delete))
            }
            None => None,
        };
        let copy = match database_url {
            Some(url) => {
                let mut conn = sqlx::PgConnection::connect(url)
                    .await
                    .context("floor: cannot connect to PostgreSQL")?;
                conn.execute(
                    "CREATE TEMP TABLE floor_readings (LIKE register_readings INCLUDING DEFAULTS)",
                )
                .await
                .context("floor: cannot create its table")?;
                let mut rows = Vec::new();
                for r in &reports {
                    rows_of(r, &mut rows);
                }
                Some((conn, CopyBytes::of(&rows)))
            }
            None => None,
        };
        Ok(Some(SinkReplay {
            redis,
            copy,
            readings_per_poll: spec.registers,
            poll_every: spec.every / spec.devices.max(1) as u32,
        }))
    }

    fn start(
        self,
        polls: Arc<std::sync::atomic::AtomicU64>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> RunningReplay {
        use std::sync::atomic::Ordering::Relaxed;
        let sent = Arc::new(SentCounters::default());
        let mut tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = Vec::new();
        if let Some((stream, per_poll, delete)) = self.redis {
            let Stream { mut rx, mut tx } = stream;
            let mut stop_w = stop.clone();
            let (polls, sent) = (Arc::clone(&polls), Arc::clone(&sent));
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(REPLAY_LINGER.max(self.poll_every));
                let mut last = polls.load(Relaxed);
                let mut out = Vec::new();
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop_w.wait_for(|s| *s) => break,
                    }
                    let now = polls.load(Relaxed);
                    out.clear();
                    for _ in last..now {
                        out.extend_from_slice(&per_poll);
                    }
                    last = now;
                    tx.write_all(&out).await.context("floor: Redis write")?;
                    // TLS may hold the tail of what was written.
                    tx.flush().await.context("floor: Redis write")?;
                    sent.redis_bytes.fetch_add(out.len() as u64, Relaxed);
                }
                tx.write_all(&delete).await.context("floor: Redis write")?;
                tx.flush().await.context("floor: Redis write")?;
                Ok(())
            }));
            let mut stop_r = stop.clone();
            tasks.push(tokio::spawn(async move {
                // The answers are read as the writer reads them, and only
                // checked for errors.
                let mut inbox = Vec::with_capacity(64 * 1024);
                loop {
                    let n = tokio::select! {
                        n = rx.read_buf(&mut inbox) => n.context("floor: Redis read")?,
                        _ = stop_r.wait_for(|s| *s) => break,
                    };
                    if n == 0 {
                        // After the stop the writer sends its DEL and
                        // hangs up, and Redis closes its side: that end
                        // may be read before the stop is seen.
                        if *stop_r.borrow() {
                            break;
                        }
                        bail!("floor: Redis closed the connection");
                    }
                    let mut at = 0;
                    while let Some((len, error)) = next_reply(&inbox[at..])? {
                        if let Some(e) = error {
                            bail!("floor: Redis answered {}", String::from_utf8_lossy(e));
                        }
                        at += len;
                    }
                    inbox.drain(..at);
                }
                Ok(())
            }));
        }
        if let Some((mut conn, bytes)) = self.copy {
            let mut stop = stop.clone();
            let sent = Arc::clone(&sent);
            let per_poll = self.readings_per_poll;
            let statement = COPY_STATEMENT.replacen("register_readings", "floor_readings", 1);
            // The writer's rules (`BatchSettings`' defaults): a COPY when a
            // batch is full or the batch delay is up, whichever comes first
            // at the fleet's rate.
            let batch = BatchSettings::default();
            let rows_per_s = per_poll as f64 / self.poll_every.as_secs_f64();
            tasks.push(tokio::spawn(async move {
                let mut owed = 0;
                let mut last = polls.load(Relaxed);
                loop {
                    let to_fill = batch.max_rows.saturating_sub(owed) as f64 / rows_per_s;
                    let wait = Duration::from_secs_f64(to_fill).min(batch.max_delay);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                    let now = polls.load(Relaxed);
                    owed += (now - last) as usize * per_poll;
                    last = now;
                    while owed > 0 {
                        let rows = owed.min(batch.max_rows).min(bytes.rows());
                        let mut copy = conn.copy_in_raw(&statement).await?;
                        for piece in bytes.first(rows) {
                            copy.send(piece).await?;
                        }
                        copy.finish().await?;
                        owed -= rows;
                        sent.copies.fetch_add(1, Relaxed);
                        sent.copy_rows.fetch_add(rows as u64, Relaxed);
                        if owed < batch.max_rows {
                            break;
                        }
                    }
                }
                conn.close().await?;
                Ok(())
            }));
        }
        RunningReplay { sent, tasks }
    }
}

/// Length of a binary COPY stream's end-of-data marker, a 16-bit -1
/// (PostgreSQL docs, "COPY", Binary Format).
const TRAILER_LEN: usize = 2;

/// A binary COPY stream of some rows, encoded once, from which a COPY of
/// its first rows can be sent without encoding anything.
struct CopyBytes {
    header: Vec<u8>,
    tuples: Vec<u8>,
    /// Where each row's tuple ends in `tuples`.
    ends: Vec<usize>,
    trailer: Vec<u8>,
}

impl CopyBytes {
    /// Cut from the store's own streams: the stream of no rows is the
    /// header and the trailer, and each row's tuple is what the stream of
    /// that row alone holds between them.
    fn of(rows: &[Row]) -> CopyBytes {
        let empty = copy_bytes(&[]);
        let (header, trailer) = empty.split_at(empty.len() - TRAILER_LEN);
        let mut tuples = Vec::new();
        let ends = rows
            .iter()
            .map(|r| {
                let one = copy_bytes(std::slice::from_ref(r));
                tuples.extend_from_slice(&one[header.len()..one.len() - TRAILER_LEN]);
                tuples.len()
            })
            .collect();
        CopyBytes {
            header: header.to_vec(),
            tuples,
            ends,
            trailer: trailer.to_vec(),
        }
    }

    fn rows(&self) -> usize {
        self.ends.len()
    }

    /// The stream of the first `n` rows, in three pieces.
    fn first(&self, n: usize) -> [&[u8]; 3] {
        let end = if n == 0 { 0 } else { self.ends[n - 1] };
        [&self.header, &self.tuples[..end], &self.trailer]
    }
}

#[derive(Default)]
struct SentCounters {
    redis_bytes: std::sync::atomic::AtomicU64,
    copies: std::sync::atomic::AtomicU64,
    copy_rows: std::sync::atomic::AtomicU64,
}

struct RunningReplay {
    sent: Arc<SentCounters>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl RunningReplay {
    /// What was sent since the last call.
    fn take_sent(&self) -> SinksSent {
        use std::sync::atomic::Ordering::Relaxed;
        SinksSent {
            redis_bytes: self.sent.redis_bytes.swap(0, Relaxed),
            copies: self.sent.copies.swap(0, Relaxed),
            copy_rows: self.sent.copy_rows.swap(0, Relaxed),
        }
    }

    async fn finish(self) -> anyhow::Result<()> {
        for t in self.tasks {
            t.await.context("a floor replay task panicked")??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_sends_the_copy_of_any_first_rows_as_the_encoder_writes_it() {
        let reports = synthetic_reports(3, 10, 4).unwrap();
        let mut rows = Vec::new();
        for r in &reports {
            rows_of(r, &mut rows);
        }
        let bytes = CopyBytes::of(&rows);
        assert_eq!(bytes.rows(), 40);
        for n in [0, 1, 17, 40] {
            assert_eq!(bytes.first(n).concat(), copy_bytes(&rows[..n]), "{n} rows");
        }
    }
}
