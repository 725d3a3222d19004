//! Just enough of Redis's protocol (RESP2) for the latest-value writer: a
//! connection opened from a `redis://` or `rediss://` URL (TLS, AUTH and
//! SELECT included), commands encoded straight into the bytes that are
//! sent, and answers counted off as they come back.
//!
//! The writer sends thousands of commands a second whose answers are all an
//! integer or an error. The redis crate's multiplexed connection copied every
//! pipeline twice more on its way to the socket, went through a channel to a
//! task of its own and back, and parsed each answer into a `Value`: with the
//! building of the commands, a fifth of regpoll's CPU at 10,000 devices
//! (BENCHMARKS.md). Here the bytes built are the bytes written, by the
//! writer's own task, and an answer is only looked at for being an error.

use std::future::Future;
use std::io::ErrorKind;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;

use super::tls::{self, RedisTls, Tls};

/// Where to connect and how to log in, from a Redis URL.
#[derive(Clone)]
pub struct Target {
    addr: Addr,
    /// Set for `rediss://`.
    tls: Option<Tls>,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    /// The address as logs show it (no password).
    shown: String,
}

impl std::fmt::Debug for Target {
    // Without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
enum Addr {
    Tcp(String, u16),
    Unix(std::path::PathBuf),
}

/// The two halves of an open connection.
pub struct Stream {
    pub rx: Box<dyn AsyncRead + Unpin + Send>,
    pub tx: Box<dyn AsyncWrite + Unpin + Send>,
}

impl Stream {
    fn of<R, W>((rx, tx): (R, W)) -> Stream
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        Stream {
            rx: Box::new(rx),
            tx: Box::new(tx),
        }
    }
}

const USAGE: &str = "expected redis://[[user]:password@]host[:port][/db], rediss://… for TLS, or redis+unix:///path?db=N";

/// Redis's own port, when the URL names none.
const DEFAULT_PORT: u16 = 6379;

impl Target {
    /// Reads `redis://[[user]:password@]host[:port][/db]`, the same with
    /// `rediss://` (TLS, set up from `tls`), or a Unix socket
    /// (`redis+unix:///path?db=N&user=U&pass=P`, `unix:///path`). The
    /// user and password are percent-decoded, as the redis crate reads them.
    pub fn parse(url: &str, tls: &RedisTls) -> anyhow::Result<Target> {
        let shown = crate::db::redact_url(url);
        let u =
            url::Url::parse(url).with_context(|| format!("invalid REDIS_URL {shown}: {USAGE}"))?;
        let secure = u.scheme() == "rediss";
        let (addr, username, password, db) = match u.scheme() {
            "redis" | "rediss" => tcp_parts(&u),
            "redis+unix" | "unix" => unix_parts(&u),
            other => bail!("invalid REDIS_URL {shown}: unknown scheme {other:?}; {USAGE}"),
        }
        .with_context(|| format!("invalid REDIS_URL {shown}"))?;
        let tls = match (&addr, secure) {
            (Addr::Tcp(host, _), true) => {
                Some(Tls::new(host, tls).with_context(|| format!("TLS to Redis at {shown}"))?)
            }
            _ if tls.is_set() => bail!(
                "--redis-ca, --redis-cert and --redis-key are for TLS, but REDIS_URL {shown} is not a rediss:// URL: use rediss://"
            ),
            _ => None,
        };
        Ok(Target {
            addr,
            tls,
            username,
            password,
            db,
            shown,
        })
    }

    /// Opens a connection (TLS when `rediss://`), logs in and selects the
    /// database, all within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> anyhow::Result<Stream> {
        self.open(timeout, false).await
    }

    /// Connects (logging in as the writer does) and sends PING, all within
    /// `timeout`: the readiness probe, which so tells whether the writer
    /// could connect now, on a connection of its own.
    pub async fn ping(&self, timeout: Duration) -> anyhow::Result<()> {
        self.open(timeout, true).await.map(drop)
    }

    async fn open(&self, timeout: Duration, ping: bool) -> anyhow::Result<Stream> {
        let deadline = Instant::now() + timeout;
        let ms = timeout.as_millis();
        let no_connection = || {
            format!(
                "Redis at {} did not accept a connection within {ms} ms",
                self.shown
            )
        };
        let stream = match &self.addr {
            Addr::Tcp(host, port) => {
                let connect = async {
                    tokio::net::TcpStream::connect((host.as_str(), *port))
                        .await
                        .with_context(|| format!("cannot connect to Redis at {}", self.shown))
                };
                let s = by(deadline, connect, &no_connection).await?;
                // Pipelines are written whole; waiting to fill a segment
                // would only add to a value's way into Redis.
                s.set_nodelay(true)?;
                match &self.tls {
                    // A socket's own halves need no lock between them.
                    None => Stream::of(s.into_split()),
                    Some(tls) => {
                        let handshake = tls.handshake(s, &self.shown);
                        Stream::of(tokio::io::split(by(deadline, handshake, || {
                            format!("Redis at {} did not answer the TLS handshake within {ms} ms: is it a plain (non-TLS) port? use redis://", self.shown)
                        })
                        .await?))
                    }
                }
            }
            Addr::Unix(path) => {
                let connect = async {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .with_context(|| format!("cannot connect to Redis at {}", self.shown))
                };
                Stream::of(by(deadline, connect, &no_connection).await?.into_split())
            }
        };
        // Over TLS 1.3 a server that refuses the client's certificate (or
        // its absence) says so only after the client's side of the
        // handshake is done: a PING makes that refusal, too, a failure to
        // connect rather than the first pipeline's.
        let ping = ping || self.tls.is_some();
        by(deadline, self.login(stream, ping), || {
            format!("Redis at {} did not answer within {ms} ms", self.shown)
        })
        .await
    }

    /// Sends AUTH, SELECT and PING as needed, and reads their answers.
    async fn login(&self, mut stream: Stream, ping: bool) -> anyhow::Result<Stream> {
        let mut hello = Commands::default();
        if let Some(password) = &self.password {
            match &self.username {
                Some(user) => hello.command(3).arg(b"AUTH").arg(user.as_bytes()),
                None => hello.command(2).arg(b"AUTH"),
            }
            .arg(password.as_bytes());
        }
        if self.db != 0 {
            hello
                .command(2)
                .arg(b"SELECT")
                .arg(self.db.to_string().as_bytes());
        }
        if ping {
            hello.command(1).arg(b"PING");
        }
        if hello.count() == 0 {
            return Ok(stream);
        }
        let failed = |e: std::io::Error| {
            if let Some(refused) = tls::refused_after_handshake(&e, &self.shown) {
                return refused;
            }
            let what = if hung_up(&e) {
                self.closed_early()
            } else {
                format!("Redis at {} failed", self.shown)
            };
            anyhow::Error::new(e).context(what)
        };
        stream.tx.write_all(hello.bytes()).await.map_err(failed)?;
        stream.tx.flush().await.map_err(failed)?;
        let mut inbox = Vec::with_capacity(256);
        let mut answered = 0;
        let mut at = 0;
        while answered < hello.count() {
            match next_reply(&inbox[at..])
                .with_context(|| format!("Redis at {} answered oddly", self.shown))?
            {
                Some((len, error)) => {
                    if let Some(e) = error {
                        bail!(
                            "Redis at {} refused {}: {}",
                            self.shown,
                            self.refused_command(answered),
                            String::from_utf8_lossy(e)
                        );
                    }
                    at += len;
                    answered += 1;
                }
                None => {
                    if stream.rx.read_buf(&mut inbox).await.map_err(failed)? == 0 {
                        bail!("{}", self.closed_early());
                    }
                }
            }
        }
        Ok(stream)
    }

    /// What the `n`th command of the login was, for its refusal.
    fn refused_command(&self, n: usize) -> String {
        let auth = usize::from(self.password.is_some());
        let select = usize::from(self.db != 0);
        if n < auth {
            let user = self.username.as_deref().unwrap_or("default");
            format!("AUTH for user {user} (check the user and password in REDIS_URL)")
        } else if n < auth + select {
            "SELECT (check the database number in REDIS_URL)".to_string()
        } else {
            "PING".to_string()
        }
    }

    /// What to say when Redis hangs up before it answered anything.
    pub(super) fn closed_early(&self) -> String {
        if self.tls.is_some() {
            format!(
                "Redis at {} closed the TLS connection before answering",
                self.shown
            )
        } else {
            format!(
                "Redis at {} closed the connection before answering: if the port is TLS-only, use rediss://",
                self.shown
            )
        }
    }

    /// The address as logs may show it.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// Whether `e` is Redis hanging up. A TLS-only port that is sent plain
/// text resets the connection rather than closing it.
pub(super) fn hung_up(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
    )
}

/// `f`, failing with `late()` if it is not done by `deadline`.
async fn by<T>(
    deadline: Instant,
    f: impl Future<Output = anyhow::Result<T>>,
    late: impl FnOnce() -> String,
) -> anyhow::Result<T> {
    tokio::time::timeout_at(deadline, f)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!(late())))
}

type Parts = (Addr, Option<String>, Option<String>, i64);

/// `redis[s]://[[user]:password@]host[:port][/db]`.
fn tcp_parts(u: &url::Url) -> anyhow::Result<Parts> {
    let host = match u.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        // Without the brackets, which neither a socket address nor a TLS
        // server name takes.
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => bail!("no host name"),
    };
    let db = match u.path().trim_matches('/') {
        "" => 0,
        path => database_number(path)?,
    };
    let username = Some(decoded(u.username(), "user name")?).filter(|s| !s.is_empty());
    let password = u.password().map(|p| decoded(p, "password")).transpose()?;
    Ok((
        Addr::Tcp(host, u.port().unwrap_or(DEFAULT_PORT)),
        username,
        password,
        db,
    ))
}

/// `redis+unix:///path?db=N&user=U&pass=P` (and `unix://`).
fn unix_parts(u: &url::Url) -> anyhow::Result<Parts> {
    let path = u
        .to_file_path()
        .map_err(|()| anyhow::anyhow!("no socket path"))?;
    let mut parts = (Addr::Unix(path), None, None, 0);
    for (key, value) in u.query_pairs() {
        match &*key {
            "db" => parts.3 = database_number(&value)?,
            "user" => parts.1 = Some(value.into_owned()),
            "pass" => parts.2 = Some(value.into_owned()),
            _ => {}
        }
    }
    Ok(parts)
}

fn database_number(text: &str) -> anyhow::Result<i64> {
    text.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .with_context(|| format!("{text:?} is not a database number (0, 1, …)"))
}

/// A percent-encoded part of the URL. The error never quotes it: it may be
/// the password.
fn decoded(part: &str, what: &str) -> anyhow::Result<String> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| anyhow::anyhow!("the {what} is not UTF-8 once percent-decoded"))
}

/// Commands in RESP, written where they will be sent from.
#[derive(Debug, Default)]
pub struct Commands {
    buf: Vec<u8>,
    count: usize,
}

impl Commands {
    pub fn with_capacity(bytes: usize) -> Commands {
        Commands {
            buf: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    /// Starts a command of `args` arguments (its name included), which
    /// the next `args` calls of `arg` or `arg_parts` write.
    pub fn command(&mut self, args: usize) -> &mut Self {
        self.count += 1;
        self.buf.push(b'*');
        push_decimal(&mut self.buf, args);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    pub fn arg(&mut self, bytes: &[u8]) -> &mut Self {
        self.arg_parts(&[bytes])
    }

    /// One argument made of `parts` one after the other (a key from its
    /// prefix, kind and device, without building it first).
    pub fn arg_parts(&mut self, parts: &[&[u8]]) -> &mut Self {
        self.buf.push(b'$');
        push_decimal(&mut self.buf, parts.iter().map(|p| p.len()).sum());
        self.buf.extend_from_slice(b"\r\n");
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// How many commands have been started.
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Forgets what was written (keeping the room it took).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    // Most are argument counts and short lengths.
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    if n < 100 {
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
        return;
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// An answer Redis's protocol does not allow, or one of RESP3's kinds (the
/// connection never asks for RESP3).
#[derive(Debug, thiserror::Error)]
#[error("not a RESP2 reply: {0}")]
pub struct ProtocolError(String);

/// A complete reply's length in bytes and, when it is an error (or an array
/// holding one), the error's text.
pub type Reply<'a> = (usize, Option<&'a [u8]>);

/// The first complete reply at the start of `buf`; `None` while it is not
/// all there yet.
pub fn next_reply(buf: &[u8]) -> Result<Option<Reply<'_>>, ProtocolError> {
    let Some(end) = line_end(buf) else {
        return Ok(None);
    };
    let line = &buf[1..end];
    let after = end + 2;
    match buf[0] {
        b'+' | b':' => Ok(Some((after, None))),
        b'-' => Ok(Some((after, Some(line)))),
        b'$' => {
            let len = length(line)?;
            let Some(len) = len else {
                return Ok(Some((after, None)));
            };
            let total = after + len + 2;
            if buf.len() < total {
                return Ok(None);
            }
            if &buf[total - 2..total] != b"\r\n" {
                return Err(ProtocolError("a bulk string not ended by CRLF".into()));
            }
            Ok(Some((total, None)))
        }
        b'*' => {
            let Some(items) = length(line)? else {
                return Ok(Some((after, None)));
            };
            let mut at = after;
            let mut error = None;
            for _ in 0..items {
                let Some((len, e)) = next_reply(&buf[at..])? else {
                    return Ok(None);
                };
                error = error.or(e);
                at += len;
            }
            Ok(Some((at, error)))
        }
        other => Err(ProtocolError(format!(
            "unexpected type byte {:?}",
            other as char
        ))),
    }
}

/// Where the first line's CRLF starts.
fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A bulk string's or an array's length; `None` for the null ones (-1).
fn length(line: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let text = std::str::from_utf8(line).unwrap_or("");
    match text.parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if n >= 0 => Ok(Some(n as usize)),
        _ => Err(ProtocolError(format!(
            "bad length {:?}",
            String::from_utf8_lossy(line)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_measured_whole_and_errors_picked_out() {
        let cases: &[(&[u8], Option<Reply>)] = &[
            (b":1\r\n", Some((4, None))),
            (b"+OK\r\n:2", Some((5, None))),
            (b"-WRONGTYPE bad\r\n", Some((16, Some(b"WRONGTYPE bad")))),
            (b"$3\r\nabc\r\n", Some((9, None))),
            (b"$-1\r\n", Some((5, None))),
            (b"*-1\r\n", Some((5, None))),
            (b"*2\r\n:1\r\n-ERR x\r\n", Some((16, Some(b"ERR x")))),
            (b"*2\r\n$1\r\na\r\n*1\r\n:5\r\n", Some((19, None))),
            // Not all there yet.
            (b"", None),
            (b":1\r", None),
            (b"$3\r\nab", None),
            (b"*2\r\n:1\r\n", None),
        ];
        for (bytes, want) in cases {
            let got = next_reply(bytes).unwrap();
            assert_eq!(got, *want, "{}", String::from_utf8_lossy(bytes));
        }
        for bad in [&b"%1\r\n"[..], b"$x\r\n", b"$-2\r\n", b"$1\r\nab\r\n"] {
            assert!(next_reply(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn commands_are_encoded_as_redis_reads_them() {
        let mut c = Commands::default();
        c.command(3)
            .arg(b"HSET")
            .arg_parts(&[b"p", b":latest:", b"d"])
            .arg(b"");
        c.command(1).arg(b"PING");
        assert_eq!(c.count(), 2);
        assert_eq!(
            c.bytes(),
            b"*3\r\n$4\r\nHSET\r\n$10\r\np:latest:d\r\n$0\r\n\r\n*1\r\n$4\r\nPING\r\n"
        );
        // A command is an array of bulk strings: the reply reader measures it too.
        assert_eq!(next_reply(c.bytes()).unwrap(), Some((37, None)));
        let mut n = Vec::new();
        for v in [0, 7, 10, 99, 100, 1234567890, usize::MAX] {
            n.clear();
            push_decimal(&mut n, v);
            assert_eq!(n, v.to_string().as_bytes());
        }
    }

    #[test]
    fn a_url_gives_the_address_login_and_database() {
        let none = RedisTls::default();
        let t = Target::parse("redis://u:s3cret@cache.example:6380/3", &none).unwrap();
        assert!(matches!(&t.addr, Addr::Tcp(h, 6380) if h == "cache.example"));
        assert_eq!(t.username.as_deref(), Some("u"));
        assert_eq!(t.password.as_deref(), Some("s3cret"));
        assert_eq!(t.db, 3);
        assert!(!t.shown().contains("s3cret"), "{}", t.shown());
        let t = Target::parse("redis+unix:///run/redis.sock?db=2", &none).unwrap();
        assert!(matches!(&t.addr, Addr::Unix(p) if p.ends_with("redis.sock")));
        assert_eq!(t.db, 2);
        let e = Target::parse("http://x", &none).unwrap_err();
        assert!(format!("{e:#}").contains("redis://"), "{e:#}");
    }

    #[test]
    fn every_url_form_reads_as_the_redis_crate_reads_it() {
        let none = RedisTls::default();
        let t = Target::parse("redis://localhost", &none).unwrap();
        assert!(matches!(&t.addr, Addr::Tcp(h, 6379) if h == "localhost"));
        assert!(t.tls.is_none() && t.username.is_none() && t.password.is_none());
        assert_eq!(t.db, 0);
        // A password alone logs in as the default user.
        let t = Target::parse("redis://:p%40ss%3Aw%2Fd@10.0.0.5:7000/", &none).unwrap();
        assert!(matches!(&t.addr, Addr::Tcp(h, 7000) if h == "10.0.0.5"));
        assert_eq!(t.username, None);
        assert_eq!(t.password.as_deref(), Some("p@ss:w/d"));
        // IPv6 without the brackets, which a socket address does not take.
        let t = Target::parse("rediss://[::1]:6380/1", &none).unwrap();
        assert!(matches!(&t.addr, Addr::Tcp(h, 6380) if h == "::1"));
        assert!(t.tls.is_some());
        assert_eq!(t.db, 1);
        let t = Target::parse("rediss://us%20er:pw@cache.example.com:6380/0", &none).unwrap();
        assert_eq!(t.username.as_deref(), Some("us er"));
        assert!(t.tls.is_some());
        let t = Target::parse("unix:///tmp/r.sock?user=u&pass=pw&db=4", &none).unwrap();
        assert!(matches!(&t.addr, Addr::Unix(p) if p.ends_with("r.sock")));
        assert_eq!(
            (t.username.as_deref(), t.password.as_deref(), t.db),
            (Some("u"), Some("pw"), 4)
        );
    }

    #[test]
    fn bad_urls_are_refused_without_their_password() {
        let none = RedisTls::default();
        for (url, says) in [
            ("redis://:hunter2@cache/x", "not a database number"),
            ("redis://:hunter2@cache/-1", "not a database number"),
            ("rediss://:hunter2@/0", "host"),
            (
                "redis+unix:///r.sock?db=x&pass=hunter2",
                "not a database number",
            ),
            ("redis://:hunter2%FF@cache/", "not UTF-8"),
            ("memcache://:hunter2@cache/", "unknown scheme"),
            ("not a url hunter2", "expected redis://"),
        ] {
            let e = format!("{:#}", Target::parse(url, &none).unwrap_err());
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
        let t = Target::parse("redis://u:hunter2@cache/", &none).unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
    }

    #[test]
    fn tls_files_with_a_plain_url_are_refused_at_start() {
        let ca = RedisTls {
            ca: Some("/etc/ca.crt".into()),
            ..RedisTls::default()
        };
        for url in ["redis://cache/", "redis+unix:///r.sock"] {
            let e = format!("{:#}", Target::parse(url, &ca).unwrap_err());
            assert!(e.contains("use rediss://"), "{e}");
        }
    }

    #[test]
    fn unreadable_tls_files_are_named_and_a_key_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crt");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN PRIVATE KEY-----\nsecretkeymaterial!!\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let url = "rediss://cache/";
        let with = |ca: Option<&std::path::Path>,
                    cert: Option<&std::path::Path>,
                    key: Option<&std::path::Path>| {
            let tls = RedisTls {
                ca: ca.map(Into::into),
                cert: cert.map(Into::into),
                key: key.map(Into::into),
            };
            format!("{:#}", Target::parse(url, &tls).unwrap_err())
        };
        let e = with(Some(&missing), None, None);
        assert!(e.contains("--redis-ca") && e.contains("missing.crt"), "{e}");
        let e = with(Some(&empty), None, None);
        assert!(e.contains("no certificate"), "{e}");
        let e = with(None, Some(&empty), None);
        assert!(e.contains("without --redis-key"), "{e}");
        let e = with(None, None, Some(&garbage));
        assert!(e.contains("without --redis-cert"), "{e}");
        // A key is no certificate (tests/tls_redis.rs pairs a real
        // certificate with bad keys).
        let e = with(None, Some(&garbage), Some(&garbage));
        assert!(e.contains("--redis-cert"), "{e}");
        assert!(!e.contains("secretkeymaterial"), "{e}");
    }
}
