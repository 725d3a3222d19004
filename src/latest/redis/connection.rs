//! Just enough of Redis's protocol (RESP2) for the latest-value writer: a
//! connection opened from a `redis://` URL (AUTH and SELECT included),
//! commands encoded straight into the bytes that are sent, and answers
//! counted off as they come back.
//!
//! The writer sends thousands of commands a second whose answers are all an
//! integer or an error. The redis crate's multiplexed connection copied every
//! pipeline twice more on its way to the socket, went through a channel to a
//! task of its own and back, and parsed each answer into a `Value`: with the
//! building of the commands, a fifth of regpoll's CPU at 10,000 devices
//! (BENCHMARKS.md). Here the bytes built are the bytes written, by the
//! writer's own task, and an answer is only looked at for being an error.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Where to connect and how to log in, from a `redis://` URL.
#[derive(Debug, Clone)]
pub struct Target {
    addr: Addr,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    /// The address as logs show it (no password).
    shown: String,
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

impl Target {
    /// Reads `redis://[[user]:password@]host[:port][/db]` or a Unix socket
    /// (`redis+unix:///path?db=N`, `unix:///path`); the URL rules are the
    /// redis crate's, so the writer and the readiness probe read a URL alike.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let shown = crate::db::redact_url(url);
        let client = redis::Client::open(url).with_context(|| {
            format!(
                "invalid REDIS_URL {shown}: expected redis://[[user]:password@]host[:port][/db]"
            )
        })?;
        let info = client.get_connection_info();
        let addr = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            redis::ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            _ => bail!(
                "REDIS_URL {shown}: TLS (rediss://) is not supported by this build; use redis:// (for example through a TLS tunnel such as stunnel)"
            ),
        };
        let settings = info.redis_settings();
        Ok(Target {
            addr,
            username: settings.username().map(str::to_string),
            password: settings.password().map(str::to_string),
            db: settings.db(),
            shown,
        })
    }

    /// Opens a connection, logs in and selects the database, all within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> anyhow::Result<Stream> {
        tokio::time::timeout(timeout, self.open())
            .await
            .unwrap_or_else(|_| {
                bail!(
                    "Redis at {} did not accept a connection within {} ms",
                    self.shown,
                    timeout.as_millis()
                )
            })
    }

    /// Connects (logging in as the writer does), sends PING and waits for
    /// its answer, all within `timeout`: the readiness probe, which so tells
    /// whether the writer could connect now, on a connection of its own.
    pub async fn ping(&self, timeout: Duration) -> anyhow::Result<()> {
        let probe = async {
            let Stream { mut rx, mut tx } = self.open().await?;
            let mut ping = Commands::default();
            ping.command(1).arg(b"PING");
            tx.write_all(ping.bytes()).await?;
            let mut answer = Vec::with_capacity(64);
            loop {
                if let Some((_, error)) = next_reply(&answer)? {
                    return match error {
                        None => Ok(()),
                        Some(e) => bail!("PING refused: {}", String::from_utf8_lossy(e)),
                    };
                }
                if rx.read_buf(&mut answer).await? == 0 {
                    bail!("Redis closed the connection before answering PING");
                }
            }
        };
        tokio::time::timeout(timeout, probe)
            .await
            .unwrap_or_else(|_| bail!("no answer within {} ms", timeout.as_millis()))
    }

    async fn open(&self) -> anyhow::Result<Stream> {
        let mut stream = match &self.addr {
            Addr::Tcp(host, port) => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .with_context(|| format!("cannot connect to Redis at {}", self.shown))?;
                // Pipelines are written whole; waiting to fill a segment
                // would only add to a value's way into Redis.
                s.set_nodelay(true)?;
                let (rx, tx) = s.into_split();
                Stream {
                    rx: Box::new(rx),
                    tx: Box::new(tx),
                }
            }
            Addr::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(|| format!("cannot connect to Redis at {}", self.shown))?;
                let (rx, tx) = s.into_split();
                Stream {
                    rx: Box::new(rx),
                    tx: Box::new(tx),
                }
            }
        };
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
        if hello.count() == 0 {
            return Ok(stream);
        }
        stream.tx.write_all(hello.bytes()).await?;
        let mut inbox = Vec::with_capacity(256);
        let mut answered = 0;
        let mut at = 0;
        while answered < hello.count() {
            match next_reply(&inbox[at..])
                .with_context(|| format!("Redis at {} answered oddly", self.shown))?
            {
                Some((len, error)) => {
                    if let Some(e) = error {
                        let what = if answered == 0 && self.password.is_some() {
                            "AUTH (check the user and password in REDIS_URL)"
                        } else {
                            "SELECT (check the database number in REDIS_URL)"
                        };
                        bail!(
                            "Redis at {} refused {what}: {}",
                            self.shown,
                            String::from_utf8_lossy(e)
                        );
                    }
                    at += len;
                    answered += 1;
                }
                None => {
                    if stream.rx.read_buf(&mut inbox).await? == 0 {
                        bail!("Redis at {} closed the connection on login", self.shown);
                    }
                }
            }
        }
        Ok(stream)
    }

    /// The address as logs may show it.
    pub fn shown(&self) -> &str {
        &self.shown
    }
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
        let t = Target::parse("redis://u:s3cret@cache.example:6380/3").unwrap();
        assert!(matches!(&t.addr, Addr::Tcp(h, 6380) if h == "cache.example"));
        assert_eq!(t.username.as_deref(), Some("u"));
        assert_eq!(t.password.as_deref(), Some("s3cret"));
        assert_eq!(t.db, 3);
        assert!(!t.shown().contains("s3cret"), "{}", t.shown());
        let t = Target::parse("redis+unix:///run/redis.sock?db=2").unwrap();
        assert!(matches!(&t.addr, Addr::Unix(p) if p.ends_with("redis.sock")));
        assert_eq!(t.db, 2);
        let e = Target::parse("http://x").unwrap_err();
        assert!(format!("{e:#}").contains("redis://"), "{e:#}");
    }
}
