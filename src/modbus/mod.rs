//! Modbus TCP and RTU: planning read requests for a device ([`plan`]) and
//! learning a better plan from the device's refusals ([`learn`]), turning
//! words into values ([`decode`]), the read requests' frames ([`tcp`],
//! [`rtu`]), the links of each transport ([`link`]), the connections to
//! endpoints ([`endpoint`]), units that stop answering ([`demotion`]),
//! gateways that take several transactions at once ([`pipeline`]), their
//! counters ([`stats`]) and, for commissioning, a log of each request and
//! answer ([`trace`]).
//! What a read returns ([`Words`]) and why it failed ([`ReadError`]) live
//! here, where the frames, the endpoints and the counters all see them.

pub mod decode;
pub mod demotion;
pub mod endpoint;
pub mod learn;
pub mod link;
pub mod pipeline;
pub mod plan;
pub mod rtu;
pub mod stats;
pub mod tcp;
pub mod trace;

use std::time::Duration;

use tokio_modbus::ExceptionCode;

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
    /// Not sent: the unit timed out `timeouts` times in a row and is not
    /// asked again before `next_try` (shown in UTC).
    #[error("demoted after {timeouts} timeouts; next try {} UTC", next_try.format("%H:%M:%S"))]
    Demoted {
        timeouts: u32,
        next_try: chrono::DateTime<chrono::Utc>,
    },
    /// Not sent: this instance's cluster lease ran out before the request
    /// (see `cluster::Fence`); another instance may own the device now.
    #[error("not sent: this instance's cluster lease ran out")]
    Fenced,
}

impl ReadError {
    /// Whether the device answered (an exception is an answer).
    pub fn device_answered(&self) -> bool {
        matches!(self, ReadError::Exception(_))
    }
    /// Whether this failure means no further request can succeed on this poll.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            ReadError::Connect(_) | ReadError::ConnectTimeout(_) | ReadError::Fenced
        )
    }

    /// Whether the same request may succeed if sent again: the connection broke
    /// or the device was busy. Other exceptions would only repeat themselves.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            ReadError::Exception(code) => u8::from(*code) == 6,
            ReadError::Connect(_)
            | ReadError::ConnectTimeout(_)
            | ReadError::Demoted { .. }
            | ReadError::Fenced => false,
            _ => true,
        }
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
