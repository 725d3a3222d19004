//! One Modbus TCP connection per endpoint (host:port), shared by every unit id
//! behind it, because gateways put many devices behind one address and many
//! of them accept only one or a few connections.
//!
//! tokio-modbus has no request timeout of its own, so every connect and every
//! request is wrapped in one here. After a timeout, transport error or protocol
//! error the connection is out of step (a late reply would be taken as the
//! answer to the next request), so it is dropped and re-opened before the next
//! request; it is never reused. A Modbus exception is a proper answer and
//! keeps the connection.

use std::fmt;
use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{Mutex, MutexGuard};
use tokio_modbus::client::{Context, Reader, tcp};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

use crate::registry::{RegisterKind, UnitId};

/// Why a read produced no value. Its `Display` is the `detail` users see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("timeout after {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(String),
    #[error("connect: timeout after {} ms", .0.as_millis())]
    ConnectTimeout(Duration),
    #[error("exception {} ({})", u8::from(*.0), exception_name(*.0))]
    Exception(ExceptionCode),
    #[error("transport: {0}")]
    Transport(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("response has {got} values, expected {expected}")]
    ShortResponse { got: usize, expected: usize },
}

impl ReadError {
    /// Whether the device answered (an exception is an answer).
    pub fn device_answered(&self) -> bool {
        matches!(self, ReadError::Exception(_))
    }
    /// Whether this failure means no further request can succeed on this poll.
    pub fn is_connect(&self) -> bool {
        matches!(self, ReadError::Connect(_) | ReadError::ConnectTimeout(_))
    }
}

/// Lower-case exception names from the Modbus application protocol, section 7.
pub fn exception_name(code: ExceptionCode) -> &'static str {
    match u8::from(code) {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        8 => "memory parity error",
        10 => "gateway path unavailable",
        11 => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

/// What a successful read returns: words for registers, bits for coils and
/// discrete inputs (trimmed to the requested count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Words {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// A Modbus TCP endpoint and its (at most one) open connection.
pub struct Endpoint {
    host: String,
    port: u16,
    conn: Mutex<Option<Context>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({}:{})", self.host, self.port)
    }
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            conn: Mutex::new(None),
        }
    }

    /// Takes the endpoint for one poll: requests of different devices on the
    /// same endpoint are serialized, because one TCP connection carries them.
    pub async fn session(&self) -> Session<'_> {
        Session {
            endpoint: self,
            conn: self.conn.lock().await,
        }
    }
}

/// Exclusive use of an endpoint's connection for the duration of one poll.
pub struct Session<'a> {
    endpoint: &'a Endpoint,
    conn: MutexGuard<'a, Option<Context>>,
}

impl Session<'_> {
    /// Reads `count` values of `kind` starting at `start` from unit `unit`.
    /// `timeout` bounds the connect (when one is needed) and the request each.
    pub async fn read(
        &mut self,
        unit: UnitId,
        kind: RegisterKind,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Words, ReadError> {
        if self.conn.is_none() {
            *self.conn = Some(connect(self.endpoint, timeout).await?);
        }
        let ctx = self.conn.as_mut().expect("connection was just opened");
        ctx.set_slave(Slave(unit.0));
        let outcome = tokio::time::timeout(timeout, call(ctx, kind, start, count)).await;
        let result = match outcome {
            Err(_) => Err(ReadError::Timeout(timeout)),
            Ok(Ok(Ok(words))) => check_len(words, count),
            Ok(Ok(Err(code))) => Err(ReadError::Exception(code)),
            Ok(Err(tokio_modbus::Error::Transport(e))) => Err(ReadError::Transport(io_reason(&e))),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => Err(ReadError::Protocol(e.to_string())),
        };
        if let Err(e) = &result
            && !e.device_answered()
        {
            // Out of step or broken: never reuse it (see the module comment).
            *self.conn = None;
        }
        result
    }
}

/// Takes only the endpoint (not the session): a `Context` is not `Sync`, so
/// nothing borrowing the held connection may live across this await.
async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Context, ReadError> {
    let addr = (endpoint.host.as_str(), endpoint.port);
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(ReadError::ConnectTimeout(timeout)),
        Ok(Err(e)) => Err(ReadError::Connect(io_reason(&e))),
        Ok(Ok(stream)) => {
            // Polls are small request/response exchanges: send them at once.
            let _ = stream.set_nodelay(true);
            Ok(tcp::attach(stream))
        }
    }
}

async fn call(
    ctx: &mut Context,
    kind: RegisterKind,
    start: u16,
    count: u16,
) -> tokio_modbus::Result<Words> {
    Ok(match kind {
        RegisterKind::Holding => ctx
            .read_holding_registers(start, count)
            .await?
            .map(Words::Registers),
        RegisterKind::Input => ctx
            .read_input_registers(start, count)
            .await?
            .map(Words::Registers),
        RegisterKind::Coil => ctx.read_coils(start, count).await?.map(Words::Bits),
        RegisterKind::Discrete => ctx
            .read_discrete_inputs(start, count)
            .await?
            .map(Words::Bits),
    })
}

fn check_len(words: Words, count: u16) -> Result<Words, ReadError> {
    let expected = usize::from(count);
    match words {
        Words::Registers(w) if w.len() != expected => Err(ReadError::ShortResponse {
            got: w.len(),
            expected,
        }),
        // Bit responses are padded to whole bytes; only the requested bits count.
        Words::Bits(mut b) if b.len() >= expected => {
            b.truncate(expected);
            Ok(Words::Bits(b))
        }
        Words::Bits(b) => Err(ReadError::ShortResponse {
            got: b.len(),
            expected,
        }),
        ok => Ok(ok),
    }
}

/// The OS reason without the "(os error N)" suffix, lower-case, as in
/// `connect: connection refused`.
fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut s = text.to_string();
    if let Some(first) = s.get_mut(0..1) {
        first.make_ascii_lowercase();
    }
    s
}
