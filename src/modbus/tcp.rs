//! The client side of Modbus TCP's four read functions, at the frame level
//! (Modbus messaging on TCP/IP, section 3; the application protocol,
//! section 6.1-6.4). A request is a 7-byte MBAP header (transaction id,
//! protocol id 0, length of what follows, unit id) and a 5-byte PDU
//! (function code, start, count); the answer repeats the header and carries
//! the values or an exception.
//!
//! regpoll speaks it itself rather than through tokio-modbus because every
//! poll of every device makes these requests: the crate's path (a boxed
//! future per call, a codec over growable buffers that hand out shared
//! `Bytes`) was about a sixth of regpoll's user time at 10,000 devices, and
//! half of that is left (perf, BENCHMARKS.md). Here a request is written
//! from the stack and its answer read into one buffer the connection keeps,
//! 260 bytes, the largest frame the protocol allows.
//!
//! Nothing here times out: the caller wraps every call in its timeout and
//! drops the connection after any error but an exception (see `endpoint`).

use std::io;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_modbus::ExceptionCode;

use super::Words;
use crate::registry::RegisterKind;

/// The largest ADU: the 7-byte header and a PDU of at most 253 bytes.
const MAX_FRAME: usize = 260;
const HEADER: usize = 7;

/// Why a call got no answer: the connection failed, or what came back is
/// not a well-formed answer to the request.
#[derive(Debug)]
pub enum CallError {
    Transport(io::Error),
    Protocol(String),
}

impl From<io::Error> for CallError {
    fn from(e: io::Error) -> Self {
        CallError::Transport(e)
    }
}

/// One open connection. Requests go out one at a time; each answer must
/// carry its request's transaction id and unit id.
///
/// A stray frame is never taken for data: transaction ids start at a random
/// value on each connection and go up by a random odd step (every id comes
/// once in 65,536 requests, and a device or gateway that repeats or invents
/// frames cannot guess the next one from the last), whatever is waiting on
/// the socket when a request is about to go out is discarded (nothing can
/// be an answer before its request), and only the exact id is accepted.
pub struct Connection {
    stream: TcpStream,
    next_transaction: u16,
    transaction_step: u16,
    frame: Box<[u8; MAX_FRAME]>,
}

impl Connection {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            next_transaction: random_u16(),
            transaction_step: random_u16() | 1,
            frame: Box::new([0; MAX_FRAME]),
        }
    }

    /// Reads `count` values of `kind` from `start` on `unit`: the values, or
    /// the exception the device answered with.
    pub async fn read(
        &mut self,
        unit: u8,
        kind: RegisterKind,
        start: u16,
        count: u16,
    ) -> Result<Result<Words, ExceptionCode>, CallError> {
        let function = kind.read_function();
        let transaction = self.next_transaction;
        self.next_transaction = transaction.wrapping_add(self.transaction_step);
        let [t0, t1] = transaction.to_be_bytes();
        let [s0, s1] = start.to_be_bytes();
        let [c0, c1] = count.to_be_bytes();
        let request = [t0, t1, 0, 0, 0, 6, unit, function, s0, s1, c0, c1];
        self.discard_waiting()?;
        self.stream.write_all(&request).await?;

        // Usually the whole answer arrives in one read. Nothing may follow
        // it: requests go one at a time, so more bytes would be out of step.
        let mut filled = 0;
        let end = loop {
            if filled >= HEADER
                && let end = frame_end(&self.frame[..HEADER])?
                && filled >= end
            {
                break end;
            }
            let n = self.stream.read(&mut self.frame[filled..]).await?;
            if n == 0 {
                return Err(CallError::Transport(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by the device",
                )));
            }
            filled += n;
        };
        if filled > end {
            return Err(CallError::Protocol(format!(
                "{} bytes after the answer",
                filled - end
            )));
        }
        let header = &self.frame[..HEADER];
        let got_transaction = u16::from_be_bytes([header[0], header[1]]);
        let got_unit = header[6];
        if got_transaction != transaction || got_unit != unit {
            return Err(CallError::Protocol(format!(
                "answer to transaction {got_transaction} from unit {got_unit}, expected transaction {transaction} from unit {unit}"
            )));
        }
        let pdu = &self.frame[HEADER..end];
        parse(pdu, function, kind)
    }
}

impl Connection {
    /// Reads and drops whatever the device sent since the last answer. It
    /// costs no extra system call in the common case: the read that would
    /// otherwise find the socket empty after the request is written finds it
    /// empty here instead, and the runtime then waits for the answer.
    fn discard_waiting(&mut self) -> Result<usize, CallError> {
        let mut dropped = 0;
        loop {
            match self.stream.try_read(&mut self.frame[..]) {
                Ok(0) => {
                    return Err(CallError::Transport(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed by the device",
                    )));
                }
                Ok(n) => dropped += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(CallError::Transport(e)),
            }
        }
        if dropped > 0 {
            tracing::debug!(
                bytes = dropped,
                "discarded bytes the device sent outside an answer"
            );
        }
        Ok(dropped)
    }
}

/// A transaction id (or step) for a new connection: different on every
/// connection and unknown outside this process (std's hasher keys come from
/// the operating system's randomness), so no dependency is needed for it.
fn random_u16() -> u16 {
    use std::hash::{BuildHasher as _, Hasher as _};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish() as u16
}

/// Where the frame whose header is `header` ends, from its length field.
fn frame_end(header: &[u8]) -> Result<usize, CallError> {
    let protocol = u16::from_be_bytes([header[2], header[3]]);
    let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if protocol != 0 {
        return Err(CallError::Protocol(format!(
            "protocol id {protocol} in the answer, expected 0"
        )));
    }
    // The length counts the unit id and the PDU: a function code and at
    // least one byte after it, 254 at most.
    if !(3..=MAX_FRAME - HEADER + 1).contains(&length) {
        return Err(CallError::Protocol(format!(
            "frame length {length} out of range (3-254)"
        )));
    }
    Ok(HEADER - 1 + length)
}

/// The values or exception in an answer's PDU (function code first).
pub(super) fn parse(
    pdu: &[u8],
    function: u8,
    kind: RegisterKind,
) -> Result<Result<Words, ExceptionCode>, CallError> {
    let got = pdu[0];
    if got == function | 0x80 {
        return Ok(Err(ExceptionCode::new(pdu[1])));
    }
    if got != function {
        return Err(CallError::Protocol(format!(
            "function code {got:#04x} in the answer, expected {function:#04x}"
        )));
    }
    let bytes = usize::from(pdu[1]);
    let data = &pdu[2..];
    if bytes != data.len() {
        return Err(CallError::Protocol(format!(
            "byte count {bytes} but {} bytes of data",
            data.len()
        )));
    }
    Ok(Ok(if kind.is_bit() {
        // Eight to a byte, the first value in the lowest bit; the caller
        // keeps only as many as it asked for.
        Words::Bits(
            data.iter()
                .flat_map(|b| (0..8).map(move |i| (b >> i) & 1 == 1))
                .collect(),
        )
    } else {
        if bytes % 2 != 0 {
            return Err(CallError::Protocol(format!(
                "odd byte count {bytes} for 16-bit registers"
            )));
        }
        Words::Registers(
            data.chunks_exact(2)
                .map(|w| u16::from_be_bytes([w[0], w[1]]))
                .collect(),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_are_big_endian_words() {
        let pdu = [0x03, 4, 0x12, 0x34, 0xab, 0xcd];
        let words = parse(&pdu, 0x03, RegisterKind::Holding).unwrap().unwrap();
        assert_eq!(words, Words::Registers(vec![0x1234, 0xabcd]));
    }

    #[test]
    fn bits_come_lowest_first_padded_to_whole_bytes() {
        let pdu = [0x01, 2, 0b0000_0101, 0b1000_0000];
        let Words::Bits(bits) = parse(&pdu, 0x01, RegisterKind::Coil).unwrap().unwrap() else {
            panic!("bits expected");
        };
        assert_eq!(bits.len(), 16);
        assert!(bits[0] && !bits[1] && bits[2] && bits[15]);
        assert_eq!(bits.iter().filter(|b| **b).count(), 3);
    }

    #[test]
    fn an_exception_is_an_answer() {
        let pdu = [0x84, 2];
        let answer = parse(&pdu, 0x04, RegisterKind::Input).unwrap();
        assert_eq!(answer, Err(ExceptionCode::IllegalDataAddress));
    }

    #[test]
    fn malformed_answers_are_protocol_errors_that_say_what_is_wrong() {
        let cases: [(&[u8], &str); 3] = [
            (
                &[0x04, 2, 0, 1],
                "function code 0x04 in the answer, expected 0x03",
            ),
            (&[0x03, 4, 0, 1], "byte count 4 but 2 bytes of data"),
            (&[0x03, 3, 0, 1, 2], "odd byte count 3 for 16-bit registers"),
        ];
        for (pdu, want) in cases {
            match parse(pdu, 0x03, RegisterKind::Holding) {
                Err(CallError::Protocol(m)) => assert_eq!(m, want),
                other => panic!("{pdu:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn transaction_ids_start_and_step_differently_on_every_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut starts = std::collections::HashSet::new();
        for _ in 0..4 {
            let c = Connection::new(TcpStream::connect(addr).await.unwrap());
            assert_eq!(c.transaction_step % 2, 1, "an odd step visits every id");
            starts.insert((c.next_transaction, c.transaction_step));
        }
        // Four equal draws of 32 random bits would happen once in 2^96.
        assert!(starts.len() > 1, "{starts:?}");
    }
}
