//! TimescaleDB's background jobs (retention, compression, the hourly
//! aggregate's refresh) run inside the database, out of regpoll's sight: a
//! failing policy keeps failing silently while the disk fills or the
//! aggregate goes stale. regpoll reads their state periodically from
//! TimescaleDB's informational views (`timescaledb_information.jobs`,
//! `job_stats`, `job_errors`) and shows it on `/metrics`, `/ready` and the
//! status page; without TimescaleDB there are no jobs to watch. The task
//! that reads them is [`super::health::watch`].

use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::reading::rfc3339;

/// One background job regpoll created (on `register_readings` or on a
/// rollup), as TimescaleDB last reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobHealth {
    pub id: i32,
    /// The policy's procedure and what it works on, e.g.
    /// `policy_retention on register_readings`.
    pub name: String,
    /// `Success` or `Failed`; `None` before the first run.
    pub last_run_status: Option<String>,
    /// When its last run started, whatever came of it.
    pub last_run_started: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    /// Runs that failed since the last success (all of them when it never
    /// succeeded), counted from `job_errors`.
    pub consecutive_failures: i64,
    pub total_failures: i64,
    /// The newest error `job_errors` holds for the job.
    pub last_error: Option<String>,
}

impl JobHealth {
    pub fn failing(&self) -> bool {
        self.last_run_status.as_deref() == Some("Failed")
    }

    pub fn to_json(&self, now: DateTime<Utc>) -> serde_json::Value {
        json!({
            "id": self.id,
            "name": self.name,
            "last_run_status": self.last_run_status,
            "last_run_started": self.last_run_started.map(rfc3339),
            "last_run_age_s": age(self.last_run_started, now),
            "last_success": self.last_success.map(rfc3339),
            "last_success_age_s": self.last_success_age(now),
            "consecutive_failures": self.consecutive_failures,
            "total_failures": self.total_failures,
            "last_error": self.last_error,
        })
    }

    /// Seconds since the last success; `None` when it never succeeded.
    pub fn last_success_age(&self, now: DateTime<Utc>) -> Option<f64> {
        age(self.last_success, now)
    }

    /// Seconds since the last run started; `None` before the first run.
    pub fn last_run_age(&self, now: DateTime<Utc>) -> Option<f64> {
        age(self.last_run_started, now)
    }

    /// The `/ready` warning of a failing job.
    fn warning(&self) -> String {
        let mut text = format!(
            "timescaledb: background job {} ({}) is failing: {} failed run{} in a row",
            self.id,
            self.name,
            self.consecutive_failures,
            if self.consecutive_failures == 1 {
                ""
            } else {
                "s"
            }
        );
        match self.last_success {
            Some(t) => text.push_str(&format!(", last success {}", rfc3339(t))),
            None => text.push_str(", never succeeded"),
        }
        if let Some(e) = &self.last_error {
            text.push_str(&format!("; last error: {e}"));
        }
        text
    }
}

/// Seconds from `t` to `now`, never negative (clocks of two machines).
pub fn age(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<f64> {
    t.map(|t| ((now - t).num_milliseconds().max(0) as f64) / 1000.0)
}

/// What the watcher last learned: the jobs, or why they could not be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobsReport {
    /// `None` until the first check, and on databases without TimescaleDB.
    pub jobs: Option<Vec<JobHealth>>,
    /// The error of the last check, when it failed (the jobs then are those
    /// of the check before).
    pub read_error: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
}

/// The shared state between the watcher task, which writes it, and the
/// API, which reads it. It also decides what is logged: each change of a
/// job between failing and healthy is logged once, not at every check.
#[derive(Debug, Default)]
pub struct JobWatch {
    report: Mutex<JobsReport>,
}

impl JobWatch {
    pub fn report(&self) -> JobsReport {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records a successful read of the jobs and logs what changed.
    pub fn update(&self, jobs: Option<Vec<JobHealth>>, now: DateTime<Utc>) {
        let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        if report.read_error.take().is_some() {
            tracing::info!("TimescaleDB's job statistics can be read again");
        }
        let before = report.jobs.take().unwrap_or_default();
        for job in jobs.iter().flatten() {
            let was = before.iter().find(|b| b.id == job.id);
            match (was.map(JobHealth::failing), job.failing()) {
                (Some(true), true) | (Some(false) | None, false) => {}
                (_, true) => tracing::warn!(
                    job = job.id,
                    name = %job.name,
                    consecutive_failures = job.consecutive_failures,
                    error = job.last_error.as_deref().unwrap_or("(no error recorded)"),
                    "TimescaleDB background job is failing"
                ),
                (Some(true), false) => tracing::info!(
                    job = job.id,
                    name = %job.name,
                    "TimescaleDB background job succeeds again"
                ),
            }
        }
        report.jobs = jobs;
        report.checked_at = Some(now);
    }

    /// Records a failed read; logged once until a read succeeds again.
    pub fn read_failed(&self, error: &anyhow::Error, now: DateTime<Utc>) {
        let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        if report.read_error.is_none() {
            tracing::warn!(error = %format!("{error:#}"), "cannot read TimescaleDB's job statistics");
        }
        report.read_error = Some(format!("{error:#}"));
        report.checked_at = Some(now);
    }

    /// `/ready` warnings: one per failing job, and one when the jobs cannot
    /// be read. A failing job does not make the service unready: polling
    /// and writing go on; what fails is the database's housekeeping.
    pub fn warnings(&self) -> Vec<String> {
        let report = self.report();
        let mut warnings: Vec<String> = report
            .jobs
            .iter()
            .flatten()
            .filter(|j| j.failing())
            .map(JobHealth::warning)
            .collect();
        if let Some(e) = report.read_error {
            warnings.push(format!(
                "timescaledb: cannot read the background jobs' state: {e}"
            ));
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i32, status: Option<&str>, failures: i64) -> JobHealth {
        JobHealth {
            id,
            name: format!("policy_retention on register_readings #{id}"),
            last_run_status: status.map(str::to_string),
            last_run_started: None,
            last_success: None,
            consecutive_failures: failures,
            total_failures: failures,
            last_error: status
                .filter(|s| *s == "Failed")
                .map(|_| "permission denied for table register_readings".to_string()),
        }
    }

    #[test]
    fn a_failing_job_is_a_ready_warning_naming_it_and_its_error() {
        let watch = JobWatch::default();
        assert!(
            watch.warnings().is_empty(),
            "nothing before the first check"
        );
        watch.update(
            Some(vec![
                job(1000, Some("Success"), 0),
                job(1001, Some("Failed"), 3),
            ]),
            Utc::now(),
        );
        let w = watch.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("timescaledb: background job 1001 ("),
            "{}",
            w[0]
        );
        assert!(w[0].contains("3 failed runs in a row"), "{}", w[0]);
        assert!(w[0].contains("never succeeded"), "{}", w[0]);
        assert!(w[0].contains("permission denied"), "{}", w[0]);

        watch.update(Some(vec![job(1001, Some("Success"), 0)]), Utc::now());
        assert!(
            watch.warnings().is_empty(),
            "recovered: {:?}",
            watch.warnings()
        );
    }

    #[test]
    fn a_failed_read_is_a_warning_and_keeps_the_jobs_last_seen() {
        let watch = JobWatch::default();
        watch.update(Some(vec![job(1001, Some("Failed"), 1)]), Utc::now());
        watch.read_failed(&anyhow::anyhow!("connection refused"), Utc::now());
        let w = watch.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[1].contains("cannot read") && w[1].contains("connection refused"));
        assert_eq!(watch.report().jobs.unwrap().len(), 1);
        watch.update(Some(vec![]), Utc::now());
        assert!(watch.warnings().is_empty());
    }

    #[test]
    fn last_success_age_is_in_seconds_and_never_negative() {
        let now = Utc::now();
        let mut j = job(1, Some("Success"), 0);
        assert_eq!(j.last_success_age(now), None);
        j.last_success = Some(now - chrono::Duration::milliseconds(1500));
        assert_eq!(j.last_success_age(now), Some(1.5));
        j.last_success = Some(now + chrono::Duration::seconds(5));
        assert_eq!(j.last_success_age(now), Some(0.0));
    }
}
