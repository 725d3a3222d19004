//! What the history tables cost on disk, read from the database's catalogs:
//! PostgreSQL's relation sizes and row estimates, TimescaleDB's size, chunk
//! and compression functions for hypertables and continuous aggregates, and
//! SQLite's pages. Only catalog figures: nothing here scans a table.

use anyhow::Context as _;
use sqlx::{PgPool, SqlitePool};

use crate::history::health::{Compression, SqliteFile, StorageReport, TableKind, TableStorage};

/// Per-table sizes on SQLite come from the `dbstat` virtual table, which
/// reads every page of the file: about a second per GB. Above this size the
/// file's own figures are shown without them, so the periodic read stays cheap.
const DBSTAT_MAX_BYTES: i64 = 256 << 20;

/// A relation's kind and the planner's figures, when it exists.
const PG_RELATION: &str = "SELECT c.relkind::text, c.reltuples::int8, \
     pg_total_relation_size(c.oid), pg_indexes_size(c.oid) \
     FROM pg_class c WHERE c.oid = to_regclass($1)";

/// The hypertable behind a name: itself, or a continuous aggregate's
/// materialization hypertable; with whether it compresses. The columns are
/// those of TimescaleDB's informational views `hypertables` and
/// `continuous_aggregates`.
const TS_HYPERTABLE: &str = "\
SELECT format('%I.%I', hypertable_schema, hypertable_name), false, compression_enabled \
  FROM timescaledb_information.hypertables WHERE hypertable_name = $1 \
UNION ALL \
SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name), true, compression_enabled \
  FROM timescaledb_information.continuous_aggregates WHERE view_name = $1 \
LIMIT 1";

/// `hypertable_detailed_size` answers one row per node (several only for the
/// distributed hypertables of old releases), hence the sums.
const TS_SIZE: &str = "SELECT sum(total_bytes)::int8, sum(index_bytes)::int8 FROM hypertable_detailed_size($1::regclass)";

const TS_ROWS: &str = "SELECT approximate_row_count($1::regclass)::int8";

const TS_CHUNKS: &str = "SELECT count(*), count(*) FILTER (WHERE is_compressed) \
     FROM timescaledb_information.chunks WHERE format('%I.%I', hypertable_schema, hypertable_name) = $1";

const TS_COMPRESSION: &str = "SELECT sum(before_compression_total_bytes)::int8, \
     sum(after_compression_total_bytes)::int8 FROM hypertable_compression_stats($1::regclass)";

/// The storage of every table of `tables` that exists, in that order.
pub(super) async fn postgres(pool: &PgPool, tables: &[&str]) -> anyhow::Result<StorageReport> {
    // The informational views exist exactly when TimescaleDB is installed.
    let timescaledb: bool =
        sqlx::query_scalar("SELECT to_regclass('timescaledb_information.hypertables') IS NOT NULL")
            .fetch_one(pool)
            .await
            .context("cannot look for TimescaleDB's informational views")?;
    let mut report = StorageReport::default();
    for &name in tables {
        let found = if timescaledb {
            timescaledb_table(pool, name).await?
        } else {
            None
        };
        let table = match found {
            Some(t) => Some(t),
            None => pg_table(pool, name).await?,
        };
        report.tables.extend(table);
    }
    let has_state: bool = sqlx::query_scalar("SELECT to_regclass('rollup_state') IS NOT NULL")
        .fetch_one(pool)
        .await
        .context("cannot look for rollup_state")?;
    if has_state {
        report.rollup_watermark = sqlx::query_scalar("SELECT max(watermark) FROM rollup_state")
            .fetch_one(pool)
            .await
            .context("cannot read the rollups' watermark (rollup_state)")?;
    }
    Ok(report)
}

/// A plain table or view; `None` when `name` does not exist.
async fn pg_table(pool: &PgPool, name: &str) -> anyhow::Result<Option<TableStorage>> {
    let row: Option<(String, i64, i64, i64)> = sqlx::query_as(PG_RELATION)
        .bind(name)
        .fetch_optional(pool)
        .await
        .with_context(|| format!("cannot read the size of {name} from pg_class"))?;
    let Some((relkind, reltuples, total, indexes)) = row else {
        return Ok(None);
    };
    let stored = matches!(relkind.as_str(), "r" | "p" | "m");
    Ok(Some(TableStorage {
        name: name.to_string(),
        kind: if stored {
            TableKind::Table
        } else {
            TableKind::View
        },
        total_bytes: stored.then_some(total),
        index_bytes: stored.then_some(indexes),
        // -1: never vacuumed or analyzed, so unknown (PostgreSQL 14+).
        rows_estimate: (stored && reltuples >= 0).then_some(reltuples),
        chunks: None,
        compressed_chunks: None,
        compression: None,
    }))
}

/// A hypertable or continuous aggregate, with TimescaleDB's figures; `None`
/// when `name` is neither.
async fn timescaledb_table(pool: &PgPool, name: &str) -> anyhow::Result<Option<TableStorage>> {
    let found: Option<(String, bool, Option<bool>)> = sqlx::query_as(TS_HYPERTABLE)
        .bind(name)
        .fetch_optional(pool)
        .await
        .with_context(|| format!("cannot look {name} up in timescaledb_information"))?;
    let Some((hypertable, aggregate, compresses)) = found else {
        return Ok(None);
    };
    let cannot = |what: &str| format!("cannot read {what} of {name} ({hypertable})");
    let (total, indexes): (Option<i64>, Option<i64>) = sqlx::query_as(TS_SIZE)
        .bind(&hypertable)
        .fetch_one(pool)
        .await
        .with_context(|| cannot("hypertable_detailed_size"))?;
    let rows: Option<i64> = sqlx::query_scalar(TS_ROWS)
        .bind(&hypertable)
        .fetch_one(pool)
        .await
        .with_context(|| cannot("approximate_row_count"))?;
    let (chunks, compressed): (i64, i64) = sqlx::query_as(TS_CHUNKS)
        .bind(&hypertable)
        .fetch_one(pool)
        .await
        .with_context(|| cannot("the chunks (timescaledb_information.chunks)"))?;
    // Asked only where compression is on: the figures would be empty
    // otherwise, and older releases refuse the call.
    let compression = if compresses == Some(true) {
        let (before, after): (Option<i64>, Option<i64>) = sqlx::query_as(TS_COMPRESSION)
            .bind(&hypertable)
            .fetch_one(pool)
            .await
            .with_context(|| cannot("hypertable_compression_stats"))?;
        before
            .zip(after)
            .map(|(before_bytes, after_bytes)| Compression {
                before_bytes,
                after_bytes,
            })
    } else {
        None
    };
    Ok(Some(TableStorage {
        name: name.to_string(),
        kind: if aggregate {
            TableKind::ContinuousAggregate
        } else {
            TableKind::Hypertable
        },
        total_bytes: total,
        index_bytes: indexes,
        rows_estimate: rows.filter(|r| *r >= 0),
        chunks: Some(chunks),
        compressed_chunks: Some(compressed),
        compression,
    }))
}

/// Each table's (and its indexes') bytes and rows. The rows are the cells
/// of its own b-tree that hold a record: every leaf cell, and, in a table
/// without rowid (`register_readings`: an index b-tree keyed by the primary
/// key), the interior cells too, which are the ones with a payload (an
/// interior cell of a rowid table holds only a child pointer and a key).
const SQLITE_DBSTAT: &str = "SELECT s.tbl_name, sum(d.pgsize), \
     sum(CASE WHEN d.name = s.tbl_name AND (d.pagetype = 'leaf' OR d.payload > 0) THEN d.ncell ELSE 0 END), \
     sum(CASE WHEN d.name = s.tbl_name THEN 0 ELSE d.pgsize END) \
     FROM dbstat d JOIN sqlite_schema s ON s.name = d.name GROUP BY s.tbl_name";

/// The SQLite file and, when cheap, the storage of `tables`.
pub(super) async fn sqlite(pool: &SqlitePool, tables: &[&str]) -> anyhow::Result<StorageReport> {
    let pragma = |name: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("PRAGMA {name}")))
            .fetch_one(pool)
            .await
            .with_context(|| format!("cannot read PRAGMA {name}"))
    };
    let page_size = pragma("page_size").await?;
    let page_count = pragma("page_count").await?;
    let freelist_count = pragma("freelist_count").await?;
    let path = pool.connect_options().get_filename().to_path_buf();
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    let kinds: Vec<(String, String)> =
        sqlx::query_as("SELECT name, type FROM sqlite_schema WHERE type IN ('table', 'view')")
            .fetch_all(pool)
            .await
            .context("cannot read sqlite_schema")?;
    let (per_table, tables_note) = if page_size.saturating_mul(page_count) > DBSTAT_MAX_BYTES {
        (
            Vec::new(),
            Some(format!(
                "per-table sizes are read only below {} (dbstat reads every page)",
                crate::history::health::format_bytes(DBSTAT_MAX_BYTES)
            )),
        )
    } else {
        match sqlx::query_as::<_, (String, i64, i64, i64)>(SQLITE_DBSTAT)
            .fetch_all(pool)
            .await
        {
            Ok(rows) => (rows, None),
            // SQLite built without SQLITE_ENABLE_DBSTAT_VTAB: the file's
            // figures are still worth showing.
            Err(e) => (
                Vec::new(),
                Some(format!(
                    "no per-table sizes: this SQLite has no dbstat ({e})"
                )),
            ),
        }
    };
    let mut report = StorageReport::default();
    for &name in tables {
        let Some((_, kind)) = kinds.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let view = kind == "view";
        let figures = per_table.iter().find(|(n, ..)| n == name);
        report.tables.push(TableStorage {
            name: name.to_string(),
            kind: if view {
                TableKind::View
            } else {
                TableKind::Table
            },
            total_bytes: figures.map(|f| f.1),
            index_bytes: figures.map(|f| f.3),
            rows_estimate: figures.map(|f| f.2),
            chunks: None,
            compressed_chunks: None,
            compression: None,
        });
    }
    if kinds.iter().any(|(n, _)| n == "rollup_state") {
        let micros: Option<i64> = sqlx::query_scalar("SELECT max(watermark) FROM rollup_state")
            .fetch_one(pool)
            .await
            .context("cannot read the rollups' watermark (rollup_state)")?;
        report.rollup_watermark = micros.and_then(chrono::DateTime::from_timestamp_micros);
    }
    report.sqlite = Some(SqliteFile {
        path: path.display().to_string(),
        file_bytes: size(&path),
        wal_bytes: size(std::path::Path::new(&wal)),
        page_size,
        page_count,
        freelist_count,
        tables_note,
    });
    Ok(report)
}
