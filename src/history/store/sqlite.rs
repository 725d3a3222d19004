//! History in the embedded SQLite file: one transaction per batch, multi-row
//! INSERT statements inside it (SQLite caps bound parameters, so a batch is
//! split into statements of `ROWS_PER_STATEMENT` rows).

use anyhow::Context as _;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use crate::history::row::Row;

/// 7 parameters a row keeps a statement well under SQLite's 32,766 limit.
const ROWS_PER_STATEMENT: usize = 1_000;

/// Writes the rows of `pieces` in one transaction; returns how many were new
/// (the rest were already stored).
pub async fn write(pool: &SqlitePool, pieces: &[&[Row]]) -> anyhow::Result<u64> {
    let mut inserted = 0;
    let mut tx = pool
        .begin()
        .await
        .context("cannot start a SQLite transaction")?;
    for chunk in pieces.iter().flat_map(|p| p.chunks(ROWS_PER_STATEMENT)) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO register_readings (ts, register_id, device_id, value, value_text, quality, detail) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.ts.timestamp_micros())
                .push_bind(r.register_id)
                .push_bind(r.device_id)
                .push_bind(r.value())
                .push_bind(r.value_text())
                .push_bind(r.quality.as_str())
                .push_bind(r.detail());
        });
        inserted += q
            .build()
            .execute(&mut *tx)
            .await
            .with_context(|| format!("cannot insert {} readings into SQLite", chunk.len()))?
            .rows_affected();
    }
    tx.commit()
        .await
        .context("cannot commit readings to SQLite")?;
    Ok(inserted)
}
