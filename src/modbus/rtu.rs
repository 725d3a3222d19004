//! The client side of Modbus RTU's four read functions, at the frame level
//! (Modbus over serial line, sections 2.5.1 and 6.2.2): a frame is the unit
//! id, the PDU and a CRC-16 sent low byte first. There is no length field
//! and no transaction id: an answer's end follows from its function code
//! and byte count, and which request it answers from the turn it comes in.
//! The same code frames a serial line and the TCP socket of a gateway that
//! passes RTU frames through (`rtu-over-tcp`), so it is generic over the
//! byte stream.
//!
//! regpoll frames RTU itself rather than through tokio-modbus's RTU codec,
//! for the reasons `tcp` gives (a boxed future per call, growable buffers)
//! and because the codec knows nothing of the line's timing: it cannot keep
//! the silent interval between frames, nor wait for a quiet line after a
//! timeout, and it hunts for a frame through any bytes it is given, where
//! regpoll needs to say what was wrong with the answer to one request.
//!
//! Resynchronising without transaction ids: anything waiting before a
//! request is discarded (nothing can be an answer before its request),
//! bytes that cannot begin an answer (0 is broadcast, which nobody answers;
//! 248..255 are reserved) are skipped, and after any request that did not
//! end in a whole answer (a timeout, which drops the call's future, or a bad
//! frame) the next request first waits for the line to be quiet, so that the
//! rest of a late or broken answer is not taken for the next one. The link
//! itself is kept: a bad CRC is line noise on one request, not a reason to
//! reopen a serial port.
//!
//! Nothing here times out the call: the caller wraps every call in its
//! timeout (see `endpoint`).

use std::io;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_modbus::ExceptionCode;

use super::Words;
use super::tcp::{CallError, parse};
use crate::registry::RegisterKind;

/// The largest RTU frame: unit id, a PDU of at most 253 bytes, the CRC.
pub const MAX_FRAME: usize = 256;

/// How long the line must stay silent, after a request that did not end in
/// a whole answer, before the next request goes out. Longer than the frame
/// gap of the slowest common line (3.5 characters at 1200 baud are 32 ms)
/// and than a gateway needs to pass on the rest of an answer it started.
pub const RESYNC_QUIET: Duration = Duration::from_millis(50);

/// The longest a resync waits for quiet: a line that never stops talking
/// (another master, a device stuck transmitting) fails the request instead
/// of stalling the bus.
pub const RESYNC_MAX: Duration = Duration::from_secs(1);

/// One open RTU link. Requests go out one at a time.
pub struct Connection<S> {
    stream: S,
    /// The silence required between frames: 3.5 characters on a serial line,
    /// none on a TCP socket (the gateway keeps its own line's timing).
    frame_gap: Duration,
    /// When the last byte was sent or received, to keep `frame_gap`.
    last_activity: Option<Instant>,
    /// A call began and has not ended in a whole answer: the line may still
    /// carry the rest of something.
    unsettled: bool,
    frame: Box<[u8; MAX_FRAME]>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S, frame_gap: Duration) -> Self {
        Self {
            stream,
            frame_gap,
            last_activity: None,
            unsettled: false,
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
        if std::mem::replace(&mut self.unsettled, true) {
            self.wait_quiet().await?;
        } else {
            self.keep_frame_gap().await;
            self.discard_waiting()?;
        }
        let function = kind.read_function();
        let request = request(unit, function, start, count);
        self.stream.write_all(&request).await?;
        self.stream.flush().await?;
        self.last_activity = Some(Instant::now());
        let expected_bytes = if kind.is_bit() {
            usize::from(count).div_ceil(8)
        } else {
            usize::from(count) * 2
        };
        let end = self.read_answer(unit, function, expected_bytes).await?;
        let frame = &self.frame[..end];
        check_crc(frame)?;
        let answer = parse(&frame[1..end - 2], function, kind)?;
        self.unsettled = false;
        Ok(answer)
    }

    /// Reads one answer into `frame` and returns its length: checks the unit
    /// id, the function code and the byte count as soon as they arrive, so a
    /// wrong answer fails at once instead of being waited out.
    async fn read_answer(
        &mut self,
        unit: u8,
        function: u8,
        expected_bytes: usize,
    ) -> Result<usize, CallError> {
        let mut filled = 0;
        let mut skipped = 0;
        loop {
            // Bytes that cannot begin an answer are noise (a line turning
            // around often leaves a 0x00 or 0xFF).
            let noise = self.frame[..filled]
                .iter()
                .take_while(|b| !(1..=247).contains(*b))
                .count();
            if noise > 0 {
                self.frame.copy_within(noise..filled, 0);
                filled -= noise;
                skipped += noise;
            }
            if let Some(end) = answer_end(&self.frame[..filled], unit, function, expected_bytes)?
                && filled >= end
            {
                if skipped > 0 {
                    tracing::debug!(bytes = skipped, "skipped noise before an RTU answer");
                }
                if filled > end {
                    return Err(CallError::Protocol(format!(
                        "{} bytes after the answer",
                        filled - end
                    )));
                }
                return Ok(end);
            }
            let n = self.stream.read(&mut self.frame[filled..]).await?;
            if n == 0 {
                return Err(closed());
            }
            filled += n;
            self.last_activity = Some(Instant::now());
        }
    }

    /// Waits until `frame_gap` has passed since the last byte on the line.
    async fn keep_frame_gap(&mut self) {
        if let Some(last) = self.last_activity
            && !self.frame_gap.is_zero()
        {
            tokio::time::sleep_until(last + self.frame_gap).await;
        }
    }

    /// Drops whatever arrived since the last answer, without waiting.
    fn discard_waiting(&mut self) -> Result<(), CallError> {
        let mut dropped = 0;
        while let Some(read) = self.stream.read(&mut self.frame[..]).now_or_never() {
            match read? {
                0 => return Err(closed()),
                n => dropped += n,
            }
        }
        if dropped > 0 {
            tracing::debug!(
                bytes = dropped,
                "discarded bytes that arrived outside an RTU answer"
            );
        }
        Ok(())
    }

    /// Discards everything until the line has been silent for
    /// `RESYNC_QUIET` (or the frame gap, if longer), at most `RESYNC_MAX`.
    async fn wait_quiet(&mut self) -> Result<(), CallError> {
        let quiet = RESYNC_QUIET.max(self.frame_gap);
        let give_up = Instant::now() + RESYNC_MAX;
        let mut dropped = 0;
        loop {
            match tokio::time::timeout(quiet, self.stream.read(&mut self.frame[..])).await {
                Err(_) => break,
                Ok(Ok(0)) => return Err(closed()),
                Ok(Ok(n)) => dropped += n,
                Ok(Err(e)) => return Err(e.into()),
            }
            if Instant::now() >= give_up {
                return Err(CallError::Protocol(format!(
                    "the line did not fall quiet for {} ms within {} ms ({dropped} bytes discarded); is another master or a stuck device on the bus?",
                    quiet.as_millis(),
                    RESYNC_MAX.as_millis()
                )));
            }
        }
        if dropped > 0 {
            tracing::debug!(bytes = dropped, "discarded the rest of an earlier answer");
        }
        self.last_activity = Some(Instant::now());
        Ok(())
    }
}

fn closed() -> CallError {
    CallError::Transport(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed by the device",
    ))
}

/// A read request: unit, function, start, count, CRC.
pub(crate) fn request(unit: u8, function: u8, start: u16, count: u16) -> [u8; 8] {
    let [s0, s1] = start.to_be_bytes();
    let [c0, c1] = count.to_be_bytes();
    let mut frame = [unit, function, s0, s1, c0, c1, 0, 0];
    let [lo, hi] = crc16(&frame[..6]).to_le_bytes();
    frame[6] = lo;
    frame[7] = hi;
    frame
}

/// Where the answer that begins `got` ends, once enough of it is there to
/// tell (`None`: read more); an error as soon as the first bytes show it is
/// not the answer to this request.
fn answer_end(
    got: &[u8],
    unit: u8,
    function: u8,
    expected_bytes: usize,
) -> Result<Option<usize>, CallError> {
    let (Some(&from), Some(&code)) = (got.first(), got.get(1)) else {
        return Ok(None);
    };
    if from != unit {
        return Err(CallError::Protocol(format!(
            "answer from unit {from}, expected unit {unit}"
        )));
    }
    if code == function | 0x80 {
        // unit, function | 0x80, exception code, CRC
        return Ok(Some(5));
    }
    if code != function {
        return Err(CallError::Protocol(format!(
            "function code {code:#04x} in the answer, expected {function:#04x}"
        )));
    }
    let Some(&bytes) = got.get(2) else {
        return Ok(None);
    };
    if usize::from(bytes) != expected_bytes {
        return Err(CallError::Protocol(format!(
            "byte count {bytes} in the answer, expected {expected_bytes}"
        )));
    }
    // unit, function, byte count, data, CRC
    Ok(Some(3 + usize::from(bytes) + 2))
}

/// Checks the CRC in a whole frame's last two bytes (low byte first).
fn check_crc(frame: &[u8]) -> Result<(), CallError> {
    let (body, crc) = frame.split_at(frame.len() - 2);
    let got = u16::from_le_bytes([crc[0], crc[1]]);
    let want = crc16(body);
    if got != want {
        return Err(CallError::Protocol(format!(
            "CRC {got:#06x} in the answer, computed {want:#06x} (line noise, or wrong baud rate or parity?)"
        )));
    }
    Ok(())
}

/// CRC-16/MODBUS: reflected polynomial 0xA001, initial value 0xFFFF
/// (Modbus over serial line, 6.2.2), one table lookup per byte.
pub fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0xFFFF, |crc, &b| {
        (crc >> 8) ^ CRC_TABLE[usize::from((crc as u8) ^ b)]
    })
}

const CRC_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests;
