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
//! room for two of the largest frames the protocol allows (260 bytes).
//!
//! Nothing here times out: the caller wraps every call in its timeout. A
//! timed-out call leaves the connection in step (see [`Connection`]); the
//! caller drops it after a transport or protocol error (see `endpoint`).

use std::io;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_modbus::ExceptionCode;

use super::Words;
use crate::registry::RegisterKind;

/// The largest ADU: the 7-byte header and a PDU of at most 253 bytes.
pub(crate) const MAX_FRAME: usize = 260;
const HEADER: usize = 7;

/// Why a call got no answer: the connection failed, or what came back is
/// not a well-formed answer to the request.
#[derive(Debug)]
pub enum CallError {
    Transport(io::Error),
    Protocol(String),
    /// Found before the request went out: the connection is out of step (a
    /// frame nobody asked for is waiting, or an earlier request was cut off
    /// while being written). Nothing was sent; the request can go out
    /// unchanged on a new connection.
    Stale(String),
}

impl From<io::Error> for CallError {
    fn from(e: io::Error) -> Self {
        CallError::Transport(e)
    }
}

/// How many abandoned transactions (requests whose caller timed out) are
/// remembered, so that their late replies are recognised and dropped. A
/// reply later than this many further timeouts is taken as out of step.
const ABANDONED: usize = 8;

/// One open connection. Requests go out one at a time; each answer must
/// carry its request's transaction id and unit id.
///
/// A stray frame is never taken for data: transaction ids start at a random
/// value on each connection and go up by a random odd step (every id comes
/// once in 65,536 requests, and a device or gateway that repeats or invents
/// frames cannot guess the next one from the last), and only the exact id
/// is accepted.
///
/// A timeout does not put the connection out of step. The caller's timeout
/// drops the call's future, but everything the call knew lives here: the
/// bytes read so far (tokio's `read` is cancel-safe, so none are lost), and
/// the transaction it was waiting for, which the next call moves to the
/// abandoned ones. A later frame carrying an abandoned id is the unit's late
/// reply and is dropped; a frame with an id never sent means the stream is
/// out of step and fails the call, so the caller drops the connection.
pub struct Connection {
    stream: TcpStream,
    next_transaction: u16,
    transaction_step: u16,
    /// Bytes read and not yet consumed: at most one frame and the start of
    /// the next, so twice the largest frame.
    buffer: Box<[u8; 2 * MAX_FRAME]>,
    filled: usize,
    /// The transaction sent and not yet answered, and its unit.
    awaiting: Option<(u16, u8)>,
    /// Transactions whose caller gave up, newest at `abandoned_next - 1`.
    abandoned: [Option<u16>; ABANDONED],
    abandoned_next: usize,
    /// A request write was interrupted: part of a request may be on the wire.
    writing: bool,
    /// Late replies dropped since [`Connection::take_late_replies`].
    late_replies: u32,
}

/// What one complete frame at the start of the buffer is.
enum Arrived {
    /// The awaited answer, `end` bytes long.
    Answer(usize),
    /// A late reply to an abandoned request, `end` bytes long.
    Late(usize),
}

impl Connection {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            next_transaction: random_u16(),
            transaction_step: random_u16() | 1,
            buffer: Box::new([0; 2 * MAX_FRAME]),
            filled: 0,
            awaiting: None,
            abandoned: [None; ABANDONED],
            abandoned_next: 0,
            writing: false,
            late_replies: 0,
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
        if self.writing {
            return Err(CallError::Stale(
                "a request was cut off while being written".into(),
            ));
        }
        if let Some((abandoned, _)) = self.awaiting.take() {
            self.abandon(abandoned);
        }
        self.take_waiting()?;
        let function = kind.read_function();
        let transaction = self.next_transaction;
        self.next_transaction = transaction.wrapping_add(self.transaction_step);
        let request = request(transaction, unit, kind, start, count);
        self.writing = true;
        self.stream.write_all(&request).await?;
        self.writing = false;
        self.awaiting = Some((transaction, unit));

        // Usually the whole answer arrives in one read.
        loop {
            match self.complete_frame()? {
                Some(Arrived::Answer(end)) => {
                    self.awaiting = None;
                    let answer = parse(&self.buffer[HEADER..end], function, kind);
                    self.consume(end);
                    return answer;
                }
                Some(Arrived::Late(end)) => self.consume(end),
                None => self.fill().await?,
            }
        }
    }

    /// How many late replies were dropped since the last call (for the
    /// endpoint's counters).
    pub fn take_late_replies(&mut self) -> u32 {
        std::mem::take(&mut self.late_replies)
    }

    /// Remembers a transaction whose caller gave up, forgetting the oldest.
    fn abandon(&mut self, transaction: u16) {
        self.abandoned[self.abandoned_next] = Some(transaction);
        self.abandoned_next = (self.abandoned_next + 1) % ABANDONED;
    }

    /// Reads more bytes into the buffer (cancel-safe: a timeout loses none).
    async fn fill(&mut self) -> Result<(), CallError> {
        let n = self.stream.read(&mut self.buffer[self.filled..]).await?;
        if n == 0 {
            return Err(closed());
        }
        self.filled += n;
        Ok(())
    }

    /// Drops the first `end` bytes of the buffer, keeping what follows.
    fn consume(&mut self, end: usize) {
        self.buffer.copy_within(end..self.filled, 0);
        self.filled -= end;
    }

    /// The frame at the start of the buffer, if it is complete: the awaited
    /// answer or a late reply. Anything else is out of step.
    fn complete_frame(&mut self) -> Result<Option<Arrived>, CallError> {
        let Some(end) = frame_end_in(&self.buffer[..self.filled])? else {
            return Ok(None);
        };
        let got = u16::from_be_bytes([self.buffer[0], self.buffer[1]]);
        let got_unit = self.buffer[6];
        if let Some((transaction, unit)) = self.awaiting
            && got == transaction
        {
            if got_unit != unit {
                return Err(CallError::Protocol(format!(
                    "answer to transaction {got} from unit {got_unit}, expected unit {unit}"
                )));
            }
            return Ok(Some(Arrived::Answer(end)));
        }
        if let Some(slot) = self.abandoned.iter_mut().find(|a| **a == Some(got)) {
            *slot = None;
            self.late_replies += 1;
            tracing::debug!(
                transaction = got,
                unit = got_unit,
                "discarded a late reply to an abandoned request"
            );
            return Ok(Some(Arrived::Late(end)));
        }
        Err(CallError::Protocol(match self.awaiting {
            Some((t, unit)) => format!(
                "answer to transaction {got} from unit {got_unit}, which was never sent (expected transaction {t} from unit {unit})"
            ),
            None => {
                format!("frame for transaction {got} from unit {got_unit}, which was never sent")
            }
        }))
    }

    /// Takes in whatever arrived since the last answer before a request goes
    /// out, dropping late replies. It costs no extra system call in the
    /// common case: the read that would otherwise find the socket empty
    /// after the request is written finds it empty here instead, and the
    /// runtime then waits for the answer. A frame nobody asked for (a
    /// gateway repeating or inventing frames) is reported as stale.
    fn take_waiting(&mut self) -> Result<(), CallError> {
        loop {
            match self.complete_frame() {
                Ok(Some(Arrived::Late(end) | Arrived::Answer(end))) => self.consume(end),
                Ok(None) => {}
                Err(CallError::Protocol(m)) => return Err(CallError::Stale(m)),
                Err(e) => return Err(e),
            }
            if self.filled == self.buffer.len() {
                return Err(CallError::Stale(
                    "more bytes waiting than a frame holds".into(),
                ));
            }
            match self.stream.try_read(&mut self.buffer[self.filled..]) {
                Ok(0) => return Err(closed()),
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(CallError::Transport(e)),
            }
        }
    }
}

/// A read request's 12 bytes: the MBAP header and the PDU.
pub(crate) fn request(
    transaction: u16,
    unit: u8,
    kind: RegisterKind,
    start: u16,
    count: u16,
) -> [u8; 12] {
    let [t0, t1] = transaction.to_be_bytes();
    let [s0, s1] = start.to_be_bytes();
    let [c0, c1] = count.to_be_bytes();
    [
        t0,
        t1,
        0,
        0,
        0,
        6,
        unit,
        kind.read_function(),
        s0,
        s1,
        c0,
        c1,
    ]
}

/// Where the first frame of `bytes` ends, once all of it is there.
pub(crate) fn frame_end_in(bytes: &[u8]) -> Result<Option<usize>, CallError> {
    if bytes.len() < HEADER {
        return Ok(None);
    }
    let end = frame_end(&bytes[..HEADER])?;
    Ok((bytes.len() >= end).then_some(end))
}

pub(crate) fn closed() -> CallError {
    CallError::Transport(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed by the device",
    ))
}

/// A transaction id (or step) for a new connection: different on every
/// connection and unknown outside this process (std's hasher keys come from
/// the operating system's randomness), so no dependency is needed for it.
pub(crate) fn random_u16() -> u16 {
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
pub(crate) fn parse(
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

    /// The answer of one register holding `value` to `request`.
    fn answer(request: &[u8; 12], value: u16) -> Vec<u8> {
        let mut a = request[..7].to_vec();
        a[5] = 5;
        a.extend_from_slice(&[request[7], 2]);
        a.extend_from_slice(&value.to_be_bytes());
        a
    }

    #[tokio::test]
    async fn a_reply_cut_by_a_timeout_is_finished_later_and_dropped_as_late() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut late = [0u8; 12];
            s.read_exact(&mut late).await.unwrap();
            // Half of the first answer before the client's timeout...
            let late = answer(&late, 111);
            s.write_all(&late[..5]).await.unwrap();
            let mut next = [0u8; 12];
            s.read_exact(&mut next).await.unwrap();
            // ...the rest after it, then the answer to the second request.
            s.write_all(&late[5..]).await.unwrap();
            s.write_all(&answer(&next, 222)).await.unwrap();
            s
        });
        let mut c = Connection::new(TcpStream::connect(addr).await.unwrap());
        // The half arrives at once and is read; the call then times out
        // waiting for the rest, as the endpoint's timeout ends it.
        let first = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            c.read(1, RegisterKind::Holding, 0, 1),
        )
        .await;
        assert!(first.is_err(), "{first:?}");
        assert_eq!(c.filled, 5, "the half answer is kept");
        let second = c.read(1, RegisterKind::Holding, 0, 1).await.unwrap();
        assert_eq!(second, Ok(Words::Registers(vec![222])));
        assert_eq!(c.take_late_replies(), 1);
        drop(server);
    }

    #[tokio::test]
    async fn a_frame_nobody_asked_for_waiting_before_a_request_is_stale() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 12];
            s.read_exact(&mut req).await.unwrap();
            s.write_all(&answer(&req, 1)).await.unwrap();
            // A well-formed frame with the next id if ids went up by one.
            req[1] = req[1].wrapping_add(1);
            s.write_all(&answer(&req, 0xDEAD)).await.unwrap();
            s
        });
        let mut c = Connection::new(TcpStream::connect(addr).await.unwrap());
        assert_eq!(
            c.read(1, RegisterKind::Holding, 0, 1).await.unwrap(),
            Ok(Words::Registers(vec![1]))
        );
        let server = server.await.unwrap();
        // The stray frame has arrived; the next request must not go out.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        match c.read(1, RegisterKind::Holding, 0, 1).await {
            Err(CallError::Stale(m)) => assert!(m.contains("which was never sent"), "{m}"),
            other => panic!("{other:?}"),
        }
        drop(server);
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
