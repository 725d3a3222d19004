//! The database regpoll keeps its registry and history in: PostgreSQL (with or
//! without TimescaleDB) when a `DATABASE_URL` is given, an embedded SQLite file
//! otherwise. Both run their own migrations on connect.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, Connection as _};

/// How long to wait for a connection from the pool before giving up.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Why [`Db::connect_and_migrate`] failed: the server could not be reached
/// (retrying may work once it is back), or it answered and the migrations
/// failed (an operator must look).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0:#}")]
    Unreachable(anyhow::Error),
    #[error("{0:#}")]
    Migration(anyhow::Error),
}

impl OpenError {
    pub fn into_inner(self) -> anyhow::Error {
        match self {
            OpenError::Unreachable(e) | OpenError::Migration(e) => e,
        }
    }
}

/// Whether the database has answered since a start without it: set by the
/// task that keeps trying to connect, read by `/ready`. Always "up" when
/// regpoll started with the database (a later outage shows in `/ready`'s
/// ping and the history writer's counters instead).
#[derive(Debug, Clone, Default)]
pub struct Connectivity(Arc<Mutex<Option<Outage>>>);

/// Since when the database has not been reached, and the last error.
#[derive(Debug, Clone, PartialEq)]
pub struct Outage {
    pub since: DateTime<Utc>,
    pub error: String,
}

impl Connectivity {
    /// The outage going on, if any.
    pub fn outage(&self) -> Option<Outage> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a failed attempt; an outage keeps the time it began.
    pub fn set_down(&self, error: String) {
        let mut o = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let since = o.as_ref().map_or_else(Utc::now, |o| o.since);
        *o = Some(Outage { since, error });
    }

    /// Records that the database answered; returns the outage that ended.
    pub fn set_up(&self) -> Option<Outage> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// `host:port/database` (or the socket directory) of PostgreSQL options.
fn describe(opts: &PgConnectOptions) -> String {
    let host = match opts.get_socket() {
        Some(dir) => dir.display().to_string(),
        None => format!("{}:{}", opts.get_host(), opts.get_port()),
    };
    format!("{host}/{}", opts.get_database().unwrap_or(""))
}

#[derive(Debug, Clone)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds; the body is
/// type-checked once per database, so it must be valid SQL for both. For the
/// registry, whose SQL is written once for both databases; history goes
/// through `history::store` instead, where the two differ.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Postgres($pool) => $body,
            $crate::db::Db::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

impl Db {
    /// Connects to PostgreSQL at `url` and applies pending migrations.
    pub async fn postgres(url: &str) -> anyhow::Result<Db> {
        let db = Db::postgres_lazy(url)?;
        db.connect_and_migrate()
            .await
            .map_err(OpenError::into_inner)?;
        Ok(db)
    }

    /// A PostgreSQL pool that connects only when it is first used: what
    /// `run` starts with, so that it can poll while the database is away
    /// (writes fail until it answers, and the history writer retries them).
    /// Fails only when `url` is not a valid PostgreSQL URL.
    pub fn postgres_lazy(url: &str) -> anyhow::Result<Db> {
        let opts = PgConnectOptions::from_str(url)
            .with_context(|| format!("invalid DATABASE_URL {}", redact_url(url)))?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(opts);
        Ok(Db::Postgres(pool))
    }

    /// Checks that the database answers and applies pending migrations (and,
    /// with TimescaleDB, the hourly aggregate). Safe to repeat until it works.
    /// A no-op on SQLite, which [`Db::sqlite`] has already migrated.
    pub async fn connect_and_migrate(&self) -> Result<(), OpenError> {
        let Db::Postgres(pool) = self else {
            return Ok(());
        };
        let opts = pool.connect_options();
        let cannot = || format!("cannot connect to PostgreSQL at {}", describe(&opts));
        // One plain connection first: when the server is down or refuses the
        // login, this fails at once with the cause ("connection refused",
        // "password authentication failed"), where the pool would wait its
        // whole acquire timeout and report only that it timed out.
        let probe = tokio::time::timeout(ACQUIRE_TIMEOUT, opts.connect())
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {ACQUIRE_TIMEOUT:?}"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(cannot)
            .map_err(OpenError::Unreachable)?;
        let _ = probe.close().await;
        let migrate = async {
            PG_MIGRATIONS
                .run(pool)
                .await
                .context("PostgreSQL migrations failed")?;
            if has_timescaledb(pool).await? {
                create_hourly_aggregate(pool).await?;
            }
            Ok(())
        };
        migrate.await.map_err(OpenError::Migration)
    }

    /// Where the database is, without the user or any password: what
    /// regpoll's own files record to tell one database from another.
    pub fn location(&self) -> String {
        match self {
            Db::Postgres(p) => describe(&p.connect_options()),
            Db::Sqlite(p) => p.connect_options().get_filename().display().to_string(),
        }
    }

    /// Opens (creating it if needed) the SQLite file at `path` and applies
    /// pending migrations. WAL mode lets readers (the API, `sqlite3`) look
    /// while the writer writes.
    pub async fn sqlite(path: &Path) -> anyhow::Result<Db> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(opts)
            .await
            .with_context(|| format!("cannot open SQLite database {}", path.display()))?;
        SQLITE_MIGRATIONS
            .run(&pool)
            .await
            .context("SQLite migrations failed")?;
        Ok(Db::Sqlite(pool))
    }

    /// PostgreSQL when `database_url` is set, else the SQLite file.
    pub async fn open(database_url: Option<&str>, sqlite_path: &Path) -> anyhow::Result<Db> {
        match database_url {
            Some(url) => Db::postgres(url).await,
            None => Db::sqlite(sqlite_path).await,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    /// The PostgreSQL pool, for what only PostgreSQL has (LISTEN/NOTIFY,
    /// `xmin`, TimescaleDB); `None` on SQLite.
    pub fn as_postgres(&self) -> Option<&PgPool> {
        match self {
            Db::Postgres(p) => Some(p),
            Db::Sqlite(_) => None,
        }
    }

    /// One round trip (`SELECT 1`): whether the database answers at all.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.map(drop))
    }

    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }
}

/// Whether the TimescaleDB extension is installed in this database.
pub async fn has_timescaledb(pool: &PgPool) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')")
        .fetch_one(pool)
        .await
        .context("cannot ask PostgreSQL for its extensions")
}

/// The hourly continuous aggregate (avg, min, max, count, last per register,
/// over good and uncertain values) and its refresh policy. A continuous
/// aggregate cannot be created inside a transaction block or a function, so
/// this runs after the migrations, one statement at a time over the simple
/// protocol, and only when it does not exist yet.
async fn create_hourly_aggregate(pool: &PgPool) -> anyhow::Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('register_readings_hourly') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if exists {
        return Ok(());
    }
    sqlx::raw_sql(
        "CREATE MATERIALIZED VIEW register_readings_hourly WITH (timescaledb.continuous) AS \
         SELECT register_id, time_bucket(INTERVAL '1 hour', ts) AS bucket, avg(value) AS avg, min(value) AS min, \
         max(value) AS max, count(value) AS count, last(value, ts) AS last \
         FROM register_readings WHERE quality IN ('good', 'uncertain') \
         GROUP BY register_id, time_bucket(INTERVAL '1 hour', ts) WITH NO DATA",
    )
    .execute(pool)
    .await
    .context("cannot create the continuous aggregate register_readings_hourly")?;
    // Refresh the last few hours every 30 minutes; the current hour is left
    // out (it is still being written; queries see it through real-time aggregation).
    sqlx::raw_sql(
        "SELECT add_continuous_aggregate_policy('register_readings_hourly', \
         start_offset => INTERVAL '3 hours', end_offset => INTERVAL '1 hour', \
         schedule_interval => INTERVAL '30 minutes', if_not_exists => true)",
    )
    .execute(pool)
    .await
    .context("cannot add the refresh policy of register_readings_hourly")?;
    Ok(())
}

/// `url` with any password replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_appear_in_redacted_urls() {
        let r = super::redact_url("postgres://app:s3cret@db:5432/regpoll");
        assert_eq!(r, "postgres://app:***@db:5432/regpoll");
        assert_eq!(
            super::redact_url("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
    }
}
