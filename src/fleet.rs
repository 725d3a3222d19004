//! The devices being polled: one task per poll group, and the reconciliation
//! that hot reload uses. A reload restarts only the devices whose definition
//! changed; the others keep their tasks, schedule and connection. Stopping a
//! device lets its in-flight poll finish and deliver first, and a restarted
//! device starts at its next firing after now, so no reading is lost or taken
//! twice across the switch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::cluster::Fence;
use crate::modbus::endpoint::Endpoint;
use crate::modbus::learn::LearnedPlans;
use crate::modbus::stats::Endpoints;
use crate::poller::DevicePoller;
use crate::reading::{PollReport, Quality};
use crate::registry::{Device, Transport};
use crate::schedule::Ticker;
use crate::sink::{DeviceSinks, Sinks};
use crate::telemetry::Distribution;

/// Counters every poll group updates.
#[derive(Debug, Default)]
pub struct Counters {
    pub polls: AtomicU64,
    /// Firings skipped because the group's previous poll was still running.
    pub overruns: AtomicU64,
    /// Schedule lateness over the whole run.
    pub lateness: Distribution,
    /// Readings by quality: good, uncertain, bad.
    pub readings: [AtomicU64; 3],
    /// Modbus request stats of every endpoint the fleet has used.
    pub endpoints: Endpoints,
    /// What each polled device's plan has learned (see `modbus::learn`).
    pub learned: Arc<LearnedPlans>,
    /// Polls skipped, or discarded half-done, because this instance's
    /// cluster lease ran out (see `cluster::Fence`).
    pub fenced_polls: AtomicU64,
}

impl Counters {
    fn record_poll(&self, report: &PollReport) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let mut by_quality = [0u64; 3];
        for r in &report.readings {
            by_quality[r.quality.index()] += 1;
        }
        for (counter, n) in self.readings.iter().zip(by_quality) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    pub fn readings(&self, quality: Quality) -> u64 {
        self.readings[quality.index()].load(Ordering::Relaxed)
    }
}

struct Polled {
    device: Arc<Device>,
    /// One per group task; dropping it tells the task to stop. A oneshot
    /// rather than a shared token or watch channel: the task waits on it
    /// through a pointer, where waiting on a `CancellationToken` kept a
    /// 64-byte waiter inside every task (a watch channel each took 3.4 MB at
    /// 10,000 devices).
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

/// What one reconciliation changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.started.is_empty() && self.restarted.is_empty() && self.stopped.is_empty()
    }
}

pub struct Fleet {
    sinks: Sinks,
    counters: Arc<Counters>,
    /// One per link (host:port or serial path) and its transport, kept
    /// across reloads so connections survive them; a reload that changes a
    /// link's transport or line settings gets a new endpoint, not the old
    /// link with the old framing.
    endpoints: HashMap<(String, Transport), Arc<Endpoint>>,
    polled: BTreeMap<String, Polled>,
    published: watch::Sender<Vec<Arc<Device>>>,
    /// A clustered instance's lease: endpoints send nothing once it closes.
    fence: Option<Arc<Fence>>,
    /// Links handed over by another instance, with the time its last poll
    /// had finished: their devices start at the first firing after it
    /// rather than after now, so no firing falls between the two owners.
    /// Taken by the next reconciliation.
    resume: HashMap<String, DateTime<Utc>>,
}

impl Fleet {
    pub fn new(sinks: Sinks, counters: Arc<Counters>) -> Self {
        Self {
            sinks,
            counters,
            endpoints: HashMap::new(),
            polled: BTreeMap::new(),
            published: watch::Sender::new(Vec::new()),
            fence: None,
            resume: HashMap::new(),
        }
    }

    /// A fleet of a clustered instance: no request goes out once `fence`
    /// has closed, and no poll starts.
    pub fn with_fence(mut self, fence: Arc<Fence>) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Marks `links` as handed over from `at`: their devices poll no firing
    /// after it, and a firing up to it that is due but not yet polled is
    /// still polled when they are stopped. Call before the reconciliation
    /// that stops them; the next owner starts with the first firing after
    /// `at`.
    pub fn hand_over(&self, links: &[String], at: DateTime<Utc>) {
        for ((link, _), endpoint) in &self.endpoints {
            if links.contains(link) {
                endpoint.hand_over_at(at);
            }
        }
    }

    /// The devices behind `link` start, at the next reconciliation, with the
    /// first firing after `at` (a handover from another instance).
    pub fn resume_after(&mut self, link: String, at: DateTime<Utc>) {
        self.resume.insert(link, at);
    }

    /// Where the polls' reports go (a reload tells it what changed).
    pub fn sinks(&self) -> &Sinks {
        &self.sinks
    }

    /// The devices being polled, updated after every reconciliation.
    pub fn devices(&self) -> watch::Receiver<Vec<Arc<Device>>> {
        self.published.subscribe()
    }

    /// Makes the polled set equal to `wanted` (the active devices).
    pub async fn reconcile(&mut self, wanted: Vec<Device>) -> Changes {
        let mut changes = Changes::default();
        let mut wanted: BTreeMap<String, Device> =
            wanted.into_iter().map(|d| (d.name.clone(), d)).collect();
        let mut stopping = Vec::new();
        for (name, p) in &self.polled {
            match wanted.get(name) {
                Some(d) if *p.device == *d => {
                    wanted.remove(name);
                }
                Some(_) => changes.restarted.push(name.clone()),
                None => changes.stopped.push(name.clone()),
            }
        }
        for name in changes.restarted.iter().chain(&changes.stopped) {
            let mut p = self.polled.remove(name).expect("listed from polled");
            p.stops.clear();
            stopping.push(p);
        }
        // Every stopping device finishes its in-flight poll, in parallel.
        for p in stopping {
            for t in p.tasks {
                let _ = t.await;
            }
        }
        for name in &changes.stopped {
            self.sinks.latest.remove(name);
            self.counters.learned.remove(name);
        }
        for (name, device) in wanted {
            if !changes.restarted.contains(&name) {
                changes.started.push(name.clone());
            }
            self.spawn(device);
        }
        self.resume.clear();
        // An endpoint no device uses any more is closed now, not at exit: a
        // clustered instance must let go of a link it hands over (devices
        // with one connection slot), and a removed gateway should not keep
        // a connection open.
        let used: std::collections::HashSet<(String, Transport)> = self
            .polled
            .values()
            .map(|p| (p.device.endpoint(), p.device.transport.clone()))
            .collect();
        self.endpoints.retain(|link, _| used.contains(link));
        self.published.send_replace(
            self.polled
                .values()
                .map(|p| Arc::clone(&p.device))
                .collect(),
        );
        changes
    }

    fn spawn(&mut self, device: Device) {
        let link = (device.endpoint(), device.transport.clone());
        let resume = self.resume.get(&link.0).copied();
        let fence = &self.fence;
        let endpoint = Arc::clone(self.endpoints.entry(link).or_insert_with(|| {
            let e = Arc::new(Endpoint::for_device(&device).with_fence(fence.clone()));
            self.counters
                .endpoints
                .insert(device.endpoint(), Arc::clone(e.stats()));
            e
        }));
        let device = Arc::new(device);
        let groups = device.poll_groups();
        // A changed definition starts from the coalesced plan: forget what
        // the old one learned (its tasks have ended).
        self.counters.learned.remove(&device.name);
        // Collected into Vecs of their own size: collecting from the groups'
        // iterator would reuse the groups' larger allocation for the handles.
        let mut tasks = Vec::with_capacity(groups.len());
        let mut stops = Vec::with_capacity(groups.len());
        for (group, (schedule, members)) in groups.into_iter().enumerate() {
            let ticker = Ticker::new(
                &schedule,
                &format!("{}/{}", device.name, schedule.describe()),
            );
            let poller = DevicePoller::group(Arc::clone(&device), Arc::clone(&endpoint), members)
                .publish_learned(Arc::clone(&self.counters.learned), group);
            let (stop, stopped) = oneshot::channel();
            stops.push(stop);
            let first = ticker.next_after(resume.unwrap_or_else(Utc::now));
            tasks.push(tokio::spawn(group_loop(
                poller,
                first,
                ticker,
                self.sinks.for_device(&device),
                stopped,
                Arc::clone(&self.counters),
            )));
        }
        self.polled.insert(
            device.name.clone(),
            Polled {
                device,
                stops,
                tasks,
            },
        );
    }

    /// Stops every device, letting in-flight polls finish.
    pub async fn stop_all(&mut self) {
        let mut all: Vec<Polled> = std::mem::take(&mut self.polled).into_values().collect();
        for p in &mut all {
            p.stops.clear();
        }
        for p in all {
            for t in p.tasks {
                let _ = t.await;
            }
        }
    }
}

/// Polls one poll group on its schedule until told to stop. A poll still
/// running at its next firing skips that firing (an overrun); there is never
/// a burst of catch-up polls.
///
/// A function returning an `async move` block, not an `async fn`: an `async
/// fn` keeps its arguments in the task and copies them into the body's own
/// variables, so every task held both. With that and the poll boxed together
/// with its delivery (below), the loop holds little more than its arguments
/// and its timer; its size, bounded by a test (`size` below), decides which
/// 128-byte step of tokio's task cell every device pays for (BENCHMARKS.md).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice; see above"
)]
fn group_loop(
    mut poller: DevicePoller,
    mut next: Option<DateTime<Utc>>,
    ticker: Ticker,
    sinks: DeviceSinks,
    mut stop: oneshot::Receiver<()>,
    counters: Arc<Counters>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        // `next` is read again wherever the firing is needed rather than
        // copied into a variable, which would be kept in every task while
        // it sleeps (see `size` below).
        while let Some(first) = next {
            let last = {
                let wait = (first - Utc::now()).to_std().unwrap_or_default();
                // Fleet drops the sender to stop the device.
                let stopped = SleepOrStop {
                    sleep: tokio::time::sleep(wait),
                    stop: &mut stop,
                }
                .await;
                let due = due_of(next);
                // A link handed to another instance (see `Fleet::hand_over`):
                // the firings up to the cut-off are this instance's,
                // whichever of the timer and the stop woke the loop, and the
                // later ones the next owner's, so none is polled twice or by
                // nobody.
                match (stopped, poller.endpoint().handover_at()) {
                    (false, Some(cutoff)) if due > cutoff => break,
                    (true, Some(cutoff)) if due <= cutoff => true,
                    (true, _) => break,
                    (false, _) => false,
                }
            };
            // A clustered instance whose lease ran out polls nothing (its
            // devices are stopped soon after; see `cluster`).
            if poller.endpoint().fenced() {
                counters.fenced_polls.fetch_add(1, Ordering::Relaxed);
                next = ticker.after_poll(due_of(next), Utc::now()).1;
                continue;
            }
            let late = (Utc::now() - due_of(next)).to_std().unwrap_or_default();
            counters.lateness.record(late);
            // The poll and its delivery in one boxed future, so that a loop
            // asleep between polls, which is where thousands of them spend
            // their time, holds a pointer rather than room for their largest
            // state (about 1 KB) and for the report between them.
            Box::pin(async {
                let report = poller.poll().await;
                // Fenced half-way: its last requests were not sent, and
                // the device may be another instance's now.
                if poller.endpoint().fenced() {
                    counters.fenced_polls.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                counters.record_poll(&report);
                sinks.deliver(report).await;
            })
            .await;
            if last {
                break;
            }
            let (missed, following) = ticker.after_poll(due_of(next), Utc::now());
            if missed > 0 {
                counters.overruns.fetch_add(missed, Ordering::Relaxed);
                tracing::debug!(device = %poller.device().name, missed, "poll overran its schedule; skipped firings");
            }
            next = following;
        }
    }
}

pin_project_lite::pin_project! {
    /// Sleeps until the next firing unless told to stop: true when stopped.
    /// Not `select!`, whose bookkeeping took 40 bytes more of every task
    /// (see `size` below).
    struct SleepOrStop<'a> {
        #[pin]
        sleep: tokio::time::Sleep,
        stop: &'a mut oneshot::Receiver<()>,
    }
}

impl Future for SleepOrStop<'_> {
    type Output = bool;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<bool> {
        let this = self.project();
        if std::pin::Pin::new(&mut **this.stop).poll(cx).is_ready() {
            return std::task::Poll::Ready(true);
        }
        this.sleep.poll(cx).map(|()| false)
    }
}

/// The firing the loop is at: `next` is only changed once it is done with it.
fn due_of(next: Option<DateTime<Utc>>) -> DateTime<Utc> {
    next.expect("the loop runs only while there is a next firing")
}

#[cfg(test)]
mod size {
    use std::sync::Arc;

    use tokio::sync::{mpsc, oneshot};

    use super::{Counters, group_loop};
    use crate::history::writer::HistoryStats;
    use crate::latest::memory::LatestMemory;
    use crate::modbus::endpoint::Endpoint;
    use crate::poller::DevicePoller;
    use crate::schedule::Ticker;
    use crate::sink::Sinks;

    /// Every poll group's task holds this future for life, in a task cell
    /// that tokio aligns to 128 bytes: at 272 bytes the cell is 384, one
    /// byte more makes it 512, 1.25 MiB more at 10,000 devices
    /// (BENCHMARKS.md, memory per device).
    #[test]
    fn the_group_loop_stays_small() {
        let device = Arc::new(
            crate::config::parse(
                "devices:\n  - { name: a, host: 127.0.0.1, port: 1, registers: [ { name: r, kind: holding, address: 0 } ] }\n",
                "devices.yaml",
            )
            .unwrap()
            .remove(0),
        );
        let poller =
            DevicePoller::new(Arc::clone(&device), Arc::new(Endpoint::new("127.0.0.1", 1)));
        let (history, _rx) = mpsc::channel(1);
        let sinks = Sinks::new(
            Arc::new(LatestMemory::default()),
            history,
            Arc::new(HistoryStats::default()),
            None,
        );
        let (_stop, stopped) = oneshot::channel();
        let schedule = device.poll_groups().remove(0).0;
        let ticker = Ticker::new(&schedule, "a");
        let future = group_loop(
            poller,
            None,
            ticker,
            sinks.for_device(&device),
            stopped,
            Arc::new(Counters::default()),
        );
        let size = std::mem::size_of_val(&future);
        assert!(size <= 272, "a poll group's loop is {size} bytes");
    }
}
