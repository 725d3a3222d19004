//! What regpoll's own maintenance jobs on the history did last: the rollup
//! refresh and the retention job (on databases without TimescaleDB, whose
//! policies `jobs` watches instead). The jobs record each run here; the
//! health views (`/metrics`, the status page, `regpoll status`) read it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// A maintenance job regpoll runs itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    /// Recomputes the rollups touched by new rows (`rollup`).
    RollupRefresh,
    /// Deletes rows past each tier's retention (`retention`).
    Retention,
}

impl Job {
    /// The job's name in metrics and on pages.
    pub fn name(self) -> &'static str {
        match self {
            Job::RollupRefresh => "rollup_refresh",
            Job::Retention => "retention",
        }
    }
}

/// The last runs of one job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    /// When the last run started.
    pub last_run: Option<DateTime<Utc>>,
    /// When the last successful run started.
    pub last_success: Option<DateTime<Utc>>,
    /// The error of the last run, when it failed.
    pub last_error: Option<String>,
    /// Rows the last successful run wrote or deleted.
    pub rows: u64,
}

/// The jobs' last runs, shared between the jobs and the health views.
#[derive(Debug, Default)]
pub struct Runs {
    runs: Mutex<BTreeMap<Job, Run>>,
    recorded: tokio::sync::Notify,
}

impl Runs {
    /// Records a run of `job` that started at `at`: the rows it affected,
    /// or its error.
    pub fn record(&self, job: Job, at: DateTime<Utc>, outcome: Result<u64, String>) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let run = runs.entry(job).or_default();
        run.last_run = Some(at);
        match outcome {
            Ok(rows) => {
                run.last_success = Some(at);
                run.last_error = None;
                run.rows = rows;
            }
            Err(e) => run.last_error = Some(e),
        }
        drop(runs);
        self.recorded.notify_waiters();
    }

    /// Resolves at the next run recorded after this is called (for waiting
    /// on a job without polling: take it, check [`snapshot`](Self::snapshot),
    /// then await it).
    pub fn recorded(&self) -> tokio::sync::futures::Notified<'_> {
        self.recorded.notified()
    }

    /// Every job that has run, in a fixed order.
    pub fn snapshot(&self) -> Vec<(Job, Run)> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.iter().map(|(j, r)| (*j, r.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_the_last_success() {
        let runs = Runs::default();
        let t = |s| DateTime::from_timestamp(s, 0).unwrap();
        runs.record(Job::Retention, t(10), Ok(5));
        runs.record(Job::Retention, t(20), Err("disk full".into()));
        runs.record(Job::RollupRefresh, t(30), Ok(7));
        let snap = runs.snapshot();
        assert_eq!(snap[0].0, Job::RollupRefresh);
        let retention = &snap[1].1;
        assert_eq!(retention.last_run, Some(t(20)));
        assert_eq!(retention.last_success, Some(t(10)));
        assert_eq!(retention.last_error.as_deref(), Some("disk full"));
        assert_eq!(retention.rows, 5);
        runs.record(Job::Retention, t(40), Ok(0));
        assert_eq!(runs.snapshot()[1].1.last_error, None);
    }
}
