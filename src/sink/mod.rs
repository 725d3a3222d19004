//! Where poll reports go: the in-memory latest values (always), Redis (when
//! configured) and history (PostgreSQL or SQLite). [`Sinks`] is the fan-out
//! the pollers hold; each sink sits behind its own queue so a slow one never
//! holds up polling or the others.

pub mod history;
pub mod memory;
pub mod pgcopy;
pub mod postgres;
pub mod redis;
pub mod retention;
pub mod sqlite;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::reading::PollReport;
use memory::LatestMemory;

/// Poll reports that may wait for the history writer. When it is full, pollers
/// wait (nothing is dropped); with 5,000-row batches this is rarely reached.
pub const DEFAULT_HISTORY_QUEUE: usize = 4_096;
/// Poll reports that may wait for the Redis writer before newer ones are skipped.
pub const DEFAULT_REDIS_QUEUE: usize = 4_096;

#[derive(Clone)]
pub struct Sinks {
    pub latest: Arc<LatestMemory>,
    history: mpsc::Sender<Arc<PollReport>>,
    redis: Option<mpsc::Sender<Arc<PollReport>>>,
    redis_skipped: Arc<AtomicU64>,
}

impl Sinks {
    pub fn new(
        latest: Arc<LatestMemory>,
        history: mpsc::Sender<Arc<PollReport>>,
        redis: Option<mpsc::Sender<Arc<PollReport>>>,
    ) -> Self {
        Self {
            latest,
            history,
            redis,
            redis_skipped: Arc::default(),
        }
    }

    /// Hands one poll's report to every sink.
    pub async fn deliver(&self, report: PollReport) {
        self.latest.update(&report);
        let report = Arc::new(report);
        if let Some(redis) = &self.redis
            && redis.try_send(Arc::clone(&report)).is_err()
        {
            self.redis_skipped.fetch_add(1, Ordering::Relaxed);
        }
        if self.history.send(report).await.is_err() {
            tracing::error!("history writer has stopped; readings of this poll are not stored");
        }
    }

    pub fn redis_skipped(&self) -> u64 {
        self.redis_skipped.load(Ordering::Relaxed)
    }
}
