//! One poll of one device: plan → requests → decode → quality → readings.
//!
//! A failed request marks only the registers it carried; the device's other
//! requests still count. A connect failure ends the poll early, because every
//! further request would fail the same way.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use crate::modbus::decode::{decode, decode_text, invalid_bcd};
use crate::modbus::endpoint::Endpoint;
use crate::modbus::plan::{ReadRequest, plan_group};
use crate::modbus::{ReadError, Words};
use crate::reading::{PollReport, Quality, Reading, Value, non_finite_name};
use crate::registry::{DataType, Device, Register};

/// Polls one device through its endpoint with a plan made once.
pub struct DevicePoller {
    device: Arc<Device>,
    plan: Vec<ReadRequest>,
    endpoint: Arc<Endpoint>,
}

impl DevicePoller {
    /// Polls every register of the device.
    pub fn new(device: Arc<Device>, endpoint: Arc<Endpoint>) -> Self {
        let all = (0..device.registers.len()).collect();
        Self::group(device, endpoint, all)
    }

    /// Polls only `members` (indices into the device's registers): one poll group.
    pub fn group(device: Arc<Device>, endpoint: Arc<Endpoint>, members: Vec<usize>) -> Self {
        let plan = plan_group(&device.registers, &members, &device.limits);
        Self {
            device,
            plan,
            endpoint,
        }
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    pub async fn poll(&self) -> PollReport {
        let device = &self.device;
        let started = Utc::now();
        let clock = Instant::now();
        let mut readings = Vec::with_capacity(device.registers.len());
        let mut error: Option<String> = None;
        let mut reachable = false;
        let mut demoted = false;
        let mut session = self.endpoint.session().await;
        let mut connect_failure: Option<ReadError> = None;
        for (n, req) in self.plan.iter().enumerate() {
            if n > 0 && !device.limits.pause.is_zero() && connect_failure.is_none() {
                tokio::time::sleep(device.limits.pause).await;
            }
            let (ts, result) = match &connect_failure {
                Some(e) => (Utc::now(), Err(e.clone())),
                None => {
                    let (start, count) = (req.start, req.count);
                    session
                        .read(
                            device.unit_id,
                            req.kind,
                            start,
                            count,
                            device.timeout,
                            &device.limits,
                        )
                        .await
                }
            };
            match result {
                Ok(words) => {
                    reachable = true;
                    for &i in &req.registers {
                        let (value, quality, detail) = evaluate(&device.registers[i], req, &words);
                        readings.push(Reading {
                            index: i,
                            ts,
                            value,
                            quality,
                            detail,
                        });
                    }
                }
                Err(e) => {
                    reachable |= e.device_answered();
                    demoted |= matches!(e, ReadError::Demoted { .. });
                    let detail = e.to_string();
                    error.get_or_insert_with(|| detail.clone());
                    if e.is_connect() {
                        connect_failure = Some(e);
                    }
                    for &i in &req.registers {
                        readings.push(Reading {
                            index: i,
                            ts,
                            value: Value::None,
                            quality: Quality::Bad,
                            detail: Some(detail.clone()),
                        });
                    }
                }
            }
        }
        drop(session);
        PollReport {
            device: Arc::clone(device),
            started,
            latency: clock.elapsed(),
            error,
            reachable,
            demoted,
            readings,
        }
    }
}

/// A non-finite number's reading: stored as NULL (see the README's schema).
fn non_finite(detail: String) -> (Value, Quality, Option<String>) {
    (Value::None, Quality::Uncertain, Some(detail))
}

/// Decodes one register out of a request's answer and judges its quality.
fn evaluate(reg: &Register, req: &ReadRequest, words: &Words) -> (Value, Quality, Option<String>) {
    let at = usize::from(reg.address.0 - req.start);
    let raw = match words {
        Words::Bits(bits) => return (Value::Bool(bits[at]), Quality::Good, None),
        Words::Registers(w) => {
            let w = &w[at..at + usize::from(reg.width())];
            if reg.data_type == DataType::String {
                // Text that had to be changed to be storable is uncertain.
                let (text, note) = decode_text(w, reg.order);
                let quality = if note.is_some() {
                    Quality::Uncertain
                } else {
                    Quality::Good
                };
                return (Value::Text(text), quality, note);
            }
            match decode(w, reg) {
                // Only BCD with a nibble above 9 decodes to nothing: the
                // device sent no number, so there is no value to judge.
                Value::None => return (Value::None, Quality::Bad, invalid_bcd(w, reg)),
                v => v,
            }
        }
    };
    let n = match raw {
        Value::Number(n) => n,
        other => return (other, Quality::Good, None),
    };
    // NaN and infinity (read as such, or from scale/offset overflowing) are
    // kept out of every aggregate: no value, quality uncertain, and the
    // detail names what was read.
    if !n.is_finite() {
        return non_finite(format!("{} float", non_finite_name(n)));
    }
    let value = reg.engineering(n);
    if !value.is_finite() {
        return non_finite(format!(
            "{} after scale {} and offset {} (raw {n})",
            non_finite_name(value),
            reg.scale,
            reg.offset
        ));
    }
    if !reg.valid.contains(value) {
        return (
            Value::Number(value),
            Quality::Uncertain,
            Some(format!("outside valid range {}", reg.valid)),
        );
    }
    (Value::Number(value), Quality::Good, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegisterKind;

    fn string_register(length: u16) -> (Register, ReadRequest) {
        let mut reg = Register::test(RegisterKind::Holding, 10, DataType::String);
        reg.length = Some(length);
        let req = ReadRequest {
            kind: RegisterKind::Holding,
            start: 10,
            count: length,
            registers: vec![0],
        };
        (reg, req)
    }

    #[test]
    fn text_cut_at_a_nul_is_uncertain_with_what_was_done() {
        let (reg, req) = string_register(3);
        let words = Words::Registers(vec![0x4142, 0x0043, 0x4400]);
        let (value, quality, detail) = evaluate(&reg, &req, &words);
        assert_eq!(value, Value::Text("AB".into()));
        assert_eq!(quality, Quality::Uncertain);
        assert_eq!(
            detail.as_deref(),
            Some("text cut at a NUL byte at offset 2 (2 more bytes followed)")
        );
    }

    fn float_register(data_type: DataType) -> (Register, ReadRequest) {
        let reg = Register::test(RegisterKind::Holding, 0, data_type);
        let req = ReadRequest {
            kind: RegisterKind::Holding,
            start: 0,
            count: reg.width(),
            registers: vec![0],
        };
        (reg, req)
    }

    #[test]
    fn non_finite_floats_have_no_value_and_say_what_was_read() {
        let (reg, req) = float_register(DataType::F32);
        for (word, what) in [(0x7FC0, "NaN"), (0x7F80, "+Inf"), (0xFF80, "-Inf")] {
            let words = Words::Registers(vec![word, 0]);
            assert_eq!(
                evaluate(&reg, &req, &words),
                (
                    Value::None,
                    Quality::Uncertain,
                    Some(format!("{what} float"))
                ),
            );
        }
    }

    #[test]
    fn non_finite_halves_are_treated_like_any_float() {
        let (reg, req) = float_register(DataType::F16);
        for (word, what) in [(0x7E00, "NaN"), (0x7C00, "+Inf"), (0xFC00, "-Inf")] {
            assert_eq!(
                evaluate(&reg, &req, &Words::Registers(vec![word])),
                (
                    Value::None,
                    Quality::Uncertain,
                    Some(format!("{what} float"))
                ),
            );
        }
    }

    #[test]
    fn bcd_with_a_nibble_above_nine_is_bad_and_names_the_digit() {
        let (reg, req) = float_register(DataType::Bcd16);
        assert_eq!(
            evaluate(&reg, &req, &Words::Registers(vec![0x12A4])),
            (
                Value::None,
                Quality::Bad,
                Some("BCD digit 0xA at nibble 2 of 0x12A4 is not a decimal digit".into())
            ),
        );
        let (mut reg, req) = float_register(DataType::Bcd32);
        reg.order = crate::registry::WordOrder::Cdab;
        assert_eq!(
            evaluate(&reg, &req, &Words::Registers(vec![0x345F, 0x0012])),
            (
                Value::None,
                Quality::Bad,
                Some("BCD digit 0xF at nibble 7 of 0x0012345F is not a decimal digit".into())
            ),
        );
        reg.scale = 0.01;
        assert_eq!(
            evaluate(&reg, &req, &Words::Registers(vec![0x3456, 0x0012])),
            (Value::Number(1234.56), Quality::Good, None),
        );
    }

    #[test]
    fn scale_that_overflows_to_infinity_has_no_value() {
        let (mut reg, req) = float_register(DataType::F64);
        reg.scale = 10.0;
        // f64::MAX: finite as read, +Inf once scaled.
        let words = Words::Registers(vec![0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF]);
        let (value, quality, detail) = evaluate(&reg, &req, &words);
        assert_eq!((value, quality), (Value::None, Quality::Uncertain));
        let detail = detail.unwrap();
        assert!(detail.starts_with("+Inf after scale 10"), "{detail}");
    }

    #[test]
    fn an_f32_is_read_as_its_decimal_then_scaled() {
        let (mut reg, req) = float_register(DataType::F32);
        let words = Words::Registers(vec![0x4366, 0x199A]); // 230.1f32
        assert_eq!(
            evaluate(&reg, &req, &words),
            (Value::Number(230.1), Quality::Good, None)
        );
        reg.scale = 0.001;
        assert_eq!(evaluate(&reg, &req, &words).0, Value::Number(0.2301));
    }

    #[test]
    fn padded_text_stays_good() {
        let (reg, req) = string_register(3);
        let words = Words::Registers(vec![0x4142, 0x4300, 0x0000]);
        assert_eq!(
            evaluate(&reg, &req, &words),
            (Value::Text("ABC".into()), Quality::Good, None)
        );
    }
}
