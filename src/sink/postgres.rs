//! History in PostgreSQL/TimescaleDB, by binary COPY (see `pgcopy`).
//!
//! COPY cannot skip rows that are already stored, so a batch that hits the
//! primary key (a replay after an ambiguous failure, or a spool replayed
//! twice) is written again through a temporary staging table and
//! `INSERT … ON CONFLICT DO NOTHING`: never dropped, never duplicated.

use anyhow::Context as _;
use sqlx::{Executor as _, PgPool};

use super::history::Row;
use super::pgcopy;

/// SQLSTATE of a unique-key violation.
const UNIQUE_VIOLATION: &str = "23505";

/// Writes `rows`; returns how many were new (the rest were already stored).
pub async fn write(pool: &PgPool, rows: &[Row]) -> anyhow::Result<u64> {
    let bytes = pgcopy::encode(rows);
    let mut conn = pool
        .acquire()
        .await
        .context("no PostgreSQL connection for writing readings")?;
    let copied = async {
        let mut copy = conn.copy_in_raw(pgcopy::COPY_STATEMENT).await?;
        copy.send(bytes.as_slice()).await?;
        copy.finish().await
    }
    .await;
    match copied {
        Ok(n) => Ok(n),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            tracing::info!(
                rows = rows.len(),
                "batch overlaps stored readings; writing it without the duplicates"
            );
            write_skipping_duplicates(&mut conn, &bytes).await
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot COPY {} readings into PostgreSQL", rows.len()))
        }
    }
}

async fn write_skipping_duplicates(
    conn: &mut sqlx::PgConnection,
    bytes: &[u8],
) -> anyhow::Result<u64> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    tx.execute(
        "CREATE TEMP TABLE regpoll_staging (LIKE register_readings INCLUDING DEFAULTS) ON COMMIT DROP",
    )
    .await
    .context("cannot create the staging table")?;
    let mut copy = tx
        .copy_in_raw("COPY regpoll_staging (ts, register_id, device_id, value, value_text, quality, detail) FROM STDIN (FORMAT binary)")
        .await?;
    copy.send(bytes).await?;
    copy.finish()
        .await
        .context("cannot COPY readings into the staging table")?;
    let inserted = tx
        .execute(
            "INSERT INTO register_readings (ts, register_id, device_id, value, value_text, quality, detail) \
             SELECT ts, register_id, device_id, value, value_text, quality, detail FROM regpoll_staging \
             ON CONFLICT (register_id, ts) DO NOTHING",
        )
        .await
        .context("cannot move readings from the staging table")?
        .rows_affected();
    tx.commit().await?;
    Ok(inserted)
}
