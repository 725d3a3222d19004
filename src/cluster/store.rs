//! The cluster's statements (tables of migration 0014). Each is one round
//! trip or one short transaction; none holds a lock across a heartbeat.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Member;

/// Channel that a join, a release and a leave notify, so the others
/// rebalance at once instead of at their next heartbeat.
pub const CHANNEL: &str = "regpoll_cluster";

/// Why a statement about this instance's own session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Its row is gone: another instance deleted it after its lease expired
    /// (the links it owned went with it).
    #[error("this instance's lease expired and another instance took its endpoints")]
    Lost,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Joins as a new session; `None` when a live instance holds `instance_id`.
pub async fn join(
    pool: &PgPool,
    instance_id: &str,
    address: Option<&str>,
    lease: Duration,
) -> Result<Option<i64>, sqlx::Error> {
    let session: Option<i64> = sqlx::query_scalar(
        "INSERT INTO cluster_instances (instance_id, address, lease_until)
         VALUES ($1, $2, now() + make_interval(secs => $3))
         ON CONFLICT (instance_id) DO NOTHING
         RETURNING session",
    )
    .bind(instance_id)
    .bind(address)
    .bind(seconds(lease))
    .fetch_optional(pool)
    .await?;
    if session.is_some() {
        notify(pool, instance_id).await?;
    }
    Ok(session)
}

/// How long ago the instance holding `instance_id` renewed its lease.
pub async fn heartbeat_age(pool: &PgPool, instance_id: &str) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - heartbeat_at)::float8
         FROM cluster_instances WHERE instance_id = $1",
    )
    .bind(instance_id)
    .fetch_optional(pool)
    .await
}

/// Extends the session's lease by `lease` from the database's now.
pub async fn renew(
    pool: &PgPool,
    session: i64,
    lease: Duration,
    owned: (usize, usize),
    address: Option<&str>,
    serial_lines: &[String],
) -> Result<(), SessionError> {
    let renewed = sqlx::query(
        "UPDATE cluster_instances
         SET heartbeat_at = now(), lease_until = now() + make_interval(secs => $2),
             links_owned = $3, devices_owned = $4, address = $5, serial_lines = $6
         WHERE session = $1",
    )
    .bind(session)
    .bind(seconds(lease))
    .bind(i32::try_from(owned.0).unwrap_or(i32::MAX))
    .bind(i32::try_from(owned.1).unwrap_or(i32::MAX))
    .bind(address)
    .bind(serial_lines)
    .execute(pool)
    .await?
    .rows_affected();
    if renewed == 1 {
        Ok(())
    } else {
        Err(SessionError::Lost)
    }
}

/// An instance deleted because its lease had expired.
#[derive(Debug, Clone, PartialEq)]
pub struct Reaped {
    pub instance_id: String,
    /// Seconds since its lease ended.
    pub expired_s: f64,
    pub links: i64,
}

/// Deletes the instances whose lease has expired; their links become free
/// (each marked in `cluster_handoffs` as freed by expiry). A renewal racing
/// this delete either comes first (the row no longer matches, so it stays)
/// or finds the row gone: both take the row's lock.
pub async fn reap(pool: &PgPool) -> Result<Vec<Reaped>, sqlx::Error> {
    let rows: Vec<(String, f64, i64)> = sqlx::query_as(
        "WITH dead AS (
             DELETE FROM cluster_instances WHERE lease_until < now()
             RETURNING session, instance_id, lease_until
         ), freed AS (
             INSERT INTO cluster_handoffs (link, previous, released_at, freed_at)
             SELECT o.link, d.instance_id, NULL, now()
             FROM cluster_owners o JOIN dead d USING (session)
             ON CONFLICT (link) DO UPDATE
                 SET previous = EXCLUDED.previous, released_at = NULL, freed_at = now()
             RETURNING link, previous
         )
         SELECT d.instance_id,
                extract(epoch FROM now() - d.lease_until)::float8,
                (SELECT count(*) FROM freed f WHERE f.previous = d.instance_id)
         FROM dead d",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(instance_id, expired_s, links)| Reaped {
            instance_id,
            expired_s,
            links,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    session: i64,
    instance_id: String,
    address: Option<String>,
    started_at: DateTime<Utc>,
    heartbeat_age_s: f64,
    links_owned: i32,
    devices_owned: i32,
    serial_lines: Vec<String>,
}

/// The live instances, by id.
pub async fn members(pool: &PgPool, this: Option<i64>) -> Result<Vec<Member>, sqlx::Error> {
    let rows: Vec<MemberRow> = sqlx::query_as(
        "SELECT session, instance_id, address, started_at,
                extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s,
                links_owned, devices_owned, serial_lines
         FROM cluster_instances WHERE lease_until > now()
         ORDER BY instance_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Member {
            this: Some(r.session) == this,
            instance_id: r.instance_id,
            address: r.address,
            started_at: r.started_at,
            heartbeat_age_s: r.heartbeat_age_s.max(0.0),
            links_owned: u32::try_from(r.links_owned).unwrap_or(0),
            devices_owned: u32::try_from(r.devices_owned).unwrap_or(0),
            serial_lines: r.serial_lines,
        })
        .collect())
}

/// A link this session has just acquired, and how it changed hands.
#[derive(Debug, Clone, PartialEq)]
pub struct Acquired {
    pub link: String,
    /// Who had it last, if anyone.
    pub previous: Option<String>,
    /// When the previous owner's last poll had finished, on its clock, if
    /// it released the link on purpose (`None`: never owned, or its owner's
    /// lease expired).
    pub released_at: Option<DateTime<Utc>>,
}

/// Takes those of `links` nobody owns. A link another live session owns
/// is left to it (it releases it first when the balance moves it).
pub async fn acquire(
    pool: &PgPool,
    session: i64,
    links: &[String],
) -> Result<Vec<Acquired>, SessionError> {
    let mut tx = pool.begin().await?;
    let got: Vec<String> = sqlx::query_scalar(
        "INSERT INTO cluster_owners (link, session)
         SELECT unnest($1::text[]), $2
         ON CONFLICT (link) DO NOTHING
         RETURNING link",
    )
    .bind(links)
    .bind(session)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| match &e {
        // The session's row is gone (see `reap`): nothing can be owned by it.
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => SessionError::Lost,
        _ => SessionError::Database(e),
    })?;
    let handoffs: Vec<(String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "DELETE FROM cluster_handoffs WHERE link = ANY($1)
         RETURNING link, previous, released_at",
    )
    .bind(&got)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut handoffs: HashMap<String, (String, Option<DateTime<Utc>>)> = handoffs
        .into_iter()
        .map(|(link, previous, at)| (link, (previous, at)))
        .collect();
    Ok(got
        .into_iter()
        .map(|link| {
            let handoff = handoffs.remove(&link);
            Acquired {
                previous: handoff.as_ref().map(|(p, _)| p.clone()),
                released_at: handoff.and_then(|(_, at)| at),
                link,
            }
        })
        .collect())
}

/// Gives up `links` (already no longer polled since `released_at`) and
/// tells the others.
pub async fn release(
    pool: &PgPool,
    session: i64,
    instance_id: &str,
    links: &[String],
    released_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let gone: Vec<String> = sqlx::query_scalar(
        "DELETE FROM cluster_owners WHERE session = $1 AND link = ANY($2) RETURNING link",
    )
    .bind(session)
    .bind(links)
    .fetch_all(&mut *tx)
    .await?;
    record_handoffs(&mut tx, instance_id, &gone, released_at).await?;
    notify(&mut *tx, instance_id).await?;
    tx.commit().await
}

/// Ends `session` (a graceful stop, or a fenced session cleaned up): its
/// links are released as of `released_at`, its row deleted, the others
/// told.
pub async fn leave(
    pool: &PgPool,
    session: i64,
    instance_id: &str,
    released_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let links: Vec<String> =
        sqlx::query_scalar("SELECT link FROM cluster_owners WHERE session = $1 FOR UPDATE")
            .bind(session)
            .fetch_all(&mut *tx)
            .await?;
    record_handoffs(&mut tx, instance_id, &links, released_at).await?;
    sqlx::query("DELETE FROM cluster_instances WHERE session = $1")
        .bind(session)
        .execute(&mut *tx)
        .await?;
    notify(&mut *tx, instance_id).await?;
    tx.commit().await
}

async fn record_handoffs(
    tx: &mut sqlx::PgTransaction<'_>,
    instance_id: &str,
    links: &[String],
    released_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if links.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO cluster_handoffs (link, previous, released_at)
         SELECT unnest($1::text[]), $2, $3
         ON CONFLICT (link) DO UPDATE
             SET previous = EXCLUDED.previous, released_at = EXCLUDED.released_at, freed_at = now()",
    )
    .bind(links)
    .bind(instance_id)
    .bind(released_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn notify<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    instance_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(instance_id)
        .execute(executor)
        .await?;
    Ok(())
}

/// Which instance owns each link now (for the API and the status page).
pub async fn owners(pool: &PgPool) -> Result<HashMap<String, String>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT o.link, i.instance_id
         FROM cluster_owners o JOIN cluster_instances i USING (session)",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}
