//! One poll of one device: plan → requests → decode → quality → readings.
//!
//! A failed request marks only the registers it carried; the device's other
//! requests still count. A connect failure ends the poll early, because every
//! further request would fail the same way.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use crate::modbus::decode::{decode, decode_text};
use crate::modbus::endpoint::Endpoint;
use crate::modbus::plan::{ReadRequest, plan_group};
use crate::modbus::{ReadError, Words};
use crate::reading::{PollReport, Quality, Reading, Value};
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
            readings,
        }
    }
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
            decode(w, reg)
        }
    };
    let n = match raw {
        Value::Number(n) => n,
        other => return (other, Quality::Good, None),
    };
    if !n.is_finite() {
        let what = if n.is_nan() { "NaN" } else { "infinite" };
        return (
            Value::Number(n),
            Quality::Uncertain,
            Some(format!("{what} float")),
        );
    }
    let value = reg.engineering(n);
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
