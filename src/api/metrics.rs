//! `/metrics`: the Prometheus text exposition format (version 0.0.4), written
//! by hand from the service's own counters (see `telemetry` for why there is
//! no global recorder).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::cluster::{ClusterView, Handovers};
use crate::history::health::{StorageHealth, TableStorage};
use crate::history::maintenance::{Job, Run};
use crate::modbus::stats::{EndpointSnapshot, ErrorKind};
use crate::reading::Quality;
use crate::telemetry::{HistogramSnapshot, LATENCY_BOUNDS};

use super::ApiState;

/// Builds one exposition: each family's HELP and TYPE once, then its samples.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        write_labels(&mut self.0, labels, None);
        let _ = writeln!(self.0, " {}", number(value));
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let count = h.count();
        for &(le, n) in &h.buckets {
            let le = if le.is_infinite() {
                "+Inf".to_string()
            } else {
                number(le)
            };
            let _ = write!(self.0, "{name}_bucket");
            write_labels(&mut self.0, labels, Some(&le));
            let _ = writeln!(self.0, " {n}");
        }
        for (suffix, v) in [("_sum", h.sum_s), ("_count", count as f64)] {
            let _ = write!(self.0, "{name}{suffix}");
            write_labels(&mut self.0, labels, None);
            let _ = writeln!(self.0, " {}", number(v));
        }
    }
}

/// Failed authentications by reason, and requests by token name (only
/// with tokens configured: names are the operator's, a bounded set).
fn auth(t: &mut Text, auth: &super::auth::Auth) {
    if !auth.enabled() {
        return;
    }
    t.family(
        "regpoll_http_auth_failures_total",
        "counter",
        "HTTP requests refused by the token check, by reason (missing, malformed, unknown, rate_limited).",
    );
    for (reason, n) in auth.failures() {
        t.sample(
            "regpoll_http_auth_failures_total",
            &[("reason", reason)],
            n as f64,
        );
    }
    t.family(
        "regpoll_http_requests_by_token_total",
        "counter",
        "HTTP requests let through by the token check, by the token's name.",
    );
    for (token, n) in auth.requests_by_token() {
        t.sample(
            "regpoll_http_requests_by_token_total",
            &[("token", &token)],
            n as f64,
        );
    }
}

fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// CPU seconds (user + system) and resident memory of this process, from
/// /proc (Linux); `None` elsewhere.
pub fn process_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    // Clock ticks are USER_HZ, which Linux fixes at 100 for user space.
    Some(((utime + stime) / 100.0, rss_kb * 1024))
}

pub fn render(state: &ApiState) -> String {
    let s = &state.0;
    let mut t = Text::default();
    let c = s.stats.snapshot();

    t.single(
        "regpoll_devices",
        "gauge",
        "Devices being polled.",
        c.devices as f64,
    );
    t.single(
        "regpoll_devices_up",
        "gauge",
        "Devices whose last poll reached them.",
        c.devices_up as f64,
    );
    t.family(
        "regpoll_registry_rejected",
        "gauge",
        "1 for each active device whose registry rows regpoll cannot use (skipped, or polled on its previous definition); gone once fixed. /ready names the reason.",
    );
    for device in c.registry_rejected.keys() {
        t.sample("regpoll_registry_rejected", &[("device", device)], 1.0);
    }
    t.single(
        "regpoll_polls_total",
        "counter",
        "Polls completed (one per poll group firing).",
        c.polls as f64,
    );
    t.single(
        "regpoll_overruns_total",
        "counter",
        "Firings skipped because the previous poll of the group was still running (missed polls).",
        c.overruns as f64,
    );
    t.family(
        "regpoll_schedule_lateness_seconds",
        "histogram",
        "How late polls started after their scheduled instant.",
    );
    t.histogram(
        "regpoll_schedule_lateness_seconds",
        &[],
        &c.lateness.histogram(LATENCY_BOUNDS),
    );
    t.family(
        "regpoll_readings_total",
        "counter",
        "Readings produced, by quality.",
    );
    for q in Quality::ALL {
        t.sample(
            "regpoll_readings_total",
            &[("quality", q.as_str())],
            c.readings(q) as f64,
        );
    }

    let endpoints = &c.endpoints;
    t.family(
        "regpoll_modbus_requests_total",
        "counter",
        "Modbus requests sent (retries included), by endpoint.",
    );
    for e in endpoints {
        t.sample(
            "regpoll_modbus_requests_total",
            &[("endpoint", &e.endpoint)],
            e.requests as f64,
        );
    }
    t.family(
        "regpoll_modbus_errors_total",
        "counter",
        "Failed Modbus requests by endpoint and kind (timeout, connect, exception, transport, protocol, short_response).",
    );
    for e in endpoints {
        for (kind, n) in ErrorKind::ALL.iter().zip(e.errors) {
            t.sample(
                "regpoll_modbus_errors_total",
                &[("endpoint", &e.endpoint), ("kind", kind.as_str())],
                n as f64,
            );
        }
    }
    for (name, kind, help, value) in [
        (
            "regpoll_modbus_connects_total",
            "counter",
            "Connections opened, by endpoint: more than one means the link broke or the whole endpoint stopped answering.",
            (|e| e.connects) as fn(&EndpointSnapshot) -> u64,
        ),
        (
            "regpoll_modbus_late_replies_total",
            "counter",
            "Answers that came after their request's timeout, recognised by transaction id and dropped, by endpoint.",
            |e| e.late_replies,
        ),
        (
            "regpoll_modbus_demoted_units",
            "gauge",
            "Units behind the endpoint that are demoted now (timed out demote_after times in a row; asked again only when their backoff expires).",
            |e| e.demoted,
        ),
    ] {
        t.family(name, kind, help);
        for e in endpoints {
            t.sample(name, &[("endpoint", &e.endpoint)], value(e) as f64);
        }
    }
    t.family(
        "regpoll_modbus_request_duration_seconds",
        "histogram",
        "Time from sending a Modbus request (connecting first when needed) to its answer or failure, by endpoint.",
    );
    for e in endpoints {
        t.histogram(
            "regpoll_modbus_request_duration_seconds",
            &[("endpoint", &e.endpoint)],
            &e.latency,
        );
    }

    let h = &c.history;
    for (name, help, v) in [
        (
            "regpoll_history_rows_written_total",
            "Readings stored in history.",
            h.rows_written,
        ),
        (
            "regpoll_history_batches_total",
            "History batches written.",
            h.batches,
        ),
        (
            "regpoll_history_write_failures_total",
            "History writes the database refused (they are retried or spooled).",
            h.failures,
        ),
        (
            "regpoll_history_duplicates_total",
            "Rows of replayed batches that were already stored, skipped.",
            h.duplicates,
        ),
        (
            "regpoll_history_rows_lost_total",
            "Readings given up on: dropped past --history-memory-max while neither database nor spool took them, or not handed over because the history queue was full.",
            h.rows_lost,
        ),
        (
            "regpoll_history_rows_rejected_total",
            "Readings the database refused for good (a value or row it will not take), kept in register_readings_rejected or the quarantine file instead of blocking the others.",
            h.rows_rejected,
        ),
        (
            "regpoll_history_reports_dropped_total",
            "Poll reports that found the history queue full (their readings are in rows_lost).",
            h.reports_dropped,
        ),
        (
            "regpoll_readings_deadband_suppressed_total",
            "Readings of registers with a deadband not stored on purpose: inside the band of the last stored value, same quality, heartbeat not due (history is thinned, not lost; the latest values get every poll).",
            h.deadband_suppressed,
        ),
        (
            "regpoll_spool_rows_written_total",
            "Readings written to the disk spool during database outages.",
            h.rows_spooled,
        ),
        (
            "regpoll_spool_rows_replayed_total",
            "Readings replayed from the disk spool into the database.",
            h.rows_replayed,
        ),
        (
            "regpoll_spool_damage_total",
            "Stretches of damaged spool bytes skipped.",
            h.spool_damage,
        ),
    ] {
        t.single(name, "counter", help, v as f64);
    }
    t.single(
        "regpoll_spool_bytes",
        "gauge",
        "Bytes in the disk spool (0 unless the database was down).",
        h.spool_bytes as f64,
    );
    t.single(
        "regpoll_history_rows_waiting",
        "gauge",
        "Readings the history writer holds in memory, not yet written.",
        h.rows_waiting as f64,
    );
    t.single(
        "regpoll_history_queue_depth",
        "gauge",
        "Poll reports waiting for the history writer.",
        h.queue_depth as f64,
    );
    t.family(
        "regpoll_history_write_duration_seconds",
        "histogram",
        "Time to write one history batch.",
    );
    t.histogram(
        "regpoll_history_write_duration_seconds",
        &[],
        &h.write_latency.histogram(LATENCY_BOUNDS),
    );

    if let Some(r) = &c.redis {
        t.single(
            "regpoll_redis_polls_written_total",
            "counter",
            "Poll reports written to Redis.",
            r.polls_written as f64,
        );
        t.single(
            "regpoll_redis_failures_total",
            "counter",
            "Poll reports Redis refused (the next poll rewrites the same keys).",
            r.failures as f64,
        );
        t.single(
            "regpoll_redis_coalesced_total",
            "counter",
            "Poll reports superseded by a newer one of their group before Redis took them.",
            r.coalesced as f64,
        );
        t.family(
            "regpoll_redis_visible_seconds",
            "histogram",
            "From a poll's last response to Redis acknowledging its values.",
        );
        t.histogram(
            "regpoll_redis_visible_seconds",
            &[],
            &r.visible.histogram(LATENCY_BOUNDS),
        );
    }

    jobs(&mut t, &c);
    database(&mut t, &c.storage, c.at);
    maintenance(&mut t, &s.stats.maintenance().snapshot(), c.at);
    if let Some(view) = &s.stats.cluster {
        cluster(
            &mut t,
            view,
            super::cluster::fenced_polls(&s.stats),
            chrono::Utc::now(),
        );
    }

    t.family(
        "regpoll_http_requests_total",
        "counter",
        "HTTP requests served, by route and status.",
    );
    let http = s.http.snapshot();
    for (route, status, n, _) in &http {
        t.sample(
            "regpoll_http_requests_total",
            &[("route", route), ("status", &status.to_string())],
            *n as f64,
        );
    }
    t.family(
        "regpoll_http_request_duration_seconds",
        "histogram",
        "Time to serve HTTP requests, by route.",
    );
    let mut seen = std::collections::BTreeSet::new();
    for (route, _, _, hist) in &http {
        if seen.insert(route.clone()) {
            t.histogram(
                "regpoll_http_request_duration_seconds",
                &[("route", route)],
                &hist.snapshot(),
            );
        }
    }

    auth(&mut t, &s.auth);

    if let Some((cpu, rss)) = process_usage() {
        t.single(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of this process.",
            cpu,
        );
        t.single(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of this process.",
            rss as f64,
        );
    }
    t.single(
        "process_start_time_seconds",
        "gauge",
        "When this process started, in seconds since the Unix epoch.",
        s.started_at,
    );
    t.0
}

/// TimescaleDB's background jobs on regpoll's tables, one sample per job
/// and family; nothing without TimescaleDB.
fn jobs(t: &mut Text, c: &crate::stats::ServiceStats) {
    let Some(jobs) = &c.jobs.jobs else {
        return;
    };
    let ids: Vec<String> = jobs.iter().map(|j| j.id.to_string()).collect();
    let labels = |i: usize| [("job_id", ids[i].as_str()), ("job", jobs[i].name.as_str())];
    t.family(
        "regpoll_timescaledb_job_last_run_success",
        "gauge",
        "1 when the job's last run succeeded, 0 when it failed (absent before its first run).",
    );
    for (i, j) in jobs.iter().enumerate() {
        if let Some(status) = &j.last_run_status {
            let ok = if status == "Success" { 1.0 } else { 0.0 };
            t.sample("regpoll_timescaledb_job_last_run_success", &labels(i), ok);
        }
    }
    t.family(
        "regpoll_timescaledb_job_consecutive_failures",
        "gauge",
        "Failed runs of the job since its last success.",
    );
    for (i, j) in jobs.iter().enumerate() {
        let n = j.consecutive_failures as f64;
        t.sample(
            "regpoll_timescaledb_job_consecutive_failures",
            &labels(i),
            n,
        );
    }
    t.family(
        "regpoll_timescaledb_job_failures_total",
        "counter",
        "Failed runs of the job, as TimescaleDB counts them.",
    );
    for (i, j) in jobs.iter().enumerate() {
        let n = j.total_failures as f64;
        t.sample("regpoll_timescaledb_job_failures_total", &labels(i), n);
    }
    type Age = fn(&crate::history::jobs::JobHealth, DateTime<Utc>) -> Option<f64>;
    let ages: [(&str, &str, Age); 2] = [
        (
            "regpoll_timescaledb_job_last_run_age_seconds",
            "Seconds since the job's last run started, whatever came of it (absent before its first run).",
            |j, now| j.last_run_age(now),
        ),
        (
            "regpoll_timescaledb_job_last_success_age_seconds",
            "Seconds since the job last succeeded (absent when it never did).",
            |j, now| j.last_success_age(now),
        ),
    ];
    for (name, help, age) in ages {
        t.family(name, "gauge", help);
        for (i, j) in jobs.iter().enumerate() {
            if let Some(age) = age(j, c.at) {
                t.sample(name, &labels(i), age);
            }
        }
    }
}

/// The history tables' storage as last read (see `history::health`): one
/// sample per table and family where the database tells the figure, the
/// SQLite file, and whether the last read worked.
fn database(t: &mut Text, h: &StorageHealth, now: DateTime<Utc>) {
    if h.checked_at.is_some() {
        t.single(
            "regpoll_db_health_read_ok",
            "gauge",
            "1 when the last read of the database's table sizes worked, 0 when it failed (the figures are then those of the last read that worked).",
            if h.read_error.is_some() { 0.0 } else { 1.0 },
        );
    }
    t.single(
        "regpoll_db_health_read_failures_total",
        "counter",
        "Reads of the database's table sizes that failed or timed out (--db-health-timeout).",
        h.read_failures as f64,
    );
    if let Some(age) = h.age(now) {
        t.single(
            "regpoll_db_health_age_seconds",
            "gauge",
            "Seconds since the database's table sizes were last read successfully.",
            age,
        );
    }
    let Some(report) = &h.report else {
        return;
    };
    if let Some(age) = crate::history::jobs::age(report.rollup_watermark, now) {
        t.single(
            "regpoll_rollup_watermark_age_seconds",
            "gauge",
            "Seconds since the point up to which regpoll's rollups are complete (rollup_state); grows while the refresh job does not run. Absent where TimescaleDB keeps the rollups.",
            age,
        );
    }
    type Figure = fn(&TableStorage) -> Option<f64>;
    let families: [(&str, &str, Figure); 8] = [
        (
            "regpoll_db_table_bytes",
            "Bytes on disk of the table with its indexes and TOAST (hypertables and continuous aggregates: all their chunks).",
            |s| s.total_bytes.map(|b| b as f64),
        ),
        (
            "regpoll_db_index_bytes",
            "Bytes on disk of the table's indexes.",
            |s| s.index_bytes.map(|b| b as f64),
        ),
        (
            "regpoll_db_rows_estimate",
            "The planner's estimate of the table's rows (reltuples or approximate_row_count; SQLite: counted from its pages), never a count.",
            |s| s.rows_estimate.map(|r| r as f64),
        ),
        (
            "regpoll_db_chunks",
            "Chunks of the hypertable or continuous aggregate (TimescaleDB only).",
            |s| s.chunks.map(|n| n as f64),
        ),
        (
            "regpoll_db_compressed_chunks",
            "Of those, the chunks that are compressed.",
            |s| s.compressed_chunks.map(|n| n as f64),
        ),
        (
            "regpoll_db_compression_before_bytes",
            "Bytes of the compressed chunks before compression (hypertable_compression_stats).",
            |s| s.compression.map(|c| c.before_bytes as f64),
        ),
        (
            "regpoll_db_compression_after_bytes",
            "Bytes of the compressed chunks after compression.",
            |s| s.compression.map(|c| c.after_bytes as f64),
        ),
        (
            "regpoll_db_compression_ratio",
            "Bytes before compression over bytes after, of the compressed chunks (absent while none is).",
            |s| s.compression.and_then(|c| c.ratio()),
        ),
    ];
    for (name, help, figure) in families {
        let samples: Vec<(&str, f64)> = report
            .tables
            .iter()
            .filter_map(|s| Some((s.name.as_str(), figure(s)?)))
            .collect();
        if samples.is_empty() {
            continue;
        }
        t.family(name, "gauge", help);
        for (table, v) in samples {
            t.sample(name, &[("table", table)], v);
        }
    }
    if let Some(f) = &report.sqlite {
        for (name, help, v) in [
            (
                "regpoll_sqlite_file_bytes",
                "Size of the SQLite database file.",
                f.file_bytes as f64,
            ),
            (
                "regpoll_sqlite_wal_bytes",
                "Size of its write-ahead log (-wal file).",
                f.wal_bytes as f64,
            ),
            (
                "regpoll_sqlite_pages",
                "Pages of the database (PRAGMA page_count).",
                f.page_count as f64,
            ),
            (
                "regpoll_sqlite_free_pages",
                "Pages on the free list (PRAGMA freelist_count): reused by new rows, returned to the file system only by VACUUM.",
                f.freelist_count as f64,
            ),
        ] {
            t.single(name, "gauge", help, v);
        }
    }
}

/// The last runs of regpoll's own maintenance jobs (the rollup refresh, the
/// retention job), one sample per job that has run and family.
fn maintenance(t: &mut Text, runs: &[(Job, Run)], now: DateTime<Utc>) {
    if runs.is_empty() {
        return;
    }
    type Figure = fn(&Run, DateTime<Utc>) -> Option<f64>;
    let families: [(&str, &str, Figure); 4] = [
        (
            "regpoll_maintenance_job_last_run_success",
            "1 when the job's last run succeeded, 0 when it failed.",
            |r, _| Some(if r.last_error.is_some() { 0.0 } else { 1.0 }),
        ),
        (
            "regpoll_maintenance_job_last_run_age_seconds",
            "Seconds since the job's last run started.",
            |r, now| crate::history::jobs::age(r.last_run, now),
        ),
        (
            "regpoll_maintenance_job_last_success_age_seconds",
            "Seconds since the job's last successful run started (absent when none did).",
            |r, now| crate::history::jobs::age(r.last_success, now),
        ),
        (
            "regpoll_maintenance_job_rows",
            "Rows the job's last successful run wrote (rollup buckets) or deleted (expired rows).",
            |r, _| Some(r.rows as f64),
        ),
    ];
    for (name, help, figure) in families {
        t.family(name, "gauge", help);
        for (job, run) in runs {
            if let Some(v) = figure(run, now) {
                t.sample(name, &[("job", job.name())], v);
            }
        }
    }
}

/// The cluster as this instance sees it (`run --cluster` only), as of the
/// last heartbeat; the heartbeat age as of `now`.
fn cluster(t: &mut Text, view: &ClusterView, fenced_polls: u64, now: DateTime<Utc>) {
    let snap = view.snapshot();
    t.single(
        "regpoll_cluster_instances",
        "gauge",
        "Live instances of the cluster (this one included), as of this instance's last heartbeat.",
        snap.members.len() as f64,
    );
    t.single(
        "regpoll_cluster_links_owned",
        "gauge",
        "Links (host:port or serial line) this instance owns and polls.",
        snap.links_owned as f64,
    );
    t.single(
        "regpoll_cluster_devices_owned",
        "gauge",
        "Devices behind the links this instance owns.",
        snap.devices_owned as f64,
    );
    t.single(
        "regpoll_cluster_fenced",
        "gauge",
        "1 while this instance sends no request because its lease was not renewed in time (or it has not joined yet), else 0.",
        if snap.fenced { 1.0 } else { 0.0 },
    );
    let h = &view.handovers;
    t.family(
        "regpoll_cluster_handovers_total",
        "counter",
        "Ownership changes of links at this instance, by kind: acquired (taken, after a release, a takeover or unowned), taken_over (of those, from an instance whose lease had expired), released (given up on purpose), fenced (times this instance lost its lease).",
    );
    for (kind, counter) in [
        ("acquired", &h.acquired),
        ("taken_over", &h.taken_over),
        ("released", &h.released),
        ("fenced", &h.fenced),
    ] {
        t.sample(
            "regpoll_cluster_handovers_total",
            &[("kind", kind)],
            Handovers::get(counter) as f64,
        );
    }
    t.single(
        "regpoll_cluster_fenced_polls_total",
        "counter",
        "Polls skipped or cut short because this instance's lease fence was closed.",
        fenced_polls as f64,
    );
    if let Some(at) = snap.renewed_at {
        t.single(
            "regpoll_cluster_heartbeat_age_seconds",
            "gauge",
            "Seconds since this instance last renewed its lease (absent before the first renewal).",
            (now - at).to_std().unwrap_or_default().as_secs_f64(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_histograms_end_with_inf() {
        let mut t = Text::default();
        let h = crate::telemetry::Histogram::new(&[0.5]);
        h.record(std::time::Duration::from_millis(100));
        t.histogram("x_seconds", &[("endpoint", "a\"b\\c")], &h.snapshot());
        assert!(
            t.0.contains("x_seconds_bucket{endpoint=\"a\\\"b\\\\c\",le=\"0.5\"} 1"),
            "{}",
            t.0
        );
        assert!(t.0.contains("le=\"+Inf\"} 1"), "{}", t.0);
        assert!(
            t.0.contains("x_seconds_count{endpoint=\"a\\\"b\\\\c\"} 1"),
            "{}",
            t.0
        );
    }

    /// The value of the sample whose line starts with `start`.
    fn sample(text: &str, start: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{start}` in\n{text}"))
    }

    #[test]
    fn cluster_metrics_show_members_ownership_handovers_and_heartbeat_age() {
        let view = crate::api::cluster::tests::two_instances();
        view.handovers
            .fenced
            .store(2, std::sync::atomic::Ordering::Relaxed);
        let renewed = view.snapshot().renewed_at.unwrap();
        let mut t = Text::default();
        cluster(
            &mut t,
            &view,
            6,
            renewed + chrono::Duration::milliseconds(1500),
        );
        let text = t.0;
        assert_eq!(sample(&text, "regpoll_cluster_instances "), 2.0);
        assert_eq!(sample(&text, "regpoll_cluster_links_owned "), 2.0);
        assert_eq!(sample(&text, "regpoll_cluster_devices_owned "), 5.0);
        assert_eq!(sample(&text, "regpoll_cluster_fenced "), 0.0);
        for (kind, n) in [
            ("acquired", 3.0),
            ("taken_over", 1.0),
            ("released", 1.0),
            ("fenced", 2.0),
        ] {
            let line = format!("regpoll_cluster_handovers_total{{kind=\"{kind}\"}} ");
            assert_eq!(sample(&text, &line), n, "{kind}");
        }
        assert_eq!(sample(&text, "regpoll_cluster_fenced_polls_total "), 6.0);
        assert_eq!(sample(&text, "regpoll_cluster_heartbeat_age_seconds "), 1.5);
        // Each family declared once, with its type, before its samples.
        for (family, kind) in [
            ("regpoll_cluster_instances", "gauge"),
            ("regpoll_cluster_handovers_total", "counter"),
            ("regpoll_cluster_fenced_polls_total", "counter"),
            ("regpoll_cluster_heartbeat_age_seconds", "gauge"),
        ] {
            let declared = format!("# TYPE {family} {kind}");
            assert_eq!(text.matches(&declared).count(), 1, "{family}:\n{text}");
            assert!(
                text.find(&declared) < text.find(&format!("\n{family}")),
                "{text}"
            );
        }
    }

    #[test]
    fn a_fenced_instance_that_never_renewed_has_no_heartbeat_age() {
        let view = crate::cluster::ClusterView::new(
            crate::api::cluster::tests::two_instances().settings.clone(),
        );
        let mut t = Text::default();
        cluster(&mut t, &view, 0, Utc::now());
        assert_eq!(sample(&t.0, "regpoll_cluster_fenced "), 1.0);
        assert_eq!(sample(&t.0, "regpoll_cluster_instances "), 0.0);
        assert!(!t.0.contains("heartbeat_age"), "{}", t.0);
    }

    #[test]
    fn own_process_usage_is_readable() {
        let (cpu, rss) = process_usage().expect("/proc/self/stat");
        assert!(cpu >= 0.0);
        assert!(rss > 1 << 20, "rss {rss}");
    }
}
