//! Every setting of the service, declared once: its flag, its environment
//! variable, its help line and its default as the command line writes it.
//! `cli` builds the flags from these; `app::Settings::default()` and the
//! writers' own `Default`s read the same defaults, so the library and the
//! binary never disagree (a test parses the bare command line and compares).
//!
//! Defaults are kept as text, the way `--help` and `regpoll.env.example`
//! show them, and parsed where a typed value is needed; a test checks that
//! every one parses.

use std::time::Duration;

use crate::registry::parse_duration;

/// One setting: a `--flag`, the environment variable read when the flag is
/// absent, and the default used when neither is given.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The long flag, without `--`; empty for a setting read from the
    /// environment only (a secret on the command line shows in `ps`).
    pub flag: &'static str,
    pub env: &'static str,
    /// The `--help` text.
    pub help: &'static str,
    /// As the command line writes it; `None`: unset unless given.
    pub default: Option<&'static str>,
}

impl Setting {
    /// The default, for `#[arg(default_value = …)]`.
    pub const fn default_text(&self) -> &'static str {
        match self.default {
            Some(text) => text,
            None => panic!("this setting has no default"),
        }
    }

    /// The default of a duration setting.
    pub fn default_duration(&self) -> Duration {
        parse_duration(self.default_text())
            .unwrap_or_else(|e| panic!("the default of --{}: {e}", self.flag))
    }

    /// The default of a count setting.
    pub fn default_count(&self) -> usize {
        self.default_text()
            .parse()
            .unwrap_or_else(|e| panic!("the default of --{}: {e}", self.flag))
    }
}

// Logging.

pub const LOG: Setting = Setting {
    flag: "log",
    env: "REGPOLL_LOG",
    help: "Log filter in tracing's env-filter syntax: a level (error, warn, info, debug, trace) or per-module directives (`info,regpoll::sink=debug`). Logs go to standard error",
    default: Some("info"),
};

// Where the registry and history are kept.

pub const DATABASE_URL: Setting = Setting {
    flag: "database-url",
    env: "REGPOLL_DATABASE_URL",
    help: "PostgreSQL URL (TimescaleDB is used when installed); `DATABASE_URL` is read too when REGPOLL_DATABASE_URL is unset. Without it, an embedded SQLite file keeps the registry and history",
    default: None,
};

/// The conventional variable read when `REGPOLL_DATABASE_URL` is unset.
pub const DATABASE_URL_FALLBACK: &str = "DATABASE_URL";

// TLS to PostgreSQL. Each one given overrides the URL's parameter of the
// same name; unset, the URL's (or libpq's PGSSL* variables') applies.

/// `prefer` when neither this nor the URL says: TLS when the server offers
/// it, without checking whom it talks to (what libpq does too).
pub const DATABASE_SSLMODE: Setting = Setting {
    flag: "database-sslmode",
    env: "REGPOLL_DATABASE_SSLMODE",
    help: "TLS to PostgreSQL: disable, allow, prefer, require, verify-ca (the server's certificate is signed by a trusted CA) or verify-full (and is for the host name connected to). Overrides the URL's sslmode. Default: the URL's sslmode, else prefer",
    default: None,
};

pub const DATABASE_SSLROOTCERT: Setting = Setting {
    flag: "database-sslrootcert",
    env: "REGPOLL_DATABASE_SSLROOTCERT",
    help: "PEM file of the CA(s) that signed PostgreSQL's certificate, checked with sslmode verify-ca or verify-full (and require, as libpq does). Overrides the URL's sslrootcert. Default: the URL's, else the built-in public roots (webpki-roots)",
    default: None,
};

pub const DATABASE_SSLCERT: Setting = Setting {
    flag: "database-sslcert",
    env: "REGPOLL_DATABASE_SSLCERT",
    help: "PEM file of the client certificate regpoll shows PostgreSQL (pg_hba `cert` logins); needs --database-sslkey. Overrides the URL's sslcert. Default: the URL's, else none",
    default: None,
};

pub const DATABASE_SSLKEY: Setting = Setting {
    flag: "database-sslkey",
    env: "REGPOLL_DATABASE_SSLKEY",
    help: "PEM file of the client certificate's private key, unencrypted (keep it readable by regpoll only). Overrides the URL's sslkey. Default: the URL's, else none",
    default: None,
};

pub const SQLITE_PATH: Setting = Setting {
    flag: "sqlite-path",
    env: "REGPOLL_SQLITE_PATH",
    help: "SQLite file used when no database URL is given",
    default: Some("regpoll.db"),
};

// Latest values in Redis.

pub const REDIS_URL: Setting = Setting {
    flag: "redis-url",
    env: "REGPOLL_REDIS_URL",
    help: "Redis URL for the latest-value cache; `REDIS_URL` is read too when REGPOLL_REDIS_URL is unset. Without it, latest values are kept in memory only",
    default: None,
};

/// The conventional variable read when `REGPOLL_REDIS_URL` is unset.
pub const REDIS_URL_FALLBACK: &str = "REDIS_URL";

pub const REDIS_PREFIX: Setting = Setting {
    flag: "redis-prefix",
    env: "REGPOLL_REDIS_PREFIX",
    help: "Prefix of every Redis key and channel",
    default: Some("regpoll"),
};

pub const REDIS_TTL: Setting = Setting {
    flag: "redis-ttl",
    env: "REGPOLL_REDIS_TTL",
    help: "Expiry of each device's Redis keys (e.g. 1h), refreshed at every write, so devices that are gone disappear. Default: no expiry",
    default: None,
};

pub const REDIS_CA: Setting = Setting {
    flag: "redis-ca",
    env: "REGPOLL_REDIS_CA",
    help: "PEM file of the CA that signed Redis's certificate, for a rediss:// URL. Default: the public roots (webpki-roots)",
    default: None,
};

pub const REDIS_CERT: Setting = Setting {
    flag: "redis-cert",
    env: "REGPOLL_REDIS_CERT",
    help: "PEM file of a client certificate shown to Redis over rediss:// (for a server with tls-auth-clients); needs --redis-key. Default: none",
    default: None,
};

pub const REDIS_KEY: Setting = Setting {
    flag: "redis-key",
    env: "REGPOLL_REDIS_KEY",
    help: "PEM file of the private key of --redis-cert. Default: none",
    default: None,
};

/// Long enough for a pipeline of 256 polls on a loaded box, short enough
/// that a hung connection is noticed within a few polls.
pub const REDIS_TIMEOUT: Setting = Setting {
    flag: "redis-timeout",
    env: "REGPOLL_REDIS_TIMEOUT",
    help: "Time allowed for connecting to Redis and for Redis to answer a pipeline (e.g. 2s); past it the connection is dropped and the values are written after reconnecting",
    default: Some("2s"),
};

/// At thousands of polls a second a round trip per poll costs more CPU than
/// the polls themselves; the linger bounds what gathering adds to a value's
/// way into Redis.
pub const REDIS_LINGER: Setting = Setting {
    flag: "redis-linger",
    env: "REGPOLL_REDIS_LINGER",
    help: "How long the Redis writer lets poll reports gather before writing them in one pipeline (e.g. 2ms)",
    default: Some("2ms"),
};

// History.

pub const BATCH_ROWS: Setting = Setting {
    flag: "batch-rows",
    env: "REGPOLL_BATCH_ROWS",
    help: "Most readings written to history in one batch",
    default: Some("5000"),
};

pub const BATCH_DELAY: Setting = Setting {
    flag: "batch-delay",
    env: "REGPOLL_BATCH_DELAY",
    help: "Longest a reading waits in a partial batch (e.g. 200ms)",
    default: Some("200ms"),
};

/// About 10 s of 1,000 devices × 10 registers at 1 s.
pub const SPOOL_AFTER: Setting = Setting {
    flag: "spool-after",
    env: "REGPOLL_SPOOL_AFTER",
    help: "Unwritten readings kept in memory while the database refuses them, before the oldest go to the disk spool",
    default: Some("100000"),
};

/// 30 s of 10,000 devices × 10 registers at 1 s (100,000 readings a
/// second), 5 minutes of 1,000 such devices: about 120 MB at 40 bytes a row.
pub const HISTORY_MEMORY_MAX: Setting = Setting {
    flag: "history-memory-max",
    env: "REGPOLL_HISTORY_MEMORY_MAX",
    help: "Unwritten readings kept in memory when neither the database nor the disk spool takes them (disk full, --spool-max reached, no spool), about 40 bytes each; past it the oldest are dropped and counted as lost",
    default: Some("3000000"),
};

/// Unset: the spool takes what the disk holds, and a full disk is handled
/// like a spool at its limit.
pub const SPOOL_MAX: Setting = Setting {
    flag: "spool-max",
    env: "REGPOLL_SPOOL_MAX",
    help: "Most bytes the disk spool may hold (e.g. 2GB, 500MB, or plain bytes); past it readings wait in memory up to --history-memory-max. Default: as much as the disk holds",
    default: None,
};

/// Longer than the retry ceiling (5 s) and a long COPY, so one slow write is
/// not an alarm; short enough that an orchestrator sees an outage within a
/// minute.
pub const HISTORY_STALLED_AFTER: Setting = Setting {
    flag: "history-stalled-after",
    env: "REGPOLL_HISTORY_STALLED_AFTER",
    help: "How long history may write nothing while readings wait before /ready answers 503 `history: nothing written …` (e.g. 30s)",
    default: Some("30s"),
};

pub const DATA_DIR: Setting = Setting {
    flag: "data-dir",
    env: "REGPOLL_DATA_DIR",
    help: "Directory for regpoll's own files: the spool (in its `spool` subdirectory) and the registry cache (`registry-cache.json`), which lets `run` poll while PostgreSQL is unreachable at start",
    default: Some("regpoll-data"),
};

/// The spool lives in this subdirectory of `--data-dir`.
pub const SPOOL_SUBDIR: &str = "spool";

/// A database that comes back is found within this long; one that stays
/// away is not asked more than about once per this long (with jitter, so a
/// fleet of regpolls restarted together does not knock in step).
pub const DATABASE_RETRY_MAX: Setting = Setting {
    flag: "database-retry-max",
    env: "REGPOLL_DATABASE_RETRY_MAX",
    help: "Longest wait between two attempts to connect to PostgreSQL after starting without it (e.g. 10s); the wait starts at 250ms and doubles up to this. Meanwhile regpoll polls the devices of its registry cache in --data-dir",
    default: Some("10s"),
};

/// The wait after a refused write starts at 100 ms and doubles up to this:
/// a database that is back is found within this long, one that stays down
/// is not asked more than once per this long.
pub const HISTORY_RETRY_MAX: Setting = Setting {
    flag: "history-retry-max",
    env: "REGPOLL_HISTORY_RETRY_MAX",
    help: "Longest wait between two attempts to write readings the database refused (e.g. 5s); the wait starts at 100ms and doubles up to this",
    default: Some("5s"),
};

/// 365 days, as before rollups existed: an upgrade must never delete
/// readings the previous version kept.
pub const RETENTION: Setting = Setting {
    flag: "retention",
    env: "REGPOLL_RETENTION",
    help: "How long raw readings are kept: years of 365 days (1y), days (365d), weeks (52w), hours (48h) or `off`. TimescaleDB drops old chunks by policy; otherwise an hourly job deletes expired rows in batches",
    default: Some("365d"),
};

/// `auto`: two years, or the raw rows' retention when that is longer. A
/// minute row holds a register's minute in one row (about 60 raw rows at
/// 1 s polling), so the 1-minute rollup answers charts of the year before
/// the raw rows' year too, for a small part of their size; following a
/// longer `--retention` means an upgrade that kept raw rows for longer (or
/// forever) starts without being told to set this too.
pub const RETENTION_1M: Setting = Setting {
    flag: "retention-1m",
    env: "REGPOLL_RETENTION_1M",
    help: "How long the 1-minute rollup (register_readings_1m) is kept, in the units of --retention, `off`, or `auto`: 730d, or --retention when that is longer (off when it is off); at least as long as --retention",
    default: Some("auto"),
};

/// Off: an hour row is 3,600 raw rows at 1 s polling, so the hourly rollup
/// of a register costs under 100 kB a decade; trends over years need it.
pub const RETENTION_1H: Setting = Setting {
    flag: "retention-1h",
    env: "REGPOLL_RETENTION_1H",
    help: "How long the hourly rollup (register_readings_hourly) is kept, in the units of --retention, or `off` (forever); at least as long as --retention-1m",
    default: Some("off"),
};

/// A minute: the 1-minute rollup then lags the newest rows by about one
/// refresh (queries answer the minutes after the watermark from the raw
/// rows, so they never lag).
pub const ROLLUP_INTERVAL: Setting = Setting {
    flag: "rollup-interval",
    env: "REGPOLL_ROLLUP_INTERVAL",
    help: "How often regpoll refreshes the 1-minute and hourly rollups from the readings written since (plain PostgreSQL and SQLite; TimescaleDB refreshes its continuous aggregates by policy)",
    default: Some("1m"),
};

pub const JOBS_CHECK_INTERVAL: Setting = Setting {
    flag: "jobs-check-interval",
    env: "REGPOLL_JOBS_CHECK_INTERVAL",
    help: "How often the database's health is read: TimescaleDB's background jobs (retention, compression, the rollups' refresh; a failing one is a /ready warning) and the size, row estimate, chunks and compression of the history tables, shown on /metrics, /api/database and the status page",
    default: Some("1m"),
};

/// Each read of the database's health gives up after this long, and the
/// server cancels its statements then: a catalog locked by a long DDL or a
/// server that stopped answering shows as a read error, never as a stuck task.
pub const DB_HEALTH_TIMEOUT: Setting = Setting {
    flag: "db-health-timeout",
    env: "REGPOLL_DB_HEALTH_TIMEOUT",
    help: "Longest wait for one read of the database's health (jobs, table sizes), by `run` every --jobs-check-interval and by `regpoll status`; past it the read counts as failed (e.g. 10s)",
    default: Some("10s"),
};

/// Poll reports that may wait for the history writer (no flag): 1.6 s of
/// 10,000 devices polled every second. The writer takes reports
/// continuously, also while the database is away, so the queue fills only
/// when the writer gets no CPU for that long (a start-up burst on a loaded
/// machine); a report that finds it full is dropped and counted
/// (`rows_lost`, `reports_dropped`): pollers never wait. It costs memory
/// only while it is full (about 600 bytes a report of 10 registers).
pub const HISTORY_QUEUE: usize = 16_384;

// The service.

pub const DEVICES: Setting = Setting {
    flag: "devices",
    env: "REGPOLL_DEVICES",
    help: "A devices.yaml to sync into the registry before polling; edits to it are synced while running",
    default: None,
};

pub const RELOAD_INTERVAL: Setting = Setting {
    flag: "reload-interval",
    env: "REGPOLL_RELOAD_INTERVAL",
    help: "How often to check the registry (and the devices file) for changes. PostgreSQL also notifies changes at once",
    default: Some("2s"),
};

pub const SHUTDOWN_TIMEOUT: Setting = Setting {
    flag: "shutdown-timeout",
    env: "REGPOLL_SHUTDOWN_TIMEOUT",
    help: "Longest shutdown waits for queued readings to be written (e.g. 10s)",
    default: Some("10s"),
};

/// Loopback, where the API needs no token by default; another address
/// needs tokens (or `--http-insecure`). The library's own default is no
/// HTTP at all (see `app::Settings::http`).
pub const HTTP: Setting = Setting {
    flag: "http",
    env: "REGPOLL_HTTP",
    help: "Address of the HTTP API and status page (IP:PORT), or `off`. A non-loopback address needs tokens (--http-token-file, REGPOLL_HTTP_TOKENS) or --http-insecure",
    default: Some("127.0.0.1:8080"),
};

// Who may use the HTTP API (see `api::auth`).

pub const HTTP_TOKEN_FILE: Setting = Setting {
    flag: "http-token-file",
    env: "REGPOLL_HTTP_TOKEN_FILE",
    help: "File of the HTTP API's bearer tokens, one `<name> <secret> [<tenant>]` a line (`sha256:<hex>` or the token itself; `regpoll token new` makes one); with tokens every endpoint but /health needs `Authorization: Bearer <token>`. Read at start and on SIGHUP",
    default: None,
};

/// Environment only: a token given on the command line shows in `ps`.
pub const HTTP_TOKENS: Setting = Setting {
    flag: "",
    env: "REGPOLL_HTTP_TOKENS",
    help: "The HTTP API's bearer tokens as `<name> <secret> [<tenant>]` entries separated by `;` or newlines (environment only), beside or instead of --http-token-file",
    default: None,
};

/// Off: a scraper inside the trust boundary can be let in on purpose, and
/// Prometheus can send a bearer token anyway.
pub const HTTP_METRICS_OPEN: Setting = Setting {
    flag: "http-metrics-open",
    env: "REGPOLL_HTTP_METRICS_OPEN",
    help: "Serve /metrics without a token although tokens are configured, for Prometheus scrapers inside the trust boundary (true or false)",
    default: Some("false"),
};

pub const HTTP_INSECURE: Setting = Setting {
    flag: "http-insecure",
    env: "REGPOLL_HTTP_INSECURE",
    help: "Serve the HTTP API on a non-loopback address without tokens, on purpose: anyone who reaches it reads every device (true or false)",
    default: Some("false"),
};

pub const HTTP_TLS_CERT: Setting = Setting {
    flag: "http-tls-cert",
    env: "REGPOLL_HTTP_TLS_CERT",
    help: "PEM file of the HTTP API's certificate chain (server certificate first); with --http-tls-key the API serves HTTPS only",
    default: None,
};

pub const HTTP_TLS_KEY: Setting = Setting {
    flag: "http-tls-key",
    env: "REGPOLL_HTTP_TLS_KEY",
    help: "PEM file of the private key of --http-tls-cert",
    default: None,
};

// Several instances sharing one fleet (`run --cluster`, see `cluster`).

pub const CLUSTER: Setting = Setting {
    flag: "cluster",
    env: "REGPOLL_CLUSTER",
    help: "Share the fleet with every other `run --cluster` on the same PostgreSQL database: each endpoint (host:port or serial line) is polled by exactly one live instance, and a dead instance's endpoints are taken over within --cluster-lease plus one heartbeat and one poll interval (true or false)",
    default: Some("false"),
};

pub const INSTANCE_ID: Setting = Setting {
    flag: "instance-id",
    env: "REGPOLL_INSTANCE_ID",
    help: "This instance's name in the cluster (default: host name and process id). A fixed name gets the same endpoints back after a restart; two live instances may not share one",
    default: None,
};

/// Five heartbeats: an instance fences itself only after four renewals in
/// a row failed (the fence margin takes the fifth), so one slow statement
/// never stops polling, while a dead instance's devices are polled again
/// within about 6 s plus one interval.
pub const CLUSTER_LEASE: Setting = Setting {
    flag: "cluster-lease",
    env: "REGPOLL_CLUSTER_LEASE",
    help: "How long an instance's ownership lasts without a renewal (e.g. 5s); the others take over its endpoints once it has expired on the database's clock",
    default: Some("5s"),
};

pub const CLUSTER_HEARTBEAT: Setting = Setting {
    flag: "cluster-heartbeat",
    env: "REGPOLL_CLUSTER_HEARTBEAT",
    help: "How often an instance renews its lease, looks for instances that joined or died and balances the endpoints (e.g. 1s); a join, a graceful stop and a release are also notified at once",
    default: Some("1s"),
};

/// Covers what happens between the fence and a new owner's first request:
/// the last request's answer, stopping the devices and closing their
/// connections (a device with one connection slot needs it free). Clock
/// skew between machines does not enter (leases are timed on the
/// database's clock and fenced on this process's monotonic clock); the
/// clocks' rates do, by a few microseconds per lease.
pub const CLUSTER_FENCE_MARGIN: Setting = Setting {
    flag: "cluster-fence-margin",
    env: "REGPOLL_CLUSTER_FENCE_MARGIN",
    help: "How long before its lease can expire an instance that could not renew it stops sending requests (e.g. 1s); less than --cluster-lease minus --cluster-heartbeat",
    default: Some("1s"),
};

// Limits of the HTTP API: what one client, or a thousand, can make regpoll
// hold. Measured without them: 1,000 concurrent requests took regpoll to
// 1.16 GB and one history write waited 7.3 s for a connection.

/// Requests served at once. A request holds its slot until its answer has
/// been handed to the socket, so slow readers count too: this times
/// `--api-max-response` bounds the memory that answers can hold.
pub const API_CONCURRENCY: Setting = Setting {
    flag: "api-concurrency",
    env: "REGPOLL_API_CONCURRENCY",
    help: "HTTP requests served at once (all but /health); more wait up to --api-wait, then get 503 with Retry-After",
    default: Some("16"),
};

/// Short: a client that is refused retries, one that waits holds a socket.
pub const API_WAIT: Setting = Setting {
    flag: "api-wait",
    env: "REGPOLL_API_WAIT",
    help: "Longest an HTTP request waits for a free slot (--api-concurrency) and then for a connection of the API's database pool (e.g. 1s); past it, 503 with Retry-After",
    default: Some("1s"),
};

pub const API_TIMEOUT: Setting = Setting {
    flag: "api-timeout",
    env: "REGPOLL_API_TIMEOUT",
    help: "Longest an HTTP request may take to produce its answer (e.g. 10s); past it, 503 and the database statement is cancelled",
    default: Some("10s"),
};

/// Few: the API's queries are range scans on the primary key; more
/// connections would only compete with the history writer's for the server.
pub const API_DB_CONNECTIONS: Setting = Setting {
    flag: "api-db-connections",
    env: "REGPOLL_API_DB_CONNECTIONS",
    help: "Connections of the HTTP API's own database pool, apart from the history writer's, so API load never delays history writes",
    default: Some("4"),
};

/// About 18,000 raw rows; the default `limit` (10,000 rows) fits.
pub const API_MAX_RESPONSE: Setting = Setting {
    flag: "api-max-response",
    env: "REGPOLL_API_MAX_RESPONSE",
    help: "Largest /api/readings answer (e.g. 2MiB, 512KiB, or bytes); a larger one is a 400 that says how to page through the range",
    default: Some("2MiB"),
};

/// A page shows a few dozen devices; 200 lets a tall screen ask for all of
/// its own at once while keeping one request's work (and, for sparklines,
/// its database queries) bounded whatever the fleet size.
pub const API_MAX_DEVICES: Setting = Setting {
    flag: "api-max-devices",
    env: "REGPOLL_API_MAX_DEVICES",
    help: "Most devices one request may name or page through (/api/latest, /api/buckets, /api/fleet's per_page); more is a 400 that says to split the list",
    default: Some("200"),
};

/// A size in bytes: plain bytes, or a number with KB, MB, GB or TB (powers
/// of 1024), e.g. `500MB`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "`{text}` is not a size; write e.g. 2GB, 500MB or 1048576"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{text}` is not a size above 0; write e.g. 2GB, 500MB or 1048576"))
}

#[cfg(test)]
mod tests;
