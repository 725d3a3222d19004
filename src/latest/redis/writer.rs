//! The task that owns the Redis connection and writes what the coalescer holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::Utc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::coalescer::Coalescer;
use super::commands::{Scratch, add_notice, add_report};
use super::connection::{self as resp, Commands, Stream, Target};
use super::{MAX_IN_FLIGHT, PIPELINE_REPORTS, RedisSettings};
use crate::latest::notice::Notice;
use crate::reading::PollReport;
use crate::telemetry::{Distribution, DistributionSnapshot};

/// Counters the writer keeps; shared with whoever reports on it.
#[derive(Debug, Default)]
pub struct RedisStats {
    pub polls_written: AtomicU64,
    pub failures: AtomicU64,
    /// From the end of a poll (its last response) to Redis acknowledging its
    /// values: how stale a dashboard reading Redis can be beyond the schedule.
    pub visible: Distribution,
}

/// The writer's counters at one moment, with what the coalescer superseded.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSnapshot {
    pub polls_written: u64,
    pub failures: u64,
    /// Reports superseded by a newer one of their group before Redis took them.
    pub coalesced: u64,
    pub visible: DistributionSnapshot,
}

impl RedisStats {
    pub fn snapshot(&self, queue: &Coalescer) -> RedisSnapshot {
        RedisSnapshot {
            polls_written: self.polls_written.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            coalesced: queue.coalesced.load(Ordering::Relaxed),
            visible: self.visible.snapshot(),
        }
    }
}

/// How long the writer waits before connecting again after Redis could not
/// be reached. Reports wait in the coalescer meanwhile (newest per group), so
/// the moment Redis is back every group's latest values are written, even
/// those of devices polled once an hour. A refused connection costs a few
/// system calls, so trying ten times a second costs nothing worth saving.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Writes what the coalescer holds until it is closed and drained.
///
/// One task owns the connection: it builds each pipeline into the bytes it
/// writes, writes them without waiting for earlier pipelines' answers (Redis
/// runs commands in the order sent, so a newer report still lands last), and
/// counts the answers off as they arrive. A pipeline not fully answered
/// within `settings.timeout` of being sent, a protocol error or a closed
/// connection drops the connection; the reports of every pipeline still
/// waiting go back into the coalescer unless a newer one of the same group is
/// there, so they are written after reconnecting (their update message may
/// then be published twice). An error answer (say WRONGTYPE, because
/// something else wrote the key) fails that poll's report only.
pub async fn run_writer(
    target: Target,
    settings: RedisSettings,
    queue: Arc<Coalescer>,
    stats: Arc<RedisStats>,
) {
    let mut link: Option<Link> = None;
    // Runs while reports gather before the next pipeline. Let polls gather
    // for a moment, then write them all in one pipeline: at thousands of
    // polls a second a round trip per poll costs more CPU than the polls
    // themselves. The linger bounds what it adds to a value's way into
    // Redis. (Skipping it when reports arrived during the last write halved
    // the p50 at 10,000 devices but not the p99, and cost 20 % more CPU per
    // reading.) Answers that come meanwhile are taken as they come, so their
    // time to visible is not stretched.
    let linger = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(linger);
    let mut lingering = false;
    // Set when a pipeline is sent on an idle connection. When it fires at a
    // pipeline already answered, it is set again to the deadline of the
    // oldest one still waiting (rather than reset after every answer).
    let watchdog = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(watchdog);
    let mut retry = Retry {
        sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        armed: false,
    };
    // Whether the last attempt to reach Redis failed (logged once a run).
    let mut down = false;
    // Connections lost so far (the first and every 100th are logged: a
    // Redis that accepts and then drops every connection, say one at its
    // client limit, would otherwise log ten times a second).
    let mut losses = 0u64;
    let mut open = true;
    loop {
        let in_flight = link.as_ref().map_or(0, |l| l.waiting.len());
        let busy = link.as_ref().is_some_and(Link::busy);
        tokio::select! {
            answered = next_answer(&mut link), if busy => match answered {
                Ok(sent) => record(&stats, &sent),
                Err(e) => {
                    lose(&mut link, &e, &queue, &stats, &mut losses);
                    retry.arm();
                }
            },
            () = &mut watchdog, if in_flight > 0 => {
                let late = link
                    .as_ref()
                    .and_then(|l| l.waiting.front())
                    .map(|s| s.deadline);
                match late {
                    Some(deadline) if deadline > tokio::time::Instant::now() => {
                        watchdog.as_mut().reset(deadline);
                    }
                    _ => {
                        let e = anyhow::anyhow!(
                            "Redis did not answer within {} ms",
                            settings.timeout.as_millis()
                        );
                        lose(&mut link, &e, &queue, &stats, &mut losses);
                        retry.arm();
                    }
                }
            }
            () = &mut retry.sleep, if retry.armed => retry.armed = false,
            more = queue.wait(), if open && !lingering && !retry.armed && in_flight < MAX_IN_FLIGHT => {
                if more {
                    linger.as_mut().reset(tokio::time::Instant::now() + settings.linger);
                    lingering = true;
                } else {
                    open = false;
                }
            }
            () = &mut linger, if lingering => {
                lingering = false;
                if link.is_none() {
                    if retry.armed {
                        // The connection was lost while reports gathered:
                        // they wait for the retry, as after a failed connect.
                        continue;
                    }
                    match target.connect(settings.timeout).await {
                        Ok(stream) => {
                            if down {
                                tracing::info!(redis = target.shown(), "connected to Redis again");
                            }
                            down = false;
                            link = Some(Link::new(stream, target.closed_early()));
                        }
                        Err(e) => {
                            if !down {
                                tracing::warn!(error = %format!("{e:#}"), "cannot reach Redis; latest values wait, newest per poll group, until it is back");
                            }
                            down = true;
                            if queue.is_closed() {
                                // Shutting down: nothing more will come, and
                                // what is left cannot be written.
                                let left = queue.drain();
                                queue.drain_notices();
                                stats.failures.fetch_add(left.len() as u64, Ordering::Relaxed);
                            } else {
                                retry.arm();
                            }
                            continue;
                        }
                    }
                }
                let Some(l) = link.as_mut() else { continue };
                let was_idle = l.waiting.is_empty();
                // Each pipeline keeps the reports it carries, moved out of
                // the drained list rather than cloned from it.
                let mut reports = queue.drain().into_iter();
                loop {
                    let chunk: Vec<_> = reports.by_ref().take(PIPELINE_REPORTS).collect();
                    if chunk.is_empty() {
                        break;
                    }
                    l.send(chunk, &settings);
                }
                let notices = queue.drain_notices();
                if !notices.is_empty() {
                    l.send_notices(notices, &settings);
                }
                if was_idle && let Some(first) = l.waiting.front() {
                    watchdog.as_mut().reset(first.deadline);
                }
            }
            else => break,
        }
    }
}

/// The writer's connection: bytes still to send, answers read but not yet
/// counted, and the pipelines waiting for them, oldest first.
struct Link {
    stream: Stream,
    /// Commands built and not yet all written; `written` bytes of them are.
    /// Pipelines built meanwhile are appended; it is emptied once all is out.
    outbox: Commands,
    scratch: Scratch,
    written: usize,
    inbox: Vec<u8>,
    waiting: std::collections::VecDeque<Sent>,
    /// Bytes were written since the last flush. TLS may keep what was
    /// written in its own buffer when the socket is full: a flush sends it.
    unflushed: bool,
    /// What to say when Redis hangs up.
    closed: String,
}

/// A pipeline written (or being written) and the answers it waits for.
struct Sent {
    reports: Vec<Arc<PollReport>>,
    /// Registry changes; a pipeline carries either reports or these.
    notices: Vec<Arc<Notice>>,
    /// How many commands the pipeline has up to the end of each report
    /// (or notice).
    ends: Vec<usize>,
    answered: usize,
    /// The report the next answer is for.
    current: usize,
    /// The reports one of whose commands Redis refused, and its first error.
    refused: Vec<usize>,
    error: Option<String>,
    deadline: tokio::time::Instant,
}

impl Sent {
    fn answer(&mut self, error: Option<&[u8]>) {
        while self.ends[self.current] <= self.answered {
            self.current += 1;
        }
        if let Some(e) = error {
            if self.refused.last() != Some(&self.current) {
                self.refused.push(self.current);
            }
            self.error
                .get_or_insert_with(|| String::from_utf8_lossy(e).into_owned());
        }
        self.answered += 1;
    }

    fn complete(&self) -> bool {
        self.ends.last().is_none_or(|&end| self.answered >= end)
    }
}

impl Link {
    fn new(stream: Stream, closed: String) -> Link {
        Link {
            stream,
            unflushed: false,
            closed,
            outbox: Commands::with_capacity(64 * 1024),
            scratch: Scratch::default(),
            written: 0,
            inbox: Vec::with_capacity(4096),
            waiting: std::collections::VecDeque::new(),
        }
    }

    /// Builds one pipeline of `reports` and queues it to be written.
    fn send(&mut self, reports: Vec<Arc<PollReport>>, settings: &RedisSettings) {
        let before = self.outbox.count();
        let ends = reports
            .iter()
            .map(|report| {
                add_report(&mut self.outbox, &mut self.scratch, settings, report);
                self.outbox.count() - before
            })
            .collect();
        self.waiting.push_back(Sent {
            reports,
            notices: Vec::new(),
            ends,
            answered: 0,
            current: 0,
            refused: Vec::new(),
            error: None,
            deadline: tokio::time::Instant::now() + settings.timeout,
        });
    }

    /// Builds one pipeline of registry changes and queues it to be written.
    fn send_notices(&mut self, notices: Vec<Arc<Notice>>, settings: &RedisSettings) {
        let before = self.outbox.count();
        let ends: Vec<usize> = notices
            .iter()
            .map(|n| {
                add_notice(&mut self.outbox, settings, n);
                self.outbox.count() - before
            })
            .collect();
        if ends.last() == Some(&0) {
            return;
        }
        self.waiting.push_back(Sent {
            reports: Vec::new(),
            notices,
            ends,
            answered: 0,
            current: 0,
            refused: Vec::new(),
            error: None,
            deadline: tokio::time::Instant::now() + settings.timeout,
        });
    }

    fn unsent(&self) -> &[u8] {
        &self.outbox.bytes()[self.written..]
    }

    fn busy(&self) -> bool {
        !self.waiting.is_empty() || !self.unsent().is_empty() || self.unflushed
    }

    /// Writes what is unsent and reads answers until the oldest pipeline is
    /// answered in full. Safe to cancel: a write or read that did not
    /// complete did nothing.
    async fn next_answer(&mut self) -> anyhow::Result<Sent> {
        loop {
            if let Some(sent) = self.count_answers()? {
                return Ok(sent);
            }
            let unsent = &self.outbox.bytes()[self.written..];
            let writing = !unsent.is_empty();
            tokio::select! {
                read = self.stream.rx.read_buf(&mut self.inbox) => {
                    let read = read.map_err(|e| {
                        let what = if resp::hung_up(&e) { self.closed.clone() } else { "cannot read Redis's answers".to_string() };
                        anyhow::Error::new(e).context(what)
                    })?;
                    if read == 0 {
                        bail!("{}", self.closed);
                    }
                }
                wrote = write_or_flush(&mut self.stream.tx, unsent), if writing || self.unflushed => {
                    match wrote.context("cannot write to Redis")? {
                        Some(n) => {
                            self.written += n;
                            self.unflushed = true;
                        }
                        None => self.unflushed = false,
                    }
                    if self.unsent().is_empty() {
                        self.outbox.clear();
                        self.written = 0;
                    }
                }
            }
        }
    }

    /// Counts the answers read so far off the waiting pipelines; the oldest
    /// once all of its answers are in.
    fn count_answers(&mut self) -> anyhow::Result<Option<Sent>> {
        let mut at = 0;
        let mut done = None;
        while let Some(front) = self.waiting.front_mut() {
            let Some((len, error)) = resp::next_reply(&self.inbox[at..])? else {
                break;
            };
            at += len;
            front.answer(error);
            if front.complete() {
                done = self.waiting.pop_front();
                break;
            }
        }
        if self.waiting.is_empty() && at < self.inbox.len() && done.is_none() {
            bail!("Redis answered a command that was not sent");
        }
        self.inbox.drain(..at);
        Ok(done)
    }
}

/// Writes some of `unsent` (how much: `Some`), or flushes once all is
/// written (`None`). Either is safe to cancel.
async fn write_or_flush(
    tx: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    unsent: &[u8],
) -> std::io::Result<Option<usize>> {
    if unsent.is_empty() {
        tx.flush().await.map(|()| None)
    } else {
        tx.write(unsent).await.map(Some)
    }
}

/// The wait before connecting again, after a failed connect or a lost
/// connection.
struct Retry {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl Retry {
    fn arm(&mut self) {
        self.sleep
            .as_mut()
            .reset(tokio::time::Instant::now() + RECONNECT_DELAY);
        self.armed = true;
    }
}

/// [`Link::next_answer`], or never when there is no connection.
async fn next_answer(link: &mut Option<Link>) -> anyhow::Result<Sent> {
    match link {
        Some(l) => l.next_answer().await,
        None => std::future::pending().await,
    }
}

/// Drops the connection after `error`: the reports of every pipeline still
/// waiting are failures, and go back to the coalescer to be written again
/// (unless it is closed). The caller arms its [`Retry`].
fn lose(
    link: &mut Option<Link>,
    error: &anyhow::Error,
    queue: &Coalescer,
    stats: &RedisStats,
    losses: &mut u64,
) {
    let Some(l) = link.take() else { return };
    let (mut reports, mut notices) = (Vec::new(), Vec::new());
    for s in l.waiting {
        reports.extend(s.reports);
        notices.extend(s.notices);
    }
    *losses += 1;
    if *losses % 100 == 1 {
        tracing::warn!(error = %format!("{error:#}"), polls = reports.len(), losses = *losses, "lost the Redis connection; its unanswered polls are written again after reconnecting");
    }
    stats
        .failures
        .fetch_add(reports.len() as u64, Ordering::Relaxed);
    // Shutting down, nothing is put back: against a Redis that takes
    // connections and drops them the writer would otherwise never end.
    if !queue.is_closed() {
        queue.requeue(reports);
        queue.requeue_notices(notices);
    }
}

/// Counts one pipeline's outcome: for each report Redis took, its time
/// from its last response to now; the others are failures.
fn record(stats: &RedisStats, sent: &Sent) {
    if !sent.notices.is_empty() {
        if let Some(e) = &sent.error {
            tracing::warn!(error = %e, devices = sent.refused.len(), "Redis refused a registry change (removed registers or a device no longer polled)");
        }
        return;
    }
    let now = Utc::now();
    let mut refused = sent.refused.iter().peekable();
    for (i, report) in sent.reports.iter().enumerate() {
        if refused.next_if_eq(&&i).is_some() {
            continue;
        }
        let answered =
            report.started + chrono::Duration::from_std(report.latency).unwrap_or_default();
        let visible = (now - answered).to_std().unwrap_or_default();
        stats.visible.record(visible);
    }
    let failed = sent.refused.len() as u64;
    stats
        .polls_written
        .fetch_add(sent.reports.len() as u64 - failed, Ordering::Relaxed);
    if let Some(e) = &sent.error {
        // Log the first failure of a run of failures, not every one.
        let before = stats.failures.fetch_add(failed, Ordering::Relaxed);
        if before / 100 != (before + failed) / 100 || before == 0 {
            tracing::warn!(error = %e, polls = failed, "Redis refused latest values");
        }
    }
}
