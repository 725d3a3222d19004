//! The report: every scenario's figures in one table, and each target
//! checked against them.

use std::fmt::Write as _;

use serde_json::Value as Json;

/// Targets of the benchmark issue, checked by `report`.
pub const TARGET_LATENESS_P99_MS: f64 = 5.0;
pub const TARGET_CPU_US_PER_READING: f64 = 2.0;
pub const TARGET_RSS_KB_PER_DEVICE: f64 = 4.0;
pub const TARGET_REDIS_P99_MS: f64 = 10.0;
pub const TARGET_WRITER_RATIO: f64 = 0.9;
/// The status page (issue 21): its summary painted within 2 s of the
/// browser's start at 10,000 devices, and a refresh costing the server a
/// fixed number of requests (`/api/fleet`, `/ready`, `/api/latest`, and
/// `/api/buckets` when the page's devices change or every 30 s).
pub const TARGET_FIRST_PAINT_MS: f64 = 2000.0;
pub const TARGET_REQUESTS_PER_REFRESH: f64 = 4.0;
/// The cluster (issue 23): the instances' polls together within this share
/// of the fleet's firings (more would be a device polled twice, fewer one
/// left out). A join must lose no firing of a moved device and poll none
/// twice.
pub const TARGET_CLUSTER_POLLS_SHARE: f64 = 0.01;

fn f(v: &Json, key: &str) -> Option<f64> {
    v.get(key).and_then(Json::as_f64)
}

/// How a figure stands against its target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Met,
    Missed,
    /// Missed, but the bare request loop alone (the same requests at the
    /// same rate and nothing else) is already over the target: no poller
    /// making those requests on this machine can meet it. Not a failure.
    OutOfReach,
}

impl Verdict {
    fn of(ok: bool) -> Verdict {
        if ok { Verdict::Met } else { Verdict::Missed }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Met => "ok",
            Verdict::Missed => "MISSED",
            Verdict::OutOfReach => {
                "out of reach on this machine (the bare request loop alone costs more)"
            }
        }
    }
}

/// The results table (Markdown) of the given scenario results, with the
/// targets checked; returns the table and whether every target was met.
pub fn report(results: &[Json]) -> (String, bool) {
    let mut out = String::new();
    let mut all_ok = true;
    let fleets: Vec<&Json> = results.iter().filter(|r| r["kind"] == "fleet").collect();
    if !fleets.is_empty() {
        let _ = writeln!(
            out,
            "| scenario | devices × regs @ every | polls/s | Modbus req/s | readings/s written | lateness p50 / p99 / p99.9 / max (ms) | overruns | missed | CPU s per 1M readings | CPU µs/reading | bare request loop µs/reading | bare loop + sinks' bytes µs/reading | peak RSS | KiB/device | RSS at end | response→Redis p99 (ms) |"
        );
        let _ = writeln!(
            out,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &fleets {
            let l = &r["lateness"];
            let num = |v: &Json, k: &str| f(v, k).map_or("—".into(), |x| format!("{x:.2}"));
            let _ = writeln!(
                out,
                "| {} | {} × {} @ {}s | {:.0} | {:.0} | {:.0} | {} / {} / {} / {} | {} | {} | {:.2} | {:.2} | {} | {} | {:.1} MiB | {:.2} | {:.1} MiB | {} |",
                r["scenario"].as_str().unwrap_or("?"),
                r["devices"],
                r["registers_per_device"],
                r["every_s"],
                f(r, "polls_per_s").unwrap_or(0.0),
                f(r, "modbus_requests_per_s").unwrap_or(0.0),
                f(r, "rows_written_per_s").unwrap_or(0.0),
                num(l, "p50_ms"),
                num(l, "p99_ms"),
                num(l, "p999_ms"),
                num(l, "max_ms"),
                r["overruns"],
                r["missed_polls"],
                f(r, "cpu_s_per_million_readings").unwrap_or(f64::NAN),
                f(r, "cpu_us_per_reading").unwrap_or(f64::NAN),
                num(&r["floor"], "cpu_us_per_reading"),
                num(&r["floor"]["with_sinks"], "cpu_us_per_reading"),
                f(r, "peak_rss_kib").unwrap_or(0.0) / 1024.0,
                f(r, "peak_rss_kib_per_device").unwrap_or(f64::NAN),
                f(r, "rss_kib").unwrap_or(0.0) / 1024.0,
                num(&r["redis_visible"], "p99_ms"),
            );
        }
    }
    if !fleets.is_empty() {
        let _ = writeln!(
            out,
            "\nWhat the shared box was doing in the same windows:\n\n| scenario | some task waiting for a CPU (% of the window) | regpoll CPU % | regpoll threads' run-queue wait (ms/s) | simulator CPU % | simulator's run-queue wait (ms/s) | history write p99 / max (ms) |\n|---|---|---|---|---|---|---|"
        );
        for r in &fleets {
            let b = &r["box"];
            let num = |v: &Json, k: &str| f(v, k).map_or("—".into(), |x| format!("{x:.1}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} / {} |",
                r["scenario"].as_str().unwrap_or("?"),
                num(b, "cpu_pressure_some_pct"),
                num(b, "regpoll_cpu_pct"),
                num(b, "regpoll_run_queue_wait_ms_per_s"),
                num(b, "simulator_cpu_pct"),
                num(b, "simulator_run_queue_wait_ms_per_s"),
                num(&r["history_write"], "p99_ms"),
                num(&r["history_write"], "max_ms"),
            );
        }
    }
    let paged: Vec<&Json> = fleets
        .iter()
        .copied()
        .filter(|r| r["page"].is_object())
        .collect();
    if !paged.is_empty() {
        let _ = writeln!(
            out,
            "\nThe status page open on the fleet:\n\n| scenario | first paint with the summary (ms) | refreshes | requests per refresh | requests by route | lateness p99 page open / blank page (ms) | mean answer ms by route |\n|---|---|---|---|---|---|---|"
        );
        for r in &paged {
            let p = &r["page"];
            let by_route = |v: &Json| {
                v.as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, n)| n.as_f64().is_some_and(|n| n > 0.0))
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {} | {:.2} / {:.2} | {} |",
                r["scenario"].as_str().unwrap_or("?"),
                p["first_paint_ms"],
                p["refreshes"],
                f(p, "requests_per_refresh").unwrap_or(f64::NAN),
                by_route(&p["requests"]),
                f(&p["lateness"], "p99_ms").unwrap_or(f64::NAN),
                f(&p["lateness_blank_page"], "p99_ms").unwrap_or(f64::NAN),
                by_route(&p["mean_answer_ms"]),
            );
        }
    }
    for r in results.iter().filter(|r| r["kind"] == "cluster") {
        cluster_tables(&mut out, r);
    }
    for r in results.iter().filter(|r| r["kind"] == "ingest") {
        let _ = writeln!(
            out,
            "\n| scenario | rows | regpoll writer rows/s (median) | psql binary COPY rows/s (median) | writer ÷ psql (median of rounds) | writer CPU µs/row |\n|---|---|---|---|---|---|\n| {} | {} | {:.0} | {:.0} | {:.1} % | {:.2} |",
            r["scenario"].as_str().unwrap_or("?"),
            r["rows"],
            f(r, "writer_rows_per_s").unwrap_or(0.0),
            f(r, "psql_rows_per_s").unwrap_or(0.0),
            f(r, "writer_vs_psql").unwrap_or(0.0) * 100.0,
            f(r, "writer_cpu_us_per_row").unwrap_or(f64::NAN),
        );
    }
    for r in results.iter().filter(|r| r["kind"] == "storage") {
        storage_tables(&mut out, r);
    }
    let _ = writeln!(out, "\nTargets:");
    let mut judge = |what: String, verdict: Verdict| {
        all_ok &= verdict != Verdict::Missed;
        let _ = writeln!(out, "- {what}: {}", verdict.text());
    };
    for r in &fleets {
        let name = r["scenario"].as_str().unwrap_or("?");
        let cpu = f(r, "cpu_us_per_reading").unwrap_or(f64::INFINITY);
        let alone = f(&r["floor"], "cpu_us_per_reading");
        let floor = match (alone, f(&r["floor"]["with_sinks"], "cpu_us_per_reading")) {
            (Some(x), Some(y)) => format!(
                " (a bare request loop alone: {x:.2}; with the sinks' bytes sent as well: {y:.2})"
            ),
            (Some(x), None) => format!(" (a bare request loop alone: {x:.2})"),
            _ => String::new(),
        };
        let verdict = if cpu <= TARGET_CPU_US_PER_READING {
            Verdict::Met
        } else if alone.is_some_and(|x| x > TARGET_CPU_US_PER_READING) {
            Verdict::OutOfReach
        } else {
            Verdict::Missed
        };
        judge(
            format!("({name}) CPU {cpu:.2} µs/reading ≤ {TARGET_CPU_US_PER_READING}{floor}"),
            verdict,
        );
        if let Some(p99) = f(&r["redis_visible"], "p99_ms") {
            judge(
                format!("({name}) response→Redis p99 {p99:.2} ms ≤ {TARGET_REDIS_P99_MS} ms"),
                Verdict::of(p99 <= TARGET_REDIS_P99_MS),
            );
        }
        judge(
            format!("({name}) rows lost {} = 0", r["rows_lost"]),
            Verdict::of(r["rows_lost"] == 0),
        );
        let o = &r["outage"];
        if o.is_object() {
            judge(
                format!(
                    "({name}) database unreachable {} s: polls skipped {} = 0, readings lost {} = 0, rows in the database {} = rows written {}; peak RSS {} KiB, spool {} bytes written (peak {}), replayed in {} s",
                    o["length_s"],
                    r["missed_polls"],
                    r["rows_lost"],
                    r["rows_in_database"],
                    r["rows_written_total"],
                    r["peak_rss_kib"],
                    o["spool_bytes_written"],
                    o["spool_peak_bytes"],
                    o["replay_s"]
                ),
                Verdict::of(
                    f(r, "missed_polls") == Some(0.0)
                        && r["rows_lost"] == 0
                        && r["rows_in_database"] == r["rows_written_total"],
                ),
            );
        }
        let p = &r["page"];
        if p.is_object() {
            let paint = f(p, "first_paint_ms").unwrap_or(f64::INFINITY);
            judge(
                format!(
                    "({name}) first paint with the summary {paint:.0} ms ≤ {TARGET_FIRST_PAINT_MS} ms"
                ),
                Verdict::of(paint <= TARGET_FIRST_PAINT_MS),
            );
            let per = f(p, "requests_per_refresh").unwrap_or(f64::INFINITY);
            judge(
                format!(
                    "({name}) {per:.2} requests per refresh ≤ {TARGET_REQUESTS_PER_REFRESH}, whatever the fleet size"
                ),
                Verdict::of(per <= TARGET_REQUESTS_PER_REFRESH),
            );
            let open = f(&p["lateness"], "p99_ms").unwrap_or(f64::INFINITY);
            let blank = f(&p["lateness_blank_page"], "p99_ms").unwrap_or(0.0);
            judge(
                format!(
                    "({name}) lateness p99 with the page open {open:.2} ms ≤ 2 × {blank:.2} ms with a blank page"
                ),
                Verdict::of(open <= 2.0 * blank),
            );
        }
        if r["devices"].as_u64() >= Some(10_000) {
            let p99 = f(&r["lateness"], "p99_ms").unwrap_or(f64::INFINITY);
            judge(
                format!("({name}) missed polls {} = 0", r["missed_polls"]),
                Verdict::of(f(r, "missed_polls") == Some(0.0)),
            );
            // Through an outage polls must stay within twice the normal
            // lateness (scenario c holds the normal p99 to its target); the
            // memory the writer holds meanwhile is reported, not judged.
            let lateness = if o.is_object() {
                2.0 * TARGET_LATENESS_P99_MS
            } else {
                TARGET_LATENESS_P99_MS
            };
            judge(
                format!("({name}) lateness p99 {p99:.2} ms ≤ {lateness} ms"),
                Verdict::of(p99 <= lateness),
            );
            let kib = f(r, "peak_rss_kib_per_device").unwrap_or(f64::INFINITY);
            // The per-device memory target is scenario c's: an outage's
            // backlog and the API's answers to an open page are reported
            // in the table, not judged against it.
            if !o.is_object() && !p.is_object() {
                judge(
                    format!("({name}) peak RSS {kib:.2} KiB/device ≤ {TARGET_RSS_KB_PER_DEVICE}"),
                    Verdict::of(kib <= TARGET_RSS_KB_PER_DEVICE),
                );
            }
        }
    }
    for r in results.iter().filter(|r| r["kind"] == "cluster") {
        let name = r["scenario"].as_str().unwrap_or("?");
        let w = &r["window"];
        let (polls, firings) = (
            f(w, "polls_per_s").unwrap_or(0.0),
            f(w, "expected_polls_per_s").unwrap_or(f64::NAN),
        );
        judge(
            format!(
                "({name}) polls summed over the instances {polls:.0}/s within {:.0} % of the fleet's {firings:.0} firings/s (each device polled by one instance)",
                TARGET_CLUSTER_POLLS_SHARE * 100.0
            ),
            Verdict::of((polls - firings).abs() <= TARGET_CLUSTER_POLLS_SHARE * firings),
        );
        let read = f(&r["takeover"]["first_reading_s"], "max").unwrap_or(f64::INFINITY);
        let bound = f(r, "takeover_bound_s").unwrap_or(0.0);
        judge(
            format!(
                "({name}) every device of a killed instance read again within {read:.2} s ≤ lease + heartbeat + interval {bound:.1} s (worst of {} kills)",
                r["kills"].as_array().map_or(0, Vec::len)
            ),
            Verdict::of(read <= bound),
        );
        let j = &r["join"];
        judge(
            format!(
                "({name}) a join moved links only to the newcomer ({} of {} elsewhere)",
                j["links_moved_elsewhere"], j["links_moved"]
            ),
            Verdict::of(j["links_moved_elsewhere"] == 0),
        );
        judge(
            format!(
                "({name}) a join lost no firing of a moved device ({} lost) and polled none twice ({} twice)",
                j["firings_lost"], j["firings_polled_twice"]
            ),
            Verdict::of(j["firings_lost"] == 0 && j["firings_polled_twice"] == 0),
        );
    }
    for r in results.iter().filter(|r| r["kind"] == "ingest") {
        let ratio = f(r, "writer_vs_psql").unwrap_or(0.0);
        judge(
            format!(
                "({}) writer at {:.1} % of psql binary COPY ≥ {:.0} %",
                r["scenario"].as_str().unwrap_or("?"),
                ratio * 100.0,
                TARGET_WRITER_RATIO * 100.0
            ),
            Verdict::of(ratio >= TARGET_WRITER_RATIO),
        );
    }
    for r in results.iter().filter(|r| r["kind"] == "storage") {
        let name = r["scenario"].as_str().unwrap_or("?");
        let legs = r["legs"].as_array().map_or(&[][..], Vec::as_slice);
        // A result cut short has no leg: that is a miss, not a pass.
        if legs.is_empty() {
            judge(format!("({name}) a leg measured"), Verdict::Missed);
        }
        for leg in legs {
            for db in ["postgres", "sqlite"] {
                let stored = &leg[db]["rows_stored"];
                judge(
                    format!(
                        "({name}, {}, {db}) rows stored {stored} = rows generated {}",
                        leg["leg"].as_str().unwrap_or("?"),
                        leg["rows"]
                    ),
                    Verdict::of(stored.as_u64().is_some() && stored == &leg["rows"]),
                );
            }
        }
    }
    (out, all_ok)
}

/// A byte count per reading, or what stands in its place.
fn per_reading(sizes: &Json, part: &str) -> String {
    f(&sizes["bytes_per_reading"], part).map_or("—".into(), |x| format!("{x:.1}"))
}

/// One line of the storage table: bytes and bytes per reading.
fn storage_row(out: &mut String, leg: &str, what: &str, rows: &Json, sizes: &Json, fill: &Json) {
    let bytes = |k: &str| sizes[k].as_i64().map_or("—".into(), |b| b.to_string());
    let _ = writeln!(
        out,
        "| {leg} | {what} | {rows} | {} | {} | {} | {} | {} / {} / **{}** |",
        f(fill, "rows_per_s").map_or("—".into(), |x| format!("{x:.0}")),
        bytes("table_bytes"),
        bytes("index_bytes"),
        bytes("total_bytes"),
        per_reading(sizes, "table"),
        per_reading(sizes, "index"),
        per_reading(sizes, "total"),
    );
}

/// A line that says why there is no figure.
fn storage_gap(out: &mut String, leg: &str, what: &str, why: &str) {
    let _ = writeln!(out, "| {leg} | {what} | {why} | | | | | |");
}

/// The storage scenario's table: each database's bytes per reading, leg by
/// leg (all readings, with a deadband).
fn storage_tables(out: &mut String, r: &Json) {
    let d = &r["data_set"];
    let _ = writeln!(
        out,
        "\nStorage ({}): {} readings, {} devices × {} registers every {} s over {} days ({} to {}), written through the history store in batches of {}:\n\n| leg | database | rows | rows/s written | table bytes | index bytes | total bytes | bytes per reading: table / index / **total** |\n|---|---|---|---|---|---|---|---|",
        r["scenario"].as_str().unwrap_or("?"),
        d["rows"],
        d["devices"],
        d["registers_per_device"],
        d["every_s"],
        d["days"],
        d["from"].as_str().unwrap_or("?"),
        d["to"].as_str().unwrap_or("?"),
        d["batch_rows"],
    );
    for leg in r["legs"].as_array().into_iter().flatten() {
        let name = leg["leg"].as_str().unwrap_or("?");
        // Per row stored; with a deadband fewer rows are stored than
        // readings polled.
        let stored = format!(
            "{} of {} ({:.1} %); bytes below are per row stored",
            leg["rows"],
            leg["readings"],
            f(leg, "share_stored").unwrap_or(f64::NAN) * 100.0
        );
        storage_gap(out, name, "readings polled → rows stored", &stored);
        let pg = &leg["postgres"];
        let rows = &pg["rows_stored"];
        if pg["plain"].is_object() {
            storage_row(
                out,
                name,
                "PostgreSQL, plain table",
                rows,
                &pg["plain"],
                &pg["fill"],
            );
        } else {
            storage_gap(
                out,
                name,
                "PostgreSQL, plain table",
                "not measured: the server has TimescaleDB (see the hypertable)",
            );
        }
        let h = &pg["hypertable"];
        if h.is_object() {
            let chunks = format!("TimescaleDB, {} chunks uncompressed", h["chunks"]);
            storage_row(out, name, &chunks, rows, &h["uncompressed"], &pg["fill"]);
            storage_row(
                out,
                name,
                "TimescaleDB, compressed",
                rows,
                &h["compressed"],
                &Json::Null,
            );
        } else {
            for what in ["TimescaleDB, uncompressed", "TimescaleDB, compressed"] {
                storage_gap(out, name, what, "not installed");
            }
        }
        rollup_rows(out, name, "PostgreSQL", &pg["rollups"]);
        let sq = &leg["sqlite"];
        storage_row(
            out,
            name,
            "SQLite, register_readings (dbstat)",
            &sq["rows_stored"],
            &sq["sizes"],
            &sq["fill"],
        );
        rollup_rows(out, name, "SQLite", &sq["rollups"]);
        storage_row(
            out,
            name,
            "SQLite, the whole file after a checkpoint (with the rollups and the registry)",
            &sq["rows_stored"],
            &sq["file"],
            &Json::Null,
        );
    }
}

/// The lines of a database's rollups: their own rows, and their bytes
/// shared out over the raw readings (what each rollup adds to a reading).
fn rollup_rows(out: &mut String, leg: &str, database: &str, rollups: &Json) {
    for rollup in rollups.as_array().into_iter().flatten() {
        let what = format!(
            "{database}, {} ({})",
            rollup["relation"].as_str().unwrap_or("?"),
            rollup["kind"].as_str().unwrap_or("?")
        );
        match rollup["kind"].as_str() {
            Some("absent") => storage_gap(out, leg, &what, "does not exist on this build"),
            Some("view") => storage_gap(out, leg, &what, "a view: nothing stored"),
            _ => storage_row(
                out,
                leg,
                &format!("{what}, added to each reading"),
                &rollup["rows"],
                &rollup["sizes"],
                &Json::Null,
            ),
        }
    }
}

/// The cluster scenario's tables: the steady state, each kill, the join.
fn cluster_tables(out: &mut String, r: &Json) {
    let num = |v: &Json, k: &str| f(v, k).map_or("—".into(), |x| format!("{x:.2}"));
    let w = &r["window"];
    let by_instance = |key: &str| {
        w["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| format!("{} {}", i["instance"].as_str().unwrap_or("?"), num(i, key)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let split = r["split"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(id, s)| format!("{id} {}", s["devices"]))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "\nThe cluster ({} × `regpoll run --cluster` on one PostgreSQL; lease {} s, heartbeat {} s, fence margin {} s):\n\n| scenario | devices × regs @ every | links (simulator ports × units) | settled after (s) | devices per instance | polls/s summed (firings/s) | CPU µs/reading per instance | one plain instance at the same load: devices, CPU µs/reading |\n|---|---|---|---|---|---|---|---|",
        r["instances"], r["lease_s"], r["heartbeat_s"], r["fence_margin_s"]
    );
    let _ = writeln!(
        out,
        "| {} | {} × {} @ {}s | {} ({} × {}) | {} | {} | {:.0} ({:.0}) | {} | {}, {} |",
        r["scenario"].as_str().unwrap_or("?"),
        r["devices"],
        r["registers_per_device"],
        r["every_s"],
        r["links"],
        r["simulator_ports"],
        r["units_per_port"],
        num(r, "settle_s"),
        split,
        f(w, "polls_per_s").unwrap_or(0.0),
        f(w, "expected_polls_per_s").unwrap_or(0.0),
        by_instance("cpu_us_per_reading"),
        r["single"]["devices"],
        num(&r["single"], "cpu_us_per_reading"),
    );
    let _ = writeln!(
        out,
        "\n| kill -9 | instance | links | devices | links owned again after (s) | every device read again after (s) | largest gap of its devices (s) | settled again after its restart (s) |\n|---|---|---|---|---|---|---|---|"
    );
    for (n, k) in r["kills"].as_array().into_iter().flatten().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            n + 1,
            k["instance"].as_str().unwrap_or("?"),
            k["links"],
            k["devices"],
            num(k, "ownership_s"),
            num(k, "first_reading_s"),
            num(k, "largest_gap_s"),
            num(k, "resettle_s"),
        );
    }
    let t = &r["takeover"];
    let _ = writeln!(
        out,
        "\nTakeover, p50 / max over the kills: links owned again {} / {} s; every device read again {} / {} s; largest gap {} / {} s.",
        num(&t["ownership_s"], "p50"),
        num(&t["ownership_s"], "max"),
        num(&t["first_reading_s"], "p50"),
        num(&t["first_reading_s"], "max"),
        num(&t["largest_gap_s"], "p50"),
        num(&t["largest_gap_s"], "max"),
    );
    let j = &r["join"];
    let _ = writeln!(
        out,
        "\n| join | devices moved (share) | links moved | of them not to the newcomer | settled after (s) | largest gap of a moved device (s) | firings lost | firings polled twice |\n|---|---|---|---|---|---|---|---|\n| {} | {} ({:.1} %) | {} | {} | {} | {} | {} | {} |",
        j["instance"].as_str().unwrap_or("?"),
        j["devices_moved"],
        f(j, "share_moved").unwrap_or(f64::NAN) * 100.0,
        j["links_moved"],
        j["links_moved_elsewhere"],
        num(j, "settle_s"),
        num(j, "largest_gap_s"),
        j["firings_lost"],
        j["firings_polled_twice"],
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn report_checks_the_targets() {
        let fleet = json!({"kind":"fleet","scenario":"c","devices":10000,"registers_per_device":10,"every_s":1.0,
            "polls_per_s":10000.0,"modbus_requests_per_s":10000.0,"rows_written_per_s":100000.0,
            "lateness":{"p50_ms":1.0,"p99_ms":2.0,"p999_ms":3.0,"max_ms":4.0},"overruns":0.0,"missed_polls":0.0,
            "cpu_s_per_million_readings":1.5,"cpu_us_per_reading":1.5,"peak_rss_kib":30000.0,
            "peak_rss_kib_per_device":3.0,"redis_visible":{"p99_ms":4.0},"rows_lost":0,
            "box":{"cpu_pressure_some_pct":21.25,"regpoll_cpu_pct":31.0,"regpoll_run_queue_wait_ms_per_s":48.5,
                "simulator_cpu_pct":19.0,"simulator_run_queue_wait_ms_per_s":12.0},
            "history_write":{"p99_ms":54.3,"max_ms":63.9}});
        let (table, ok) = report(std::slice::from_ref(&fleet));
        assert!(ok, "{table}");
        assert!(
            table.contains("| c | 21.2 | 31.0 | 48.5 | 19.0 | 12.0 | 54.3 / 63.9 |"),
            "{table}"
        );
        // The page scenario: its table, and its own targets judged.
        let mut paged = fleet.clone();
        paged["scenario"] = json!("page");
        paged["page"] = json!({"first_paint_ms": 1213, "refreshes": 15.0,
            "requests": {"/api/fleet": 15.0, "/ready": 15.0, "/api/latest": 15.0, "/api/buckets": 1.0, "/api/readings": 0.0},
            "requests_per_refresh": 3.07, "lateness": {"p99_ms": 4.99}, "lateness_blank_page": {"p99_ms": 4.74},
            "mean_answer_ms": {"/api/fleet": 9.5}});
        let (table, ok) = report(std::slice::from_ref(&paged));
        assert!(ok, "{table}");
        assert!(
            table.contains("| page | 1213 | 15.0 | 3.07 | /api/fleet 15.0, /ready 15.0, /api/latest 15.0, /api/buckets 1.0 | 4.99 / 4.74 | /api/fleet 9.5 |"),
            "{table}"
        );
        paged["page"]["first_paint_ms"] = json!(2500);
        paged["page"]["lateness"]["p99_ms"] = json!(9.6);
        let (table, ok) = report(&[paged]);
        assert!(!ok);
        assert!(
            table.contains("first paint with the summary 2500 ms ≤ 2000 ms: MISSED"),
            "{table}"
        );
        assert!(
            table.contains(
                "lateness p99 with the page open 9.60 ms ≤ 2 × 4.74 ms with a blank page: MISSED"
            ),
            "{table}"
        );
        let mut slow = fleet.clone();
        slow["lateness"]["p99_ms"] = json!(7.5);
        let (table, ok) = report(&[slow]);
        assert!(!ok);
        assert!(
            table.contains("lateness p99 7.50 ms ≤ 5 ms: MISSED"),
            "{table}"
        );
        // A missed CPU target names the floor the bare request loop measured.
        let mut costly = fleet.clone();
        costly["cpu_us_per_reading"] = json!(4.25);
        costly["floor"] = json!({"cpu_us_per_reading": 1.75});
        let (table, ok) = report(&[costly.clone()]);
        assert!(!ok);
        assert!(
            table.contains("CPU 4.25 µs/reading ≤ 2 (a bare request loop alone: 1.75): MISSED"),
            "{table}"
        );
        assert!(table.contains("| 4.25 | 1.75 | — |"), "{table}");
        costly["floor"]["with_sinks"] = json!({"cpu_us_per_reading": 1.95});
        let (table, _) = report(&[costly]);
        assert!(
            table.contains("(a bare request loop alone: 1.75; with the sinks' bytes sent as well: 1.95): MISSED"),
            "{table}"
        );
        assert!(table.contains("| 4.25 | 1.75 | 1.95 |"), "{table}");
        // When the bare loop alone is over the target, no poller can meet
        // it here: said so, and not counted as a miss.
        let mut slow_rate = fleet.clone();
        slow_rate["cpu_us_per_reading"] = json!(5.0);
        slow_rate["floor"] = json!({"cpu_us_per_reading": 2.35});
        let (table, ok) = report(&[slow_rate]);
        assert!(ok, "{table}");
        assert!(
            table.contains("CPU 5.00 µs/reading ≤ 2 (a bare request loop alone: 2.35): out of reach on this machine"),
            "{table}"
        );
        // An outage run: its figures in one line, met only without a
        // skipped poll or a lost reading and with every row stored.
        let mut outage = fleet.clone();
        outage["scenario"] = json!("outage");
        outage["rows_in_database"] = json!(5_000_000);
        outage["rows_written_total"] = json!(5_000_000);
        outage["outage"] = json!({"length_s": 33.0, "spool_bytes_written": 90_000_000, "spool_peak_bytes": 80_000_000, "replay_s": 12.5});
        // Twice the normal lateness is allowed through an outage, and the
        // backlog's memory is reported, not judged.
        outage["lateness"]["p99_ms"] = json!(7.5);
        outage["peak_rss_kib_per_device"] = json!(6.9);
        let (table, ok) = report(std::slice::from_ref(&outage));
        assert!(ok, "{table}");
        assert!(
            table.contains("(outage) lateness p99 7.50 ms ≤ 10 ms: ok"),
            "{table}"
        );
        assert!(!table.contains("(outage) peak RSS"), "{table}");
        assert!(
            table.contains("(outage) database unreachable 33.0 s: polls skipped 0.0 = 0, readings lost 0 = 0, rows in the database 5000000 = rows written 5000000; peak RSS 30000.0 KiB, spool 90000000 bytes written (peak 80000000), replayed in 12.5 s: ok"),
            "{table}"
        );
        outage["missed_polls"] = json!(255_887.0);
        let (table, ok) = report(&[outage]);
        assert!(!ok, "{table}");
    }
    fn storage_result() -> Json {
        let sizes = |table: i64, index: i64, rows: f64| {
            json!({"table_bytes": table, "index_bytes": index, "total_bytes": table + index,
                   "bytes_per_reading": {"table": table as f64 / rows, "index": index as f64 / rows,
                                         "total": (table + index) as f64 / rows}})
        };
        json!({"kind": "storage", "scenario": "storage",
            "data_set": {"rows": 1000, "devices": 4, "registers_per_device": 10, "every_s": 1.0, "days": 3,
                         "from": "2026-12-02T10:00:00+00:00", "to": "2026-12-05T10:00:00+00:00", "batch_rows": 5000},
            "legs": [
                {"leg": "all readings", "rows": 1000, "readings": 1000, "share_stored": 1.0,
                 "postgres": {"timescaledb": false, "rows_stored": 1000, "fill": {"rows_per_s": 250000.0},
                              "plain": sizes(60_000, 32_500, 1000.0), "hypertable": null,
                              "rollups": [{"relation": "register_readings_1m", "kind": "absent", "rows": null, "sizes": null},
                                          {"relation": "register_readings_hourly", "kind": "table", "rows": 12,
                                           "sizes": sizes(8192, 16384, 1000.0)}]},
                 "sqlite": {"rows_stored": 1000, "fill": {"rows_per_s": 90000.0}, "sizes": sizes(31_000, 0, 1000.0),
                            "file": {"total_bytes": 40_960, "bytes_per_reading": {"total": 40.96}},
                            "rollups": [{"relation": "register_readings_1m", "kind": "table", "rows": 160,
                                         "sizes": sizes(4096, 0, 1000.0)}]}},
                {"leg": "deadband 5 + heartbeat 15m", "rows": 200, "readings": 1000, "share_stored": 0.2,
                 "postgres": {"timescaledb": false, "rows_stored": 200, "fill": {"rows_per_s": 50000.0},
                              "plain": sizes(12_000, 6_500, 200.0), "hypertable": null, "rollups": []},
                 "sqlite": {"rows_stored": 200, "fill": {"rows_per_s": 40000.0}, "sizes": sizes(6_000, 0, 200.0),
                            "file": {"total_bytes": 12_288, "bytes_per_reading": {"total": 61.44}}, "rollups": []}}]})
    }

    #[test]
    fn storage_report_shows_bytes_per_reading_and_says_what_was_not_measured() {
        let (table, ok) = report(&[storage_result()]);
        assert!(ok, "{table}");
        assert!(
            table.contains("| all readings | PostgreSQL, plain table | 1000 | 250000 | 60000 | 32500 | 92500 | 60.0 / 32.5 / **92.5** |"),
            "{table}"
        );
        assert!(
            table.contains("| all readings | TimescaleDB, compressed | not installed |"),
            "{table}"
        );
        assert!(
            table.contains(
                "| all readings | PostgreSQL, register_readings_1m (absent) | does not exist on this build |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| all readings | PostgreSQL, register_readings_hourly (table), added to each reading | 12 | — | 8192 | 16384 | 24576 | 8.2 / 16.4 / **24.6** |"),
            "{table}"
        );
        assert!(
            table.contains("| all readings | SQLite, register_readings (dbstat) | 1000 | 90000 | 31000 | 0 | 31000 | 31.0 / 0.0 / **31.0** |"),
            "{table}"
        );
        assert!(
            table.contains("| all readings | SQLite, register_readings_1m (table), added to each reading | 160 | — | 4096 | 0 | 4096 | 4.1 / 0.0 / **4.1** |"),
            "{table}"
        );
        assert!(
            table.contains("| all readings | SQLite, the whole file after a checkpoint (with the rollups and the registry) | 1000 | — | — | — | 40960 | — / — / **41.0** |"),
            "{table}"
        );
        assert!(
            table.contains("| deadband 5 + heartbeat 15m | readings polled → rows stored | 200 of 1000 (20.0 %); bytes below are per row stored |"),
            "{table}"
        );
        assert!(
            table.contains("| deadband 5 + heartbeat 15m | PostgreSQL, plain table | 200 | 50000 | 12000 | 6500 | 18500 | 60.0 / 32.5 / **92.5** |"),
            "{table}"
        );
        assert!(
            table.contains("(storage, deadband 5 + heartbeat 15m, sqlite) rows stored 200 = rows generated 200: ok"),
            "{table}"
        );
        assert!(
            table.contains(
                "(storage, all readings, sqlite) rows stored 1000 = rows generated 1000: ok"
            ),
            "{table}"
        );
        // With TimescaleDB: the hypertable before and after compression,
        // and no plain-table figure.
        let mut ts = storage_result();
        let pg = &mut ts["legs"][0]["postgres"];
        pg["plain"] = Json::Null;
        pg["hypertable"] = json!({"chunks": 4,
            "uncompressed": {"table_bytes": 70_000, "index_bytes": 30_000, "total_bytes": 100_000,
                             "bytes_per_reading": {"table": 70.0, "index": 30.0, "total": 100.0}},
            "compressed": {"table_bytes": 4_000, "index_bytes": 1_000, "total_bytes": 5_000,
                           "bytes_per_reading": {"table": 4.0, "index": 1.0, "total": 5.0}}});
        let (table, _) = report(&[ts]);
        assert!(
            table.contains("| all readings | TimescaleDB, 4 chunks uncompressed | 1000 | 250000 | 70000 | 30000 | 100000 | 70.0 / 30.0 / **100.0** |"),
            "{table}"
        );
        assert!(
            table.contains("| all readings | TimescaleDB, compressed | 1000 | — | 4000 | 1000 | 5000 | 4.0 / 1.0 / **5.0** |"),
            "{table}"
        );
        assert!(
            table.contains("PostgreSQL, plain table | not measured: the server has TimescaleDB"),
            "{table}"
        );
        // A row lost in SQLite is a miss; so is a result with no leg.
        let mut lost = storage_result();
        lost["legs"][0]["sqlite"]["rows_stored"] = json!(999);
        let (table, ok) = report(&[lost]);
        assert!(!ok);
        assert!(
            table.contains("rows stored 999 = rows generated 1000: MISSED"),
            "{table}"
        );
        let (_, ok) = report(&[json!({"kind": "storage", "scenario": "storage"})]);
        assert!(!ok);
    }

    fn cluster_result() -> Json {
        json!({"kind":"cluster","scenario":"cluster","devices":3000,"registers_per_device":10,"every_s":1.0,
            "simulator_ports":300,"units_per_port":10,"links":300,"instances":3,"lease_s":5.0,"heartbeat_s":1.0,
            "fence_margin_s":1.0,"takeover_bound_s":7.0,"settle_s":3.25,
            "split":{"bench-1":{"links":98,"devices":980},"bench-2":{"links":104,"devices":1040},"bench-3":{"links":98,"devices":980}},
            "window":{"polls_per_s":2999.6,"expected_polls_per_s":3000.0,"links_moved":0,
                "instances":[{"instance":"bench-1","cpu_us_per_reading":4.5},{"instance":"bench-2","cpu_us_per_reading":4.25},{"instance":"bench-3","cpu_us_per_reading":4.75}]},
            "single":{"devices":1000,"cpu_us_per_reading":4.5},
            "kills":[{"instance":"bench-1","links":98,"devices":980,"ownership_s":5.1,"first_reading_s":5.9,"largest_gap_s":6.8,"resettle_s":2.5},
                     {"instance":"bench-2","links":104,"devices":1040,"ownership_s":5.5,"first_reading_s":6.4,"largest_gap_s":7.1,"resettle_s":2.0}],
            "takeover":{"ownership_s":{"p50":5.3,"max":5.5},"first_reading_s":{"p50":6.15,"max":6.4},"largest_gap_s":{"p50":6.95,"max":7.1}},
            "join":{"instance":"bench-4","devices_moved":760,"share_moved":0.2533,"links_moved":76,"links_moved_elsewhere":0,
                "settle_s":1.75,"largest_gap_s":1.02,"firings_lost":0,"firings_polled_twice":0}})
    }

    #[test]
    fn cluster_report_shows_each_kill_and_judges_its_own_targets() {
        let (table, ok) = report(&[cluster_result()]);
        assert!(ok, "{table}");
        assert!(
            table.contains("| cluster | 3000 × 10 @ 1.0s | 300 (300 × 10) | 3.25 | bench-1 980, bench-2 1040, bench-3 980 | 3000 (3000) | bench-1 4.50, bench-2 4.25, bench-3 4.75 | 1000, 4.50 |"),
            "{table}"
        );
        assert!(
            table.contains("| 2 | bench-2 | 104 | 1040 | 5.50 | 6.40 | 7.10 | 2.00 |"),
            "{table}"
        );
        assert!(
            table
                .contains("links owned again 5.30 / 5.50 s; every device read again 6.15 / 6.40 s"),
            "{table}"
        );
        assert!(
            table.contains("| bench-4 | 760 (25.3 %) | 76 | 0 | 1.75 | 1.02 | 0 | 0 |"),
            "{table}"
        );
        assert!(!table.contains("MISSED"), "{table}");
        // A device polled twice shows as more polls than firings.
        let mut twice = cluster_result();
        twice["window"]["polls_per_s"] = json!(3100.0);
        let (table, ok) = report(&[twice]);
        assert!(!ok);
        assert!(
            table.contains("polls summed over the instances 3100/s within 1 % of the fleet's 3000 firings/s (each device polled by one instance): MISSED"),
            "{table}"
        );
        // A takeover slower than the bound, a link moved between old
        // members, a lost firing: each its own miss.
        let mut slow = cluster_result();
        slow["takeover"]["first_reading_s"]["max"] = json!(7.4);
        slow["join"]["links_moved_elsewhere"] = json!(3);
        slow["join"]["firings_lost"] = json!(4);
        let (table, ok) = report(&[slow]);
        assert!(!ok);
        assert_eq!(table.matches("MISSED").count(), 3, "{table}");
        assert!(
            table.contains("read again within 7.40 s ≤ lease + heartbeat + interval 7.0 s (worst of 2 kills): MISSED"),
            "{table}"
        );
        let mut twice = cluster_result();
        twice["join"]["firings_polled_twice"] = json!(1);
        let (table, ok) = report(&[twice]);
        assert!(!ok);
        assert!(
            table.contains("a join lost no firing of a moved device (0 lost) and polled none twice (1 twice): MISSED"),
            "{table}"
        );
        // A result without figures (a scenario cut short) is missed, not met.
        let (_, ok) = report(&[json!({"kind":"cluster","scenario":"cluster"})]);
        assert!(!ok);
    }
}
