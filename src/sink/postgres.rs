//! History in PostgreSQL/TimescaleDB. A batch is one statement: the columns
//! travel as arrays and `UNNEST` turns them back into rows, so the statement is
//! prepared once and costs one round trip whatever the batch size.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::history::Row;

const INSERT: &str = "INSERT INTO register_readings (ts, register_id, device_id, value, value_text, quality, detail) \
     SELECT * FROM UNNEST($1::timestamptz[], $2::int4[], $3::int4[], $4::float8[], $5::text[], $6::text[], $7::text[]) \
     ON CONFLICT (register_id, ts) DO NOTHING";

pub async fn write(pool: &PgPool, rows: &[Row]) -> anyhow::Result<()> {
    let ts: Vec<DateTime<Utc>> = rows.iter().map(|r| r.ts).collect();
    let register_id: Vec<i32> = rows.iter().map(|r| r.register_id).collect();
    let device_id: Vec<i32> = rows.iter().map(|r| r.device_id).collect();
    let value: Vec<Option<f64>> = rows.iter().map(|r| r.value).collect();
    let value_text: Vec<Option<&str>> = rows.iter().map(|r| r.value_text.as_deref()).collect();
    let quality: Vec<&str> = rows.iter().map(|r| r.quality.as_str()).collect();
    let detail: Vec<Option<&str>> = rows.iter().map(|r| r.detail.as_deref()).collect();
    sqlx::query(INSERT)
        .bind(ts)
        .bind(register_id)
        .bind(device_id)
        .bind(value)
        .bind(value_text)
        .bind(quality)
        .bind(detail)
        .execute(pool)
        .await
        .with_context(|| format!("cannot insert {} readings into PostgreSQL", rows.len()))?;
    Ok(())
}
