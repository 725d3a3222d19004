//! History in PostgreSQL/TimescaleDB, by binary COPY (see `pgcopy`).
//!
//! COPY cannot skip rows that are already stored, so a batch that hits the
//! primary key (a replay after an ambiguous failure, or a spool replayed
//! twice) is written again through a temporary staging table and
//! `INSERT … ON CONFLICT DO NOTHING`: never dropped, never duplicated.

use anyhow::Context as _;
use sqlx::{Executor as _, PgPool};

use super::pgcopy;
use crate::history::row::{Row, rows_in};

/// SQLSTATE of a unique-key violation.
const UNIQUE_VIOLATION: &str = "23505";

/// Rows per piece of a COPY: about 0.5 MB encoded. A COPY is encoded and
/// sent piece by piece, because the connection keeps its send buffer at the
/// largest message it ever sent: a 200,000-row COPY sent whole held 12 MB
/// there, for as long as the connection lived, next to the 12 MB encoding.
const PIECE_ROWS: usize = 8_192;

/// Writes the rows of `pieces` in one COPY; returns how many were new (the
/// rest were already stored).
pub async fn write(pool: &PgPool, pieces: &[&[Row]]) -> anyhow::Result<u64> {
    let rows = rows_in(pieces);
    let mut conn = pool
        .acquire()
        .await
        .context("no PostgreSQL connection for writing readings")?;
    match copy(&mut conn, pgcopy::COPY_STATEMENT, pieces).await {
        Ok(n) => Ok(n),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            tracing::info!(
                rows,
                "batch overlaps stored readings; writing it without the duplicates"
            );
            write_skipping_duplicates(&mut conn, pieces).await
        }
        Err(e) => Err(e).with_context(|| format!("cannot COPY {rows} readings into PostgreSQL")),
    }
}

/// Runs `statement` (a binary COPY … FROM STDIN) with the rows of `pieces`
/// as its data, sent in pieces of about `PIECE_ROWS` rows.
async fn copy(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    pieces: &[&[Row]],
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut piece =
        Vec::with_capacity(pgcopy::HEADER_LEN + rows_in(pieces).min(PIECE_ROWS) * 72 + 2);
    pgcopy::header(&mut piece);
    let mut in_piece = 0;
    for rows in pieces.iter().flat_map(|p| p.chunks(PIECE_ROWS)) {
        pgcopy::tuples(&mut piece, rows);
        in_piece += rows.len();
        if in_piece >= PIECE_ROWS {
            copy.send(piece.as_slice()).await?;
            piece.clear();
            in_piece = 0;
        }
    }
    pgcopy::trailer(&mut piece);
    copy.send(piece.as_slice()).await?;
    copy.finish().await
}

async fn write_skipping_duplicates(
    conn: &mut sqlx::PgConnection,
    pieces: &[&[Row]],
) -> anyhow::Result<u64> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    tx.execute(
        "CREATE TEMP TABLE regpoll_staging (LIKE register_readings INCLUDING DEFAULTS) ON COMMIT DROP",
    )
    .await
    .context("cannot create the staging table")?;
    copy(
        &mut tx,
        "COPY regpoll_staging (ts, register_id, device_id, value, value_text, quality, detail) FROM STDIN (FORMAT binary)",
        pieces,
    )
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
