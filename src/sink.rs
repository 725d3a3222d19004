//! Where poll reports go: the in-memory latest values (always), Redis (when
//! configured) and history (PostgreSQL or SQLite). [`Sinks`] is the fan-out
//! the pollers hold; each sink sits behind its own queue so a slow one never
//! holds up polling or the others.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::history::writer::HistoryStats;
use crate::latest::memory::{self, LatestMemory};
use crate::latest::notice::Notice;
use crate::latest::redis;
use crate::reading::PollReport;
use crate::registry::Device;

#[derive(Clone)]
pub struct Sinks {
    pub latest: Arc<LatestMemory>,
    history: mpsc::Sender<Arc<PollReport>>,
    shared: Arc<Shared>,
}

/// What every device's sinks share, behind one pointer: each poll group's
/// task holds its `DeviceSinks` for life (see `fleet::size`).
struct Shared {
    /// Where a report that found the history queue full is counted.
    history_stats: Arc<HistoryStats>,
    redis: Option<Arc<redis::Coalescer>>,
}

impl Sinks {
    pub fn new(
        latest: Arc<LatestMemory>,
        history: mpsc::Sender<Arc<PollReport>>,
        history_stats: Arc<HistoryStats>,
        redis: Option<Arc<redis::Coalescer>>,
    ) -> Self {
        Self {
            latest,
            history,
            shared: Arc::new(Shared {
                history_stats,
                redis,
            }),
        }
    }

    /// The sinks of one device's polls: the same queues, and the device's
    /// own slot of the latest values.
    pub fn for_device(&self, device: &Device) -> DeviceSinks {
        DeviceSinks {
            latest: self.latest.slot(device),
            history: self.history.clone(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Poll reports waiting for the history writer.
    pub fn history_queue_depth(&self) -> usize {
        self.history.max_capacity() - self.history.capacity()
    }

    /// A handle that reads the history queue's depth without keeping the
    /// queue open (the writer ends when the last real sender is dropped).
    pub fn history_depth_probe(&self) -> HistoryDepth {
        HistoryDepth(self.history.downgrade())
    }

    /// Tells the latest values what a registry reload changed: memory drops
    /// at once the registers the `reloaded` definitions no longer have;
    /// Redis is told of every notice (after the reports pending with it).
    pub fn registry_changed(&self, reloaded: &[Arc<Device>], notices: Vec<Notice>) {
        for device in reloaded {
            self.latest.follow(device);
        }
        if let Some(redis) = &self.shared.redis {
            for n in notices {
                redis.push_notice(n);
            }
        }
    }

    /// Tells the Redis writer that no more reports will come.
    pub fn close_redis(&self) {
        if let Some(redis) = &self.shared.redis {
            redis.close();
        }
    }
}

/// See [`Sinks::for_device`].
pub struct DeviceSinks {
    latest: Arc<memory::Slot>,
    history: mpsc::Sender<Arc<PollReport>>,
    shared: Arc<Shared>,
}

impl DeviceSinks {
    /// Hands one poll's report to every sink, without waiting for any: the
    /// history writer takes reports continuously (also while the database
    /// is away), so its queue is full only when the writer gets no CPU;
    /// then the report is dropped, counted and logged (at most once a
    /// minute), and the poller keeps its schedule.
    pub async fn deliver(&self, report: PollReport) {
        self.latest.update(&report);
        let report = Arc::new(report);
        if let Some(redis) = &self.shared.redis {
            redis.push(Arc::clone(&report));
        }
        match self.history.try_send(report) {
            Ok(()) => {}
            Err(TrySendError::Full(report)) => {
                let s = &self.shared.history_stats;
                s.reports_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                s.lose(
                    report.readings.len() as u64,
                    format_args!(
                        "the history queue ({} poll reports) is full: the history writer gets too little CPU",
                        self.history.max_capacity()
                    ),
                );
            }
            Err(TrySendError::Closed(_)) => {
                tracing::error!("history writer has stopped; readings of this poll are not stored");
            }
        }
    }
}

/// See [`Sinks::history_depth_probe`].
#[derive(Clone)]
pub struct HistoryDepth(mpsc::WeakSender<Arc<PollReport>>);

impl HistoryDepth {
    /// Poll reports waiting for the history writer (0 once it is closed).
    pub fn get(&self) -> usize {
        self.0
            .upgrade()
            .map_or(0, |s| s.max_capacity() - s.capacity())
    }
}
