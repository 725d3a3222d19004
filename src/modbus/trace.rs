//! Frame logging for commissioning (devices.yaml `log_frames`, `--log-frames`
//! on `read` and `scan`): every request and its answer, decoded, as one
//! `tracing` event at info, the level the default filter shows, so a field
//! engineer sees what went over the wire without a packet sniffer.
//!
//! It runs only when a device asks for it: the one call, in
//! `Session::read`, sits behind a comparison of the device's setting, so a
//! device left at `off` formats nothing and allocates nothing.

use std::fmt::{self, Write as _};
use std::time::Duration;

use super::endpoint::Endpoint;
use super::{ReadError, Words};
use crate::registry::{LogFrames, RegisterKind, UnitId};

/// The target of every frame event, so a log can be filtered to them
/// (`--log warn,regpoll::frames=info`) or rid of them (`info,regpoll::frames=off`).
pub const TARGET: &str = "regpoll::frames";

/// What was asked: unit, table, first address and count.
pub type Request = (UnitId, RegisterKind, u16, u16);

/// Logs one request and what came of it; `attempt` counts from 0 (the first
/// try), as `Session::read` does, and is shown from 1.
pub fn exchange(
    mode: LogFrames,
    endpoint: &Endpoint,
    (unit, kind, start, count): Request,
    attempt: u8,
    elapsed: Duration,
    result: &Result<Words, ReadError>,
) {
    let function = kind.read_function();
    let answer = Answer(result);
    let elapsed_ms = elapsed.as_secs_f64() * 1e3;
    macro_rules! event {
        ($($payload:tt)*) => {
            tracing::info!(
                target: TARGET,
                %endpoint,
                unit = unit.0,
                function = %format_args!("{function:#04x}"),
                table = %kind.as_str(),
                start,
                count,
                attempt = u16::from(attempt) + 1,
                elapsed_ms = %format_args!("{elapsed_ms:.2}"),
                %answer,
                $($payload)*
                "modbus read"
            )
        };
    }
    match (mode, result) {
        (LogFrames::Off, _) => {}
        (LogFrames::Payload, Ok(words)) => event!(values = %Values(words),),
        (LogFrames::Header | LogFrames::Payload, _) => event!(),
    }
}

/// The answer's header, decoded: how many values came back, or the
/// exception (with its name) or failure instead.
struct Answer<'a>(&'a Result<Words, ReadError>);

impl fmt::Display for Answer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(Words::Registers(w)) => write!(f, "{} registers", w.len()),
            Ok(Words::Bits(b)) => write!(f, "{} bits", b.len()),
            Err(e @ ReadError::Exception(_)) => write!(f, "{e}"),
            Err(e) => write!(f, "no answer: {e}"),
        }
    }
}

/// The values of an answer as they came: each register as four hex digits,
/// bits as 0 and 1 in address order, in groups of eight.
struct Values<'a>(&'a Words);

impl fmt::Display for Values<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Words::Registers(words) => {
                for (i, w) in words.iter().enumerate() {
                    if i > 0 {
                        f.write_char(' ')?;
                    }
                    write!(f, "{w:04x}")?;
                }
            }
            Words::Bits(bits) => {
                for (i, b) in bits.iter().enumerate() {
                    if i > 0 && i % 8 == 0 {
                        f.write_char(' ')?;
                    }
                    f.write_char(if *b { '1' } else { '0' })?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_modbus::ExceptionCode;

    #[test]
    fn registers_show_as_four_hex_digits_each() {
        let words = Words::Registers(vec![0x0042, 0xf000, 0x1]);
        assert_eq!(Values(&words).to_string(), "0042 f000 0001");
        assert_eq!(Answer(&Ok(words)).to_string(), "3 registers");
    }

    #[test]
    fn bits_show_in_address_order_in_groups_of_eight() {
        let bits: Vec<bool> = (0..10).map(|i| i % 3 == 0).collect();
        let words = Words::Bits(bits);
        assert_eq!(Values(&words).to_string(), "10010010 01");
        assert_eq!(Answer(&Ok(words)).to_string(), "10 bits");
    }

    #[test]
    fn an_exception_is_named_and_a_failure_is_no_answer() {
        let refused = Err(ReadError::Exception(ExceptionCode::IllegalDataAddress));
        assert_eq!(
            Answer(&refused).to_string(),
            "exception 2 (illegal data address)"
        );
        let silent = Err(ReadError::Timeout(Duration::from_millis(200)));
        assert_eq!(
            Answer(&silent).to_string(),
            "no answer: timeout after 200 ms"
        );
    }
}
