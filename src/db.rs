//! The database regpoll keeps its registry and history in: PostgreSQL (with or
//! without TimescaleDB) when a `DATABASE_URL` is given, an embedded SQLite file
//! otherwise. Both run their own migrations on connect.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, Connection as _};

mod tls;
pub use tls::{PgTls, parse_sslmode, sslmode_name};

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
        Db::postgres_with(url, &PgTls::default()).await
    }

    /// [`Db::postgres`] with the `--database-ssl*` settings `tls` applied
    /// over the URL's parameters.
    pub async fn postgres_with(url: &str, tls: &PgTls) -> anyhow::Result<Db> {
        let db = Db::postgres_lazy_with(url, tls)?;
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
        Db::postgres_lazy_with(url, &PgTls::default())
    }

    /// [`Db::postgres_lazy`] with the `--database-ssl*` settings `tls`
    /// applied over the URL's parameters. Also fails when a certificate or
    /// key file it names cannot be used (the error names the setting and
    /// the path). Every connection regpoll opens to this database (the
    /// pools, the migrations', the `LISTEN` ones) is made from the options
    /// built here.
    pub fn postgres_lazy_with(url: &str, tls: &PgTls) -> anyhow::Result<Db> {
        check_pg_params(url)?;
        let invalid = || format!("invalid DATABASE_URL {}", redact_url(url));
        let opts = PgConnectOptions::from_str(url).with_context(invalid)?;
        let parsed = url::Url::parse(url).with_context(invalid)?;
        let opts = tls::apply(&parsed, opts, tls)
            .with_context(|| format!("cannot set up TLS to PostgreSQL at {}", redact_url(url)))?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(opts);
        Ok(Db::Postgres(pool))
    }

    /// Checks that the database answers and applies pending migrations (and,
    /// with TimescaleDB, the rollups' continuous aggregates). Safe to repeat until it works.
    /// A no-op on SQLite, which [`Db::sqlite`] has already migrated.
    pub async fn connect_and_migrate(&self) -> Result<(), OpenError> {
        let Db::Postgres(pool) = self else {
            return Ok(());
        };
        self.probe(ACQUIRE_TIMEOUT)
            .await
            .map_err(OpenError::Unreachable)?;
        let migrate = async {
            accept_edited_migrations(pool).await?;
            run_migrations_quietly(pool).await?;
            if has_timescaledb(pool).await? {
                create_rollup_aggregates(pool).await?;
            } else {
                warn_if_timescaledb_left_out(pool).await;
            }
            Ok(())
        };
        migrate.await.map_err(OpenError::Migration)
    }

    /// Whether the database answers, within `timeout`. On PostgreSQL one
    /// plain connection, not the pool's: when the server is down or refuses
    /// the login, this fails at once with the cause ("connection refused",
    /// "password authentication failed"), where the pool would wait its
    /// whole acquire timeout and report only that it timed out.
    pub async fn probe(&self, timeout: Duration) -> anyhow::Result<()> {
        let Db::Postgres(pool) = self else {
            return tokio::time::timeout(timeout, self.ping())
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
                .with_context(|| format!("cannot open SQLite database {}", self.location()));
        };
        let opts = pool.connect_options();
        let at = || format!("cannot connect to PostgreSQL at {}", describe(&opts));
        let connect = |opts: PgConnectOptions| async move {
            let conn = tokio::time::timeout(timeout, opts.connect())
                .await
                .map_err(|_| None)?
                .map_err(Some)?;
            let _ = conn.close().await;
            Ok::<_, Option<sqlx::Error>>(())
        };
        let no_answer = || anyhow::anyhow!("no answer within {timeout:?}").context(at());
        match connect((*opts).clone()).await {
            Ok(()) => Ok(()),
            Err(None) => Err(no_answer()),
            // libpq's `allow`, which sqlx takes for `disable`: without TLS
            // first, with it when the server asks for it.
            Err(Some(e))
                if matches!(opts.get_ssl_mode(), PgSslMode::Allow) && tls::is_tls_required(&e) =>
            {
                let with_tls = (*opts).clone().ssl_mode(PgSslMode::Require);
                match connect(with_tls.clone()).await {
                    Ok(()) => {
                        pool.set_connect_options(with_tls);
                        Ok(())
                    }
                    Err(None) => Err(no_answer()),
                    Err(Some(e)) => Err(connect_error(e, &with_tls).context(at())),
                }
            }
            Err(Some(e)) => Err(connect_error(e, &opts).context(at())),
        }
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
        Db::open_with(database_url, &PgTls::default(), sqlite_path).await
    }

    /// [`Db::open`] with the `--database-ssl*` settings `tls` applied over
    /// the URL's parameters.
    pub async fn open_with(
        database_url: Option<&str>,
        tls: &PgTls,
        sqlite_path: &Path,
    ) -> anyhow::Result<Db> {
        match database_url {
            Some(url) => Db::postgres_with(url, tls).await,
            None => Db::sqlite(sqlite_path).await,
        }
    }

    /// An existing SQLite file, opened read-only and not migrated: for
    /// looking at a database that a running service writes (`regpoll
    /// status`). Connects when first used.
    pub fn sqlite_read_only(path: &Path) -> Db {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(5));
        Db::Sqlite(
            SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(opts),
        )
    }

    /// A second, small pool on the same database for the HTTP API's queries,
    /// so that API load never takes a connection the history writer needs.
    /// It connects lazily (nothing is opened until a request asks), waits at
    /// most `acquire_timeout` for a connection, and on PostgreSQL each
    /// statement is cancelled by the server before `statement_timeout` (the
    /// request timeout: past it nobody waits for the answer) is over: a
    /// fifth of it earlier, at most a second. On SQLite the
    /// connections are read-only, which WAL mode lets run beside the writer.
    pub fn api_pool(
        &self,
        connections: u32,
        acquire_timeout: Duration,
        statement_timeout: Duration,
    ) -> Db {
        match self {
            Db::Postgres(p) => {
                // The server cancels a little before the caller gives up, so
                // a slow query ends with the server's error and its
                // connection goes back to the pool clean. A query the caller
                // drops mid-read instead costs the connection, and over TLS
                // sqlx never gives it back: a 1-connection pool whose query
                // was dropped answered PoolTimedOut for good (TLS test).
                let server = statement_timeout
                    .saturating_sub((statement_timeout / 5).min(Duration::from_secs(1)));
                let opts = (*p.connect_options()).clone().options([(
                    "statement_timeout",
                    format!("{}ms", server.as_millis().max(1)),
                )]);
                Db::Postgres(
                    PgPoolOptions::new()
                        .max_connections(connections.max(1))
                        .min_connections(0)
                        .acquire_timeout(acquire_timeout)
                        .connect_lazy_with(opts),
                )
            }
            Db::Sqlite(p) => {
                let opts = (*p.connect_options()).clone().read_only(true);
                Db::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(connections.max(1))
                        .min_connections(0)
                        .acquire_timeout(acquire_timeout)
                        .connect_lazy_with(opts),
                )
            }
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

/// Migrations edited in place after a release, with the SHA-384 checksum
/// that release recorded when it applied them. sqlx refuses to start when an
/// applied migration's checksum changed; an edit listed here did not change
/// what the migration does where it had already run, so the old checksum is
/// replaced by the new one instead.
///
/// - 0002: the TimescaleDB check no longer needs the privilege to read
///   `shared_preload_libraries` (an ordinary role could not migrate a server
///   with TimescaleDB installed); where it ran, it made the same table.
const EDITED_MIGRATIONS: &[(i64, &str)] = &[(
    2,
    "dc28f150074af0c5b593fae8e5bf2ab4e85f7a80bdc93155574b7772b1abc00ae8c0d90036a93e57e94be3bfa5cb7002",
)];

/// See [`EDITED_MIGRATIONS`].
/// Applies pending migrations on one connection whose notices are off:
/// sqlx creates its `_sqlx_migrations` table with `IF NOT EXISTS`, which
/// PostgreSQL answers with a NOTICE that sqlx logs at INFO, once per
/// command. What a migration's own notices said (TimescaleDB left out) is
/// told by [`warn_if_timescaledb_left_out`] instead, at every start.
async fn run_migrations_quietly(pool: &PgPool) -> anyhow::Result<()> {
    let opts = (*pool.connect_options())
        .clone()
        .options([("client_min_messages", "warning")]);
    let quiet = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(opts)
        .await
        .context("no PostgreSQL connection for the migrations")?;
    let migrated = PG_MIGRATIONS
        .run(&quiet)
        .await
        .map_err(|e| anyhow::anyhow!(error_text(&e)))
        .context("PostgreSQL migrations failed");
    quiet.close().await;
    migrated
}

/// Says so when TimescaleDB is installed on the server but not in this
/// database, so `register_readings` is a plain table: a setup mistake that
/// is otherwise noticed only when the disk fills.
async fn warn_if_timescaledb_left_out(pool: &PgPool) {
    let available: Result<bool, _> = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')",
    )
    .fetch_one(pool)
    .await;
    if let Ok(true) = available {
        tracing::warn!(
            "TimescaleDB is installed on this server but not in this database, so \
             register_readings is a plain table (no chunks, compression or hourly aggregate); \
             with timescaledb in shared_preload_libraries, a superuser can run \
             CREATE EXTENSION timescaledb in this database (see README: With TimescaleDB)"
        );
    }
}

/// An error and its causes as one line, each cause once: sqlx's errors
/// repeat their cause's text in their own (`error returned from database:
/// X`, whose source is X), so printing the chain with `{:#}` said it twice.
/// A TLS failure in the chain is said in words first (wrong host name,
/// unknown CA, a server that wants TLS …), then as the library said it.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    explained_text(e, None)
}

/// [`error_text`], naming the sslmode and root certificate of `opts`.
fn explained_text(
    e: &(dyn std::error::Error + 'static),
    opts: Option<&PgConnectOptions>,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(why) = tls::explain(c, opts) {
            parts.push(format!("{why}; in detail: {}", chain_text(c)));
            break;
        }
        parts.push(c.to_string());
        cause = c.source();
    }
    let mut text = String::new();
    for part in parts {
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// The chain's texts, each once.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// A failed connection's error: a TLS failure said in words (naming the
/// sslmode and root certificate of `opts`), anything else as it is.
fn connect_error(e: sqlx::Error, opts: &PgConnectOptions) -> anyhow::Error {
    if tls::explain_chain(&e) {
        anyhow::anyhow!(explained_text(&e, Some(opts)))
    } else {
        anyhow::Error::from(e)
    }
}

async fn accept_edited_migrations(pool: &PgPool) -> anyhow::Result<()> {
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .context("cannot read the migration history")?;
    if !migrated {
        return Ok(());
    }
    for (version, old) in EDITED_MIGRATIONS {
        let Some(now) = PG_MIGRATIONS.iter().find(|m| m.version == *version) else {
            continue;
        };
        sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2 AND checksum = $3",
        )
        .bind(&*now.checksum)
        .bind(version)
        .bind(hex_bytes(old))
        .execute(pool)
        .await
        .with_context(|| format!("cannot record the edit of migration {version}"))?;
    }
    Ok(())
}

/// The bytes of a hex string (two digits a byte; not hex: empty).
fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map_while(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Whether the TimescaleDB extension is installed in this database.
pub async fn has_timescaledb(pool: &PgPool) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')")
        .fetch_one(pool)
        .await
        .context("cannot ask PostgreSQL for its extensions")
}

/// The rollups on TimescaleDB: `register_readings_1m`, a continuous
/// aggregate on `register_readings`, and `register_readings_hourly`, a
/// hierarchical one on `register_readings_1m` (avg weighted by the minutes'
/// counts, min of min, max of max, counts summed, the newest minute's
/// last). Over good and uncertain finite values: NaN and infinity in rows
/// written before they were stored as NULL stay out, as in migration 0008.
/// A continuous aggregate cannot be created inside a transaction block or
/// a function, so this runs after the migrations, one statement at a time
/// over the simple protocol, and creates only what is missing. The refresh
/// and retention policies are set with the retention (`set_retention_policy`).
///
/// Both answer with real-time aggregation (`materialized_only = false`):
/// TimescaleDB's default since 2.13 is materialized only, which leaves the
/// newest buckets out of every answer and older ones stale until the next
/// refresh. An aggregate created with that default is switched over.
async fn create_rollup_aggregates(pool: &PgPool) -> anyhow::Result<()> {
    let kept_by_regpoll: bool =
        sqlx::query_scalar("SELECT to_regclass('rollup_invalidations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if kept_by_regpoll {
        // Migrated before TimescaleDB was installed: the rollups are
        // regpoll's tables, refreshed by regpoll's job as on plain PostgreSQL.
        tracing::warn!(
            "the rollups register_readings_1m and register_readings_hourly are plain tables kept by \
             regpoll (this database was migrated before TimescaleDB was installed); they work as \
             they are, but TimescaleDB's retention policies do not cover them. See README: \
             Rollups, to turn them into continuous aggregates"
        );
        return Ok(());
    }
    keep_hourly_aggregate_on_raw(pool).await?;
    for (view, definition) in [
        ("register_readings_1m", MINUTE_AGGREGATE),
        ("register_readings_hourly", HOURLY_AGGREGATE),
    ] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(view)
            .fetch_one(pool)
            .await?;
        if exists {
            real_time(pool, view).await?;
            continue;
        }
        sqlx::raw_sql(definition)
            .execute(pool)
            .await
            .with_context(|| format!("cannot create the continuous aggregate {view}"))?;
        // The whole history at once: a new aggregate must answer for every
        // bucket the raw table (or the 1-minute aggregate) still holds.
        tracing::info!(
            view,
            "computing the new continuous aggregate over the whole history"
        );
        sqlx::raw_sql(REFRESH_ALL[usize::from(view == "register_readings_hourly")])
            .execute(pool)
            .await
            .with_context(|| format!("cannot refresh the new continuous aggregate {view}"))?;
    }
    sqlx::query("UPDATE rollup_state SET watermark = NULL")
        .execute(pool)
        .await
        .context("cannot record that the rollups answer in real time")?;
    Ok(())
}

const MINUTE_AGGREGATE: &str = "CREATE MATERIALIZED VIEW register_readings_1m \
     WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS \
     SELECT register_id, time_bucket(INTERVAL '1 minute', ts) AS bucket, avg(value) AS avg, \
     min(value) AS min, max(value) AS max, count(value) AS count, last(value, ts) AS last \
     FROM register_readings WHERE quality IN ('good', 'uncertain') \
     AND value > '-Infinity' AND value < 'Infinity' \
     GROUP BY register_id, time_bucket(INTERVAL '1 minute', ts) WITH NO DATA";

const HOURLY_AGGREGATE: &str = "CREATE MATERIALIZED VIEW register_readings_hourly \
     WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS \
     SELECT register_id, time_bucket(INTERVAL '1 hour', bucket) AS bucket, \
     sum(avg * count) / sum(count)::float8 AS avg, min(min) AS min, max(max) AS max, \
     sum(count)::int8 AS count, last(last, bucket) AS last \
     FROM register_readings_1m \
     GROUP BY register_id, time_bucket(INTERVAL '1 hour', bucket) WITH NO DATA";

/// `refresh_continuous_aggregate` over all time (NULL window ends).
const REFRESH_ALL: [&str; 2] = [
    "CALL refresh_continuous_aggregate('register_readings_1m', NULL, NULL)",
    "CALL refresh_continuous_aggregate('register_readings_hourly', NULL, NULL)",
];

/// Where an hourly aggregate on the raw table (every version before the
/// 1-minute rollup) is kept: it may hold hours the raw table no longer has.
const OLD_HOURLY: &str = "register_readings_hourly_raw";

/// Renames an hourly continuous aggregate built on the raw table out of
/// the way (without its refresh policy, which would refresh it for
/// nothing), and says at each start that it is there and how to drop it.
async fn keep_hourly_aggregate_on_raw(pool: &PgPool) -> anyhow::Result<()> {
    // `hypertable_name` is what an aggregate is built on: the raw table, or
    // for one on another aggregate that one's materialization hypertable.
    let on_raw: Option<bool> = sqlx::query_scalar(
        "SELECT hypertable_name = 'register_readings' \
         FROM timescaledb_information.continuous_aggregates \
         WHERE view_name = 'register_readings_hourly' AND view_schema = current_schema()",
    )
    .fetch_optional(pool)
    .await
    .context("cannot read what register_readings_hourly is built on")?;
    if on_raw == Some(true) {
        sqlx::raw_sql(
            "SELECT remove_continuous_aggregate_policy('register_readings_hourly', if_exists => true)",
        )
        .execute(pool)
        .await
        .context("cannot remove the refresh policy of the old hourly aggregate")?;
        sqlx::raw_sql("ALTER MATERIALIZED VIEW register_readings_hourly RENAME TO register_readings_hourly_raw")
            .execute(pool)
            .await
            .context("cannot rename the old hourly aggregate to register_readings_hourly_raw")?;
    }
    let kept: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(OLD_HOURLY)
        .fetch_one(pool)
        .await?;
    if kept {
        tracing::warn!(
            view = OLD_HOURLY,
            "the hourly continuous aggregate of earlier versions (built on the raw table) is kept \
             as register_readings_hourly_raw, no longer refreshed: it may hold hours the raw table \
             no longer has, which the new register_readings_hourly (built on register_readings_1m) \
             lacks; once they are not needed, drop it with \
             DROP MATERIALIZED VIEW register_readings_hourly_raw"
        );
    }
    Ok(())
}

/// Turns on real-time aggregation of the continuous aggregate `view` when
/// it was created materialized only. A plain view or table of that name
/// (made before TimescaleDB was installed) has no such option and is left
/// as it is.
async fn real_time(pool: &PgPool, view: &str) -> anyhow::Result<()> {
    let materialized_only: Option<bool> = sqlx::query_scalar(
        "SELECT materialized_only FROM timescaledb_information.continuous_aggregates \
         WHERE view_name = $1",
    )
    .bind(view)
    .fetch_optional(pool)
    .await
    .with_context(|| format!("cannot read how {view} answers"))?;
    let statement = match (materialized_only, view) {
        (Some(true), "register_readings_1m") => {
            "ALTER MATERIALIZED VIEW register_readings_1m SET (timescaledb.materialized_only = false)"
        }
        (Some(true), _) => {
            "ALTER MATERIALIZED VIEW register_readings_hourly SET (timescaledb.materialized_only = false)"
        }
        _ => return Ok(()),
    };
    sqlx::raw_sql(statement)
        .execute(pool)
        .await
        .with_context(|| format!("cannot turn on real-time aggregation of {view}"))?;
    Ok(())
}

/// `url` with every password replaced by `***`, for logs, errors and pages:
/// the one in the user info (`postgres://u:secret@h/db`) and any query
/// parameter whose name holds "pass" (`?password=` as sqlx reads it,
/// `?pass=` as the redis crate reads it for `redis+unix://`, and any other
/// spelling a driver might take). A string that is not a URL is not shown
/// at all, since it cannot be told where a secret in it would be.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return "<unparsable URL>".to_string();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query_pairs().any(|(k, _)| is_secret_param(&k)) {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// Whether a URL query parameter carries a password.
fn is_secret_param(name: &str) -> bool {
    name.to_ascii_lowercase().contains("pass")
}

/// The query parameters sqlx 0.9 reads from a PostgreSQL URL
/// (`PgConnectOptions::parse_from_url`), besides `options[NAME]`.
const PG_URL_PARAMS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Refuses a PostgreSQL URL parameter sqlx does not know before sqlx sees
/// it: sqlx would only log it, with its value, which may be a password
/// under another name (`?passwd=…`).
fn check_pg_params(url: &str) -> anyhow::Result<()> {
    let Ok(u) = url::Url::parse(url) else {
        return Ok(()); // sqlx reports what is wrong with it
    };
    if !matches!(u.scheme(), "postgres" | "postgresql") {
        anyhow::bail!(
            "unsupported scheme `{}` in DATABASE_URL {}: regpoll keeps its registry and history in PostgreSQL (postgres://user@host/db, with or without TimescaleDB) or, without a database URL, in an embedded SQLite file",
            u.scheme(),
            redact_url(url)
        );
    }
    for (key, _) in u.query_pairs() {
        if key == "sslpassword" {
            anyhow::bail!(
                "invalid DATABASE_URL {}: `sslpassword` (the passphrase of an encrypted client key) is not supported; \
                 decrypt the key with `openssl pkey -in KEY -out KEY.plain`, keep that file readable by regpoll only, \
                 and give it as sslkey",
                redact_url(url)
            );
        }
        let known =
            PG_URL_PARAMS.contains(&&*key) || (key.starts_with("options[") && key.ends_with(']'));
        if !known {
            anyhow::bail!(
                "invalid DATABASE_URL {}: unknown parameter `{key}`; PostgreSQL URLs take {}",
                redact_url(url),
                PG_URL_PARAMS.join(", ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::error_text;

    /// An error that, like sqlx's, repeats its source's text in its own.
    #[derive(Debug)]
    struct Wrapping(std::io::Error);

    impl std::fmt::Display for Wrapping {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error returned from database: {}", self.0)
        }
    }

    impl std::error::Error for Wrapping {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let inner = std::io::Error::other("syntax error at line 334");
        let e = anyhow::Error::new(Wrapping(inner)).context("PostgreSQL migrations failed");
        assert_eq!(
            format!("{e:#}").matches("line 334").count(),
            2,
            "the repeat this guards against"
        );
        assert_eq!(
            error_text(e.as_ref()),
            "PostgreSQL migrations failed: error returned from database: syntax error at line 334"
        );
        let plain = anyhow::anyhow!("refused").context("cannot connect");
        assert_eq!(error_text(plain.as_ref()), "cannot connect: refused");
    }

    #[test]
    fn every_password_form_is_redacted() {
        for (url, shown) in [
            (
                "postgres://u@h/db?password=S3cret&sslmode=require",
                "postgres://u@h/db?password=***&sslmode=require",
            ),
            (
                "redis+unix:///s.sock?db=0&pass=S3cret",
                "redis+unix:///s.sock?db=0&pass=***",
            ),
            ("redis://:S3cret@h:6379/0", "redis://:***@h:6379/0"),
            (
                "postgres://u:S3cret@h/db?sslpassword=S3cret",
                "postgres://u:***@h/db?sslpassword=***",
            ),
            (
                "postgres://u:S3cret@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem&sslcert=c.crt&sslkey=c.key&sslpassword=S3cret",
                "postgres://u:***@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&sslcert=c.crt&sslkey=c.key&sslpassword=***",
            ),
            (
                "postgres://u:S3cret@h/db?sslmode=require&sslrootcert=/etc/ca.pem",
                "postgres://u:***@h/db?sslmode=require&sslrootcert=/etc/ca.pem",
            ),
            ("host=h password=S3cret", "<unparsable URL>"),
        ] {
            assert_eq!(super::redact_url(url), shown);
        }
    }

    #[test]
    fn a_postgres_url_parameter_sqlx_does_not_know_is_refused_without_its_value() {
        let e = super::check_pg_params("postgres://u@h/db?sslmode=require&sslpassword=S3cret")
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("`sslpassword`") && e.contains("openssl pkey"),
            "{e}"
        );
        assert!(!e.contains("S3cret"), "{e}");
        let e = super::check_pg_params("postgres://u@h/db?passwd=S3cret").unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("unknown parameter `passwd`"), "{e}");
        assert!(!e.contains("S3cret"), "{e}");
        assert!(
            super::check_pg_params("postgres://u@h/db?sslmode=disable&options[search_path]=x")
                .is_ok()
        );
        let e = format!(
            "{:#}",
            super::check_pg_params("mysql://u:S3cret@h/db").unwrap_err()
        );
        assert!(e.contains("unsupported scheme `mysql`"), "{e}");
        assert!(!e.contains("S3cret"), "{e}");
        assert!(super::check_pg_params("postgresql://u@h/db").is_ok());
    }

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
