//! The command line. Every setting of the service is a flag with an
//! environment fallback (`DATABASE_URL`, `REDIS_URL`, `REGPOLL_*`) and a
//! documented default, all declared in [`crate::settings`]; the flags that
//! belong to one command (`read --unit`, `query range --since`) are here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::registry::{LogFrames, RegisterKind, UnitId, parse_duration};
use crate::settings as s;

#[derive(Debug, Parser)]
#[command(name = "regpoll", version, about = "Modbus TCP polling service and historian", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[arg(long = s::LOG.flag, env = s::LOG.env, help = s::LOG.help, default_value = s::LOG.default_text(), global = true)]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Poll every active device of the registry and store what is read.
    ///
    /// With --devices, the file is synced into the registry first.
    Run(Box<RunArgs>),
    /// Serve the devices of a devices.yaml as a Modbus TCP simulator.
    ///
    /// Every device answers on its host:port and unit id with values that
    /// change once per second, encoded with each register's type and order.
    Simulate {
        /// The devices.yaml whose devices to simulate.
        file: PathBuf,
        /// A faults file making devices or registers misbehave (delay, no_reply,
        /// exception, drop_every, garbage, short_frame, max_registers).
        #[arg(long)]
        faults: Option<PathBuf>,
    },
    /// Start the simulator for the bundled devices.yaml and poll it, printing
    /// live values until Ctrl-C. Uses the embedded defaults (SQLite, memory).
    Demo(DemoArgs),
    /// Validate a devices.yaml and print the read plan of every device.
    Check {
        /// The devices.yaml to check.
        file: PathBuf,
        /// Also read every register of every device once and print value and
        /// quality per register.
        #[arg(long)]
        probe: bool,
    },
    /// Read registers of a device once and print them, to check a device by hand.
    Read(ReadArgs),
    /// Find the unit ids that answer at an address, the addresses each one
    /// reads and the largest read it takes; print a devices.yaml skeleton.
    ///
    /// Progress goes to stderr as the scan goes, the skeleton to stdout
    /// (`regpoll scan 192.0.2.10 > devices.yaml`). The scan is bounded by
    /// --max-time and --max-requests, shared among the units that answer.
    Scan(ScanArgs),
    /// Manage the device registry.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Read stored history: the latest value of every register of a device, or
    /// a time range of one register, raw or per bucket.
    #[command(subcommand)]
    Query(QueryCommand),
    /// Create or upgrade the database schema, then exit.
    Migrate(DbArgs),
    /// Make a token for the HTTP API.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the database's health without the service: what the history
    /// tables cost on disk, their chunks and compression, and the state of
    /// the maintenance jobs. Exits 1 when the database cannot be read.
    Status(StatusArgs),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a random token (32 bytes from the operating system's random
    /// source), print it once, and print the line that lets it in: add that
    /// line to the --http-token-file (it holds the token's SHA-256, not the
    /// token) and send SIGHUP to regpoll, or restart it.
    New {
        /// The token's name, as logs and metrics show it: letters, digits,
        /// `_`, `.` or `-`.
        name: String,
        /// Limit the token to this tenant's devices.
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print JSON (the form of `/api/database`) instead of tables.
    #[arg(long)]
    pub json: bool,
    #[arg(long = s::DB_HEALTH_TIMEOUT.flag, env = s::DB_HEALTH_TIMEOUT.env, help = s::DB_HEALTH_TIMEOUT.help, default_value = s::DB_HEALTH_TIMEOUT.default_text(), value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub db: DbArgs,
}

impl Command {
    /// Whether the command runs until stopped and serves others (the poller,
    /// the simulator, the demo), rather than answering once and exiting.
    pub fn is_service(&self) -> bool {
        matches!(
            self,
            Command::Run(_) | Command::Simulate { .. } | Command::Demo(_)
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Make the registry match a devices.yaml: add and update devices by name,
    /// deactivate the ones that left the file (their history is kept).
    Sync {
        /// The devices.yaml to sync.
        file: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List the devices in the registry.
    List(DbArgs),
    /// Show one device of the registry with its registers: kind, address,
    /// type, unit, own schedule and deadband.
    Show {
        /// The device's name.
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// The newest stored reading of every register of DEVICE.
    Latest {
        device: String,
        #[command(flatten)]
        format: FormatArgs,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Readings of one register over a time range, raw or aggregated per bucket
    /// (avg, min, max, count of good and uncertain values).
    Range {
        device: String,
        register: String,
        /// Start of the range: a duration back from now (1h, 30m, 7d) or an
        /// RFC 3339 time.
        #[arg(long, default_value = "1h")]
        since: String,
        /// End of the range (exclusive): `now`, a duration back from now, or an
        /// RFC 3339 time.
        #[arg(long, default_value = "now")]
        until: String,
        /// Aggregate per bucket of this width (e.g. 1m, 1h).
        #[arg(long, value_parser = parse_duration)]
        bucket: Option<Duration>,
        /// Most rows to return; more matching rows is an error that says how
        /// to narrow the query.
        #[arg(long, default_value_t = crate::history::query::DEFAULT_LIMIT)]
        limit: usize,
        #[command(flatten)]
        format: FormatArgs,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// How `query` prints its rows: an aligned table unless one of these is given.
#[derive(Debug, Clone, Copy, Args)]
#[group(multiple = false)]
pub struct FormatArgs {
    /// Print a JSON array of rows.
    #[arg(long)]
    pub json: bool,
    /// Print CSV with a header line.
    #[arg(long)]
    pub csv: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    #[arg(long = s::DATABASE_URL.flag, env = s::DATABASE_URL.env, help = s::DATABASE_URL.help, hide_env_values = true)]
    database_url: Option<String>,
    #[arg(long = s::DATABASE_SSLMODE.flag, env = s::DATABASE_SSLMODE.env, help = s::DATABASE_SSLMODE.help, value_parser = crate::db::parse_sslmode)]
    database_sslmode: Option<sqlx::postgres::PgSslMode>,
    #[arg(long = s::DATABASE_SSLROOTCERT.flag, env = s::DATABASE_SSLROOTCERT.env, help = s::DATABASE_SSLROOTCERT.help)]
    database_sslrootcert: Option<PathBuf>,
    #[arg(long = s::DATABASE_SSLCERT.flag, env = s::DATABASE_SSLCERT.env, help = s::DATABASE_SSLCERT.help)]
    database_sslcert: Option<PathBuf>,
    #[arg(long = s::DATABASE_SSLKEY.flag, env = s::DATABASE_SSLKEY.env, help = s::DATABASE_SSLKEY.help)]
    database_sslkey: Option<PathBuf>,
    #[arg(long = s::SQLITE_PATH.flag, env = s::SQLITE_PATH.env, help = s::SQLITE_PATH.help, default_value = s::SQLITE_PATH.default_text())]
    pub sqlite_path: PathBuf,
}

impl DbArgs {
    /// The database URL from the flag, REGPOLL_DATABASE_URL or DATABASE_URL.
    pub fn database_url(&self) -> Option<String> {
        self.database_url
            .clone()
            .or_else(|| env_fallback(s::DATABASE_URL_FALLBACK))
    }

    /// The `--database-ssl*` settings, which override the URL's.
    pub fn database_tls(&self) -> crate::db::PgTls {
        crate::db::PgTls {
            sslmode: self.database_sslmode,
            sslrootcert: self.database_sslrootcert.clone(),
            sslcert: self.database_sslcert.clone(),
            sslkey: self.database_sslkey.clone(),
        }
    }
}

/// A conventional unprefixed variable, read when the REGPOLL_ one is unset.
fn env_fallback(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    #[arg(long = s::REDIS_URL.flag, env = s::REDIS_URL.env, help = s::REDIS_URL.help, hide_env_values = true)]
    redis_url: Option<String>,
    #[arg(long = s::REDIS_CA.flag, env = s::REDIS_CA.env, help = s::REDIS_CA.help)]
    redis_ca: Option<PathBuf>,
    #[arg(long = s::REDIS_CERT.flag, env = s::REDIS_CERT.env, help = s::REDIS_CERT.help)]
    redis_cert: Option<PathBuf>,
    #[arg(long = s::REDIS_KEY.flag, env = s::REDIS_KEY.env, help = s::REDIS_KEY.help)]
    redis_key: Option<PathBuf>,
    #[arg(long = s::REDIS_PREFIX.flag, env = s::REDIS_PREFIX.env, help = s::REDIS_PREFIX.help, default_value = s::REDIS_PREFIX.default_text())]
    pub redis_prefix: String,
    #[arg(long = s::REDIS_TTL.flag, env = s::REDIS_TTL.env, help = s::REDIS_TTL.help, value_parser = parse_duration)]
    pub redis_ttl: Option<Duration>,
    #[arg(long = s::REDIS_TIMEOUT.flag, env = s::REDIS_TIMEOUT.env, help = s::REDIS_TIMEOUT.help, default_value = s::REDIS_TIMEOUT.default_text(), value_parser = parse_duration)]
    pub redis_timeout: Duration,
    #[arg(long = s::REDIS_LINGER.flag, env = s::REDIS_LINGER.env, help = s::REDIS_LINGER.help, default_value = s::REDIS_LINGER.default_text(), value_parser = parse_duration)]
    pub redis_linger: Duration,
    #[arg(long = s::BATCH_ROWS.flag, env = s::BATCH_ROWS.env, help = s::BATCH_ROWS.help, default_value = s::BATCH_ROWS.default_text())]
    pub batch_rows: usize,
    #[arg(long = s::DATA_DIR.flag, env = s::DATA_DIR.env, help = s::DATA_DIR.help, default_value = s::DATA_DIR.default_text())]
    pub data_dir: PathBuf,
    #[arg(long = s::SPOOL_AFTER.flag, env = s::SPOOL_AFTER.env, help = s::SPOOL_AFTER.help, default_value = s::SPOOL_AFTER.default_text())]
    pub spool_after: usize,
    #[arg(long = s::HISTORY_MEMORY_MAX.flag, env = s::HISTORY_MEMORY_MAX.env, help = s::HISTORY_MEMORY_MAX.help, default_value = s::HISTORY_MEMORY_MAX.default_text())]
    pub history_memory_max: usize,
    #[arg(long = s::SPOOL_MAX.flag, env = s::SPOOL_MAX.env, help = s::SPOOL_MAX.help, value_parser = s::parse_bytes)]
    pub spool_max: Option<u64>,
    #[arg(long = s::HISTORY_STALLED_AFTER.flag, env = s::HISTORY_STALLED_AFTER.env, help = s::HISTORY_STALLED_AFTER.help, default_value = s::HISTORY_STALLED_AFTER.default_text(), value_parser = parse_duration)]
    pub history_stalled_after: Duration,
    #[arg(long = s::BATCH_DELAY.flag, env = s::BATCH_DELAY.env, help = s::BATCH_DELAY.help, default_value = s::BATCH_DELAY.default_text(), value_parser = parse_duration)]
    pub batch_delay: Duration,
    #[arg(long = s::HISTORY_RETRY_MAX.flag, env = s::HISTORY_RETRY_MAX.env, help = s::HISTORY_RETRY_MAX.help, default_value = s::HISTORY_RETRY_MAX.default_text(), value_parser = parse_duration)]
    pub history_retry_max: Duration,
    #[arg(long = s::RETENTION.flag, env = s::RETENTION.env, help = s::RETENTION.help, default_value = s::RETENTION.default_text(), value_parser = crate::history::retention::parse_retention_arg)]
    pub retention: crate::history::retention::Retention,
    #[arg(long = s::RETENTION_1M.flag, env = s::RETENTION_1M.env, help = s::RETENTION_1M.help, default_value = s::RETENTION_1M.default_text(), value_parser = crate::history::retention::parse_rollup_retention_arg)]
    pub retention_1m: crate::history::retention::RollupRetention,
    #[arg(long = s::RETENTION_1H.flag, env = s::RETENTION_1H.env, help = s::RETENTION_1H.help, default_value = s::RETENTION_1H.default_text(), value_parser = crate::history::retention::parse_retention_arg)]
    pub retention_1h: crate::history::retention::Retention,
    #[arg(long = s::ROLLUP_INTERVAL.flag, env = s::ROLLUP_INTERVAL.env, help = s::ROLLUP_INTERVAL.help, default_value = s::ROLLUP_INTERVAL.default_text(), value_parser = parse_duration)]
    pub rollup_interval: Duration,
    #[arg(long = s::JOBS_CHECK_INTERVAL.flag, env = s::JOBS_CHECK_INTERVAL.env, help = s::JOBS_CHECK_INTERVAL.help, default_value = s::JOBS_CHECK_INTERVAL.default_text(), value_parser = parse_duration)]
    pub jobs_check_interval: Duration,
    #[arg(long = s::DB_HEALTH_TIMEOUT.flag, env = s::DB_HEALTH_TIMEOUT.env, help = s::DB_HEALTH_TIMEOUT.help, default_value = s::DB_HEALTH_TIMEOUT.default_text(), value_parser = parse_duration)]
    pub db_health_timeout: Duration,
    #[arg(long = s::SHUTDOWN_TIMEOUT.flag, env = s::SHUTDOWN_TIMEOUT.env, help = s::SHUTDOWN_TIMEOUT.help, default_value = s::SHUTDOWN_TIMEOUT.default_text(), value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

impl SinkArgs {
    /// The Redis URL from the flag, REGPOLL_REDIS_URL or REDIS_URL.
    pub fn redis_url(&self) -> Option<String> {
        self.redis_url
            .clone()
            .or_else(|| env_fallback(s::REDIS_URL_FALLBACK))
    }

    /// The files TLS to Redis is set up from.
    pub fn redis_tls(&self) -> crate::latest::redis::RedisTls {
        crate::latest::redis::RedisTls {
            ca: self.redis_ca.clone(),
            cert: self.redis_cert.clone(),
            key: self.redis_key.clone(),
        }
    }
}

/// Where the HTTP API listens: `host:port`, or `off`.
#[derive(Debug, Clone, Copy)]
pub struct HttpAddr(pub Option<std::net::SocketAddr>);

fn parse_http(text: &str) -> Result<HttpAddr, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(HttpAddr(None));
    }
    text.parse().map(|a| HttpAddr(Some(a))).map_err(|_| {
        format!("`{text}` is not an address; use IP:PORT (127.0.0.1:8080, 0.0.0.0:8080) or `off`")
    })
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[arg(long = s::DEVICES.flag, env = s::DEVICES.env, help = s::DEVICES.help)]
    pub devices: Option<PathBuf>,
    #[arg(long = s::RELOAD_INTERVAL.flag, env = s::RELOAD_INTERVAL.env, help = s::RELOAD_INTERVAL.help, default_value = s::RELOAD_INTERVAL.default_text(), value_parser = parse_duration)]
    pub reload_interval: Duration,
    #[arg(long = s::HTTP.flag, env = s::HTTP.env, help = s::HTTP.help, default_value = s::HTTP.default_text(), value_parser = parse_http)]
    pub http: HttpAddr,
    #[arg(long = s::DATABASE_RETRY_MAX.flag, env = s::DATABASE_RETRY_MAX.env, help = s::DATABASE_RETRY_MAX.help, default_value = s::DATABASE_RETRY_MAX.default_text(), value_parser = parse_duration)]
    pub database_retry_max: Duration,
    #[command(flatten)]
    pub access: AccessArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub sinks: SinkArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Sharing the fleet with other instances (see `cluster`).
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    #[arg(long = s::CLUSTER.flag, env = s::CLUSTER.env, help = s::CLUSTER.help, action = clap::ArgAction::SetTrue)]
    pub cluster: bool,
    #[arg(long = s::INSTANCE_ID.flag, env = s::INSTANCE_ID.env, help = s::INSTANCE_ID.help)]
    pub instance_id: Option<String>,
    #[arg(long = s::CLUSTER_LEASE.flag, env = s::CLUSTER_LEASE.env, help = s::CLUSTER_LEASE.help, default_value = s::CLUSTER_LEASE.default_text(), value_parser = parse_duration)]
    pub cluster_lease: Duration,
    #[arg(long = s::CLUSTER_HEARTBEAT.flag, env = s::CLUSTER_HEARTBEAT.env, help = s::CLUSTER_HEARTBEAT.help, default_value = s::CLUSTER_HEARTBEAT.default_text(), value_parser = parse_duration)]
    pub cluster_heartbeat: Duration,
    #[arg(long = s::CLUSTER_FENCE_MARGIN.flag, env = s::CLUSTER_FENCE_MARGIN.env, help = s::CLUSTER_FENCE_MARGIN.help, default_value = s::CLUSTER_FENCE_MARGIN.default_text(), value_parser = parse_duration)]
    pub cluster_fence_margin: Duration,
}

impl ClusterArgs {
    /// The cluster's settings, when `--cluster` is given.
    pub fn settings(&self) -> Option<crate::cluster::ClusterSettings> {
        self.cluster.then(|| crate::cluster::ClusterSettings {
            instance_id: self
                .instance_id
                .clone()
                .filter(|id| !id.trim().is_empty())
                .unwrap_or_else(crate::cluster::default_instance_id),
            lease: self.cluster_lease,
            heartbeat: self.cluster_heartbeat,
            fence_margin: self.cluster_fence_margin,
            address: None,
        })
    }
}

/// Who may use the HTTP API, and HTTPS (see `api::auth`, `api::tls`).
#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    #[arg(long = s::HTTP_TOKEN_FILE.flag, env = s::HTTP_TOKEN_FILE.env, help = s::HTTP_TOKEN_FILE.help)]
    pub http_token_file: Option<PathBuf>,
    #[arg(long = s::HTTP_METRICS_OPEN.flag, env = s::HTTP_METRICS_OPEN.env, help = s::HTTP_METRICS_OPEN.help, action = clap::ArgAction::SetTrue)]
    pub http_metrics_open: bool,
    #[arg(long = s::HTTP_INSECURE.flag, env = s::HTTP_INSECURE.env, help = s::HTTP_INSECURE.help, action = clap::ArgAction::SetTrue)]
    pub http_insecure: bool,
    #[arg(long = s::HTTP_TLS_CERT.flag, env = s::HTTP_TLS_CERT.env, help = s::HTTP_TLS_CERT.help)]
    pub http_tls_cert: Option<PathBuf>,
    #[arg(long = s::HTTP_TLS_KEY.flag, env = s::HTTP_TLS_KEY.env, help = s::HTTP_TLS_KEY.help)]
    pub http_tls_key: Option<PathBuf>,
}

impl AccessArgs {
    /// The API's access settings; `REGPOLL_HTTP_TOKENS` is read from the
    /// environment here, since it has no flag.
    pub fn access(&self) -> anyhow::Result<crate::api::auth::Access> {
        Ok(crate::api::auth::Access {
            tokens: crate::api::auth::TokenSource {
                file: self.http_token_file.clone(),
                env: std::env::var(s::HTTP_TOKENS.env).ok(),
            },
            metrics_open: self.http_metrics_open,
            insecure: self.http_insecure,
            tls: crate::api::tls::TlsFiles::pair(
                self.http_tls_cert.clone(),
                self.http_tls_key.clone(),
            )?,
        })
    }
}

/// The HTTP API's limits (see `api::limits`).
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    #[arg(long = s::API_CONCURRENCY.flag, env = s::API_CONCURRENCY.env, help = s::API_CONCURRENCY.help, default_value = s::API_CONCURRENCY.default_text(), value_parser = clap::value_parser!(u16).range(1..))]
    pub api_concurrency: u16,
    #[arg(long = s::API_WAIT.flag, env = s::API_WAIT.env, help = s::API_WAIT.help, default_value = s::API_WAIT.default_text(), value_parser = parse_duration)]
    pub api_wait: Duration,
    #[arg(long = s::API_TIMEOUT.flag, env = s::API_TIMEOUT.env, help = s::API_TIMEOUT.help, default_value = s::API_TIMEOUT.default_text(), value_parser = parse_duration)]
    pub api_timeout: Duration,
    #[arg(long = s::API_DB_CONNECTIONS.flag, env = s::API_DB_CONNECTIONS.env, help = s::API_DB_CONNECTIONS.help, default_value = s::API_DB_CONNECTIONS.default_text(), value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub api_db_connections: u32,
    #[arg(long = s::API_MAX_RESPONSE.flag, env = s::API_MAX_RESPONSE.env, help = s::API_MAX_RESPONSE.help, default_value = s::API_MAX_RESPONSE.default_text(), value_parser = crate::api::limits::parse_bytes)]
    pub api_max_response: usize,
    #[arg(long = s::API_MAX_DEVICES.flag, env = s::API_MAX_DEVICES.env, help = s::API_MAX_DEVICES.help, default_value = s::API_MAX_DEVICES.default_text(), value_parser = clap::value_parser!(u16).range(1..))]
    pub api_max_devices: u16,
}

impl ApiArgs {
    pub fn limits(&self) -> crate::api::ApiLimits {
        crate::api::ApiLimits {
            concurrency: usize::from(self.api_concurrency),
            wait: self.api_wait,
            timeout: self.api_timeout,
            db_connections: self.api_db_connections,
            max_response: self.api_max_response,
            max_devices: usize::from(self.api_max_devices),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Use this devices.yaml instead of the bundled one.
    #[arg(long)]
    pub devices: Option<PathBuf>,
    /// SQLite file for the demo's registry and history.
    #[arg(long = s::SQLITE_PATH.flag, env = s::SQLITE_PATH.env, default_value = s::SQLITE_PATH.default_text())]
    pub sqlite_path: PathBuf,
    /// Seconds between two summaries.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub every: Duration,
    /// Address of the HTTP API and status page, or `off`. When the port is
    /// taken, the demo picks a free one and prints it.
    #[arg(long = s::HTTP.flag, env = s::HTTP.env, default_value = s::HTTP.default_text(), value_parser = parse_http)]
    pub http: HttpAddr,
    #[command(flatten)]
    pub access: AccessArgs,
}

/// Where `read` and `scan` talk to: HOST[:PORT] over TCP (Modbus TCP or RTU
/// frames), or a serial line.
#[derive(Debug, Clone, Args)]
pub struct LinkArgs {
    /// HOST or HOST:PORT of the device or gateway (port 502 when left out);
    /// leave it out with --serial.
    pub endpoint: Option<String>,
    /// tcp (Modbus TCP), rtu-over-tcp (RTU frames to HOST:PORT, as serial
    /// gateways that pass bytes through speak) or rtu (a serial line, with
    /// --serial). Default: rtu with --serial, else tcp.
    #[arg(long, value_name = "TRANSPORT")]
    pub transport: Option<String>,
    /// The serial line to use (transport rtu), e.g. /dev/ttyUSB0.
    #[arg(long, value_name = "PATH")]
    pub serial: Option<String>,
    /// Baud rate of the serial line [default: 9600].
    #[arg(long)]
    pub baud: Option<u32>,
    /// Parity of the serial line: none, even or odd [default: none].
    #[arg(long)]
    pub parity: Option<String>,
    /// Data bits of the serial line: 7 or 8 [default: 8].
    #[arg(long)]
    pub data_bits: Option<u8>,
    /// Stop bits of the serial line: 1 or 2 [default: 1].
    #[arg(long)]
    pub stop_bits: Option<u8>,
}

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["holding", "input", "coil", "discrete"])))]
pub struct ReadArgs {
    #[command(flatten)]
    pub link: LinkArgs,
    /// Modbus unit id (1..247 on the RTU transports).
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// Read holding registers (0x03) from this 0-based address.
    #[arg(long, value_name = "ADDR")]
    pub holding: Option<u16>,
    /// Read input registers (0x04) from this 0-based address.
    #[arg(long, value_name = "ADDR")]
    pub input: Option<u16>,
    /// Read coils (0x01) from this 0-based address.
    #[arg(long, value_name = "ADDR")]
    pub coil: Option<u16>,
    /// Read discrete inputs (0x02) from this 0-based address.
    #[arg(long, value_name = "ADDR")]
    pub discrete: Option<u16>,
    /// How many values to read.
    #[arg(long, default_value_t = 1)]
    pub count: u16,
    /// Type of each value: u8 i8 (both bytes of each word) u16 i16 u32 i32 u64 i64 f16 f32 f64 bcd16 bcd32.
    #[arg(long = "type", default_value = "u16")]
    pub data_type: String,
    /// Byte order of multi-word values (ABCD, CDAB, BADC, DCBA or the 64-bit names).
    #[arg(long, default_value = "ABCD")]
    pub order: String,
    /// Bound on the connect and on the request.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Show each 32- or 64-bit value in all four byte orders side by side,
    /// to find the one a device uses (instead of --order).
    #[arg(long, conflicts_with = "order")]
    pub guess_order: bool,
    /// Log each request and its answer: `header` (unit, function, addresses,
    /// outcome, time) or `payload` (also the words in hex or the bits).
    #[arg(long, value_name = "LEVEL", value_parser = parse_log_frames)]
    pub log_frames: Option<LogFrames>,
}

#[derive(Debug, Clone, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub link: LinkArgs,
    /// Unit ids to try: ids and ranges, e.g. `1-10,17` (1-247).
    #[arg(long, default_value = "1-247", value_parser = parse_units)]
    pub units: Units,
    /// The table to probe: holding, input, coil or discrete.
    #[arg(long, default_value = "holding", value_parser = parse_kind)]
    pub kind: RegisterKind,
    /// Bound on each request; a unit that does not answer within it is taken as absent.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The addresses probed: FIRST-LAST, 0-based protocol addresses.
    #[arg(long, default_value = "0-65535", value_parser = parse_addresses)]
    pub addresses: AddressRange,
    /// Size of the pieces a refused block is read again in: a readable run
    /// shorter than this between two refused addresses can be missed;
    /// smaller finds more and asks more.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=2000))]
    pub resolution: u16,
    /// Bound on the whole scan's time; what was found by then is printed.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub max_time: Duration,
    /// Bound on the whole scan's requests.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests: u32,
    /// Log each request and its answer: `header` or `payload` (see `read`).
    #[arg(long, value_name = "LEVEL", value_parser = parse_log_frames)]
    pub log_frames: Option<LogFrames>,
}

/// Unit ids to scan, in ascending order, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Units(pub Vec<UnitId>);

/// `1-10,17`: unit ids and ranges of them, each 1-247 (0 is the broadcast
/// address, which never answers; 248-255 are reserved).
pub fn parse_units(text: &str) -> Result<Units, String> {
    const VALID: &str = "write unit ids 1-247 and ranges of them, e.g. 1-10,17";
    let mut units = Vec::new();
    for part in text.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!("`{text}` has an empty entry; {VALID}"));
        }
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (unit_id(a.trim())?, unit_id(b.trim())?),
            None => (unit_id(part)?, unit_id(part)?),
        };
        if first > last {
            return Err(format!(
                "range {part} is reversed; write the lower id first: {last}-{first}"
            ));
        }
        units.extend((first..=last).map(UnitId));
    }
    units.sort();
    units.dedup();
    Ok(Units(units))
}

fn unit_id(text: &str) -> Result<u8, String> {
    match text.parse::<u32>() {
        Ok(0) => Err(
            "unit 0 is the broadcast address, which never answers a read; valid unit ids are 1-247"
                .into(),
        ),
        Ok(n @ 1..=247) => Ok(n as u8),
        Ok(n) => Err(format!("unit {n} is outside 1-247 (248-255 are reserved)")),
        Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => Err(format!(
            "unit {text} is outside 1-247 (248-255 are reserved)"
        )),
        Err(_) => Err(format!(
            "`{text}` is not a unit id; write unit ids 1-247 and ranges of them, e.g. 1-10,17"
        )),
    }
}

/// A range of protocol addresses, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    pub first: u16,
    pub last: u16,
}

/// `FIRST-LAST` or one address, 0-65535.
pub fn parse_addresses(text: &str) -> Result<AddressRange, String> {
    let address = |t: &str| {
        t.trim().parse::<u16>().map_err(|_| {
            format!("`{}` is not an address; write FIRST-LAST with 0-based protocol addresses 0-65535, e.g. 0-9999", t.trim())
        })
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (address(a)?, address(b)?),
        None => (address(text)?, address(text)?),
    };
    if first > last {
        return Err(format!(
            "range {text} is reversed; write the lower address first: {last}-{first}"
        ));
    }
    Ok(AddressRange { first, last })
}

fn parse_kind(text: &str) -> Result<RegisterKind, String> {
    text.parse()
}

fn parse_log_frames(text: &str) -> Result<LogFrames, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_take_ids_and_ranges_in_any_order_each_once() {
        let Units(u) = parse_units("17, 1-3,2").unwrap();
        assert_eq!(u, [1, 2, 3, 17].map(UnitId));
        assert_eq!(parse_units("1-247").unwrap().0.len(), 247);
    }

    #[test]
    fn hostile_units_are_refused_with_what_is_valid() {
        for (text, says) in [
            ("0", "unit 0 is the broadcast address"),
            ("248", "unit 248 is outside 1-247"),
            ("1-300", "unit 300 is outside 1-247"),
            (
                "10-1",
                "range 10-1 is reversed; write the lower id first: 1-10",
            ),
            ("1,,2", "has an empty entry"),
            ("", "has an empty entry"),
            ("one", "`one` is not a unit id"),
            ("-5", "`` is not a unit id"),
            ("99999999999", "is outside 1-247"),
        ] {
            let e = parse_units(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn address_ranges_are_ordered_and_inside_the_address_space() {
        assert_eq!(
            parse_addresses("100-199"),
            Ok(AddressRange {
                first: 100,
                last: 199
            })
        );
        assert_eq!(parse_addresses("7"), Ok(AddressRange { first: 7, last: 7 }));
        for (text, says) in [
            (
                "200-100",
                "reversed; write the lower address first: 100-200",
            ),
            ("0-65536", "`65536` is not an address"),
            ("x", "`x` is not an address"),
        ] {
            let e = parse_addresses(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
