//! One poll of one device: plan → requests → decode → quality → readings.
//!
//! A failed request marks only the registers it carried; the device's other
//! requests still count. A connect failure ends the poll early, because every
//! further request would fail the same way. A request the device refuses as
//! coalesced (exception 2 or 3, or a timeout where smaller reads answer) is
//! split until the values at fault stand alone, and the plan keeps the
//! pieces (see [`crate::modbus::learn`]).

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::modbus::decode::{decode, decode_text, invalid_bcd};
use crate::modbus::endpoint::{Endpoint, Session};
use crate::modbus::learn::{LearnedPlan, LearnedPlans, Learner, bisect, splittable};
use crate::modbus::plan::{ReadRequest, plan_group};
use crate::modbus::{ReadError, Words};
use crate::reading::{PollReport, Quality, Reading, Value, non_finite_name};
use crate::registry::{DataType, Device, Register, RequestLimits};

/// Polls one device through its endpoint with a plan made once and then
/// learned from the device's answers.
pub struct DevicePoller {
    device: Arc<Device>,
    plan: Vec<ReadRequest>,
    endpoint: Arc<Endpoint>,
    learner: Learner,
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
            learner: Learner::new(plan.len()),
            device,
            plan,
            endpoint,
        }
    }

    /// Shows what this poller learns in `plans`, as the device's poll group `group`.
    pub fn publish_learned(mut self, plans: Arc<LearnedPlans>, group: usize) -> Self {
        self.learner.publish_to(plans, group);
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// The requests one poll sends now (the learned plan), not counting
    /// those spent learning.
    pub fn requests(&self) -> &[ReadRequest] {
        &self.plan
    }

    /// What the plan has learned; `None` while it is the coalesced one and
    /// the device refuses nothing.
    pub fn learned(&self) -> Option<LearnedPlan> {
        self.learner.view(&self.plan, &self.device.registers)
    }

    /// Whether the last poll finished learning (no split left for the next).
    pub fn settled(&self) -> bool {
        self.learner.settled()
    }

    pub async fn poll(&mut self) -> PollReport {
        let device = &self.device;
        let started = Utc::now();
        let clock = Instant::now();
        let mut readings = Vec::with_capacity(device.registers.len());
        let mut error: Option<String> = None;
        let mut reachable = false;
        let mut demoted = false;
        let mut session = self.endpoint.session().await;
        let mut connect_failure: Option<ReadError> = None;
        // Requests split by this poll: (position in the plan, pieces).
        let mut splits: Vec<(usize, Vec<ReadRequest>)> = Vec::new();
        self.learner.start_poll();
        for (n, req) in self.plan.iter().enumerate() {
            if n > 0 && connect_failure.is_none() {
                pause(device).await;
            }
            let (ts, result) = match &connect_failure {
                Some(e) => (Utc::now(), Err(e.clone())),
                None => read(&mut session, device, req).await,
            };
            match result {
                Ok(words) => {
                    reachable = true;
                    self.learner.outcome(req, &device.registers, Ok(()));
                    push_answer(&mut readings, &device.registers, req, ts, &words);
                }
                Err(e)
                    if connect_failure.is_none()
                        && splittable(req, &device.registers)
                        && self.learner.may_split(req, &e) =>
                {
                    // Boxed: learning is rare, and its state inline would
                    // make every device's poll future larger (BENCHMARKS.md).
                    let learned = Box::pin(learn(
                        &mut session,
                        device,
                        (req, ts, e),
                        &mut self.learner,
                        &mut readings,
                    ))
                    .await;
                    reachable |= learned.answered;
                    if error.is_none() {
                        error = learned.error;
                    }
                    connect_failure = learned.connect_failure;
                    if let Some(pieces) = learned.pieces {
                        splits.push((n, pieces));
                    }
                }
                Err(e) => {
                    reachable |= e.device_answered();
                    self.learner.outcome(req, &device.registers, Err(&e));
                    demoted |= matches!(e, ReadError::Demoted { .. });
                    let detail = e.to_string();
                    if e.is_connect() {
                        connect_failure = Some(e);
                    }
                    push_bad(&mut readings, req, ts, &detail);
                    error.get_or_insert(detail);
                }
            }
        }
        drop(session);
        // Back to front, so the positions of the earlier splits hold.
        for (n, pieces) in splits.into_iter().rev() {
            self.learner.replaced(&mut self.plan, n, pieces);
        }
        self.learner
            .after_poll(&device.name, &self.plan, &device.registers);
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

/// The pause between two requests of one poll, for devices that need it.
async fn pause(device: &Device) {
    if !device.limits.pause.is_zero() {
        tokio::time::sleep(device.limits.pause).await;
    }
}

async fn read(
    session: &mut Session<'_>,
    device: &Device,
    req: &ReadRequest,
) -> (DateTime<Utc>, Result<Words, ReadError>) {
    read_with(session, device, req, &device.limits).await
}

/// A half of a failed request, sent once: a probe that times out is an
/// answer to learning, and retrying it would multiply what learning a
/// silent device costs by the retries.
async fn probe(
    session: &mut Session<'_>,
    device: &Device,
    req: &ReadRequest,
) -> (DateTime<Utc>, Result<Words, ReadError>) {
    let once = RequestLimits {
        retries: 0,
        ..device.limits
    };
    read_with(session, device, req, &once).await
}

async fn read_with(
    session: &mut Session<'_>,
    device: &Device,
    req: &ReadRequest,
    limits: &RequestLimits,
) -> (DateTime<Utc>, Result<Words, ReadError>) {
    session
        .read(
            device.unit_id,
            req.kind,
            req.start,
            req.count,
            device.timeout,
            limits,
        )
        .await
}

/// The readings of every register `req` carried, out of its answer.
fn push_answer(
    readings: &mut Vec<Reading>,
    registers: &[Register],
    req: &ReadRequest,
    ts: DateTime<Utc>,
    words: &Words,
) {
    for &i in &req.registers {
        let (value, quality, detail) = evaluate(&registers[i], req, words);
        readings.push(Reading {
            index: i,
            ts,
            value,
            quality,
            detail,
        });
    }
}

/// A bad reading, saying why, for every register `req` carried.
fn push_bad(readings: &mut Vec<Reading>, req: &ReadRequest, ts: DateTime<Utc>, detail: &str) {
    for &i in &req.registers {
        readings.push(Reading {
            index: i,
            ts,
            value: Value::None,
            quality: Quality::Bad,
            detail: Some(detail.to_string()),
        });
    }
}

/// What splitting one failed request gave.
struct Learned {
    /// The requests that replace it in the plan; `None` when it stays whole
    /// (its halves were silent too).
    pieces: Option<Vec<ReadRequest>>,
    answered: bool,
    /// The first failure left standing.
    error: Option<String>,
    connect_failure: Option<ReadError>,
}

/// Splits `failed` (a request, when it was sent, and how it failed; the
/// learner has granted its split) and its failing pieces in turn, as far as
/// the poll's budget goes, and reads every register it carried once: from
/// the piece that answered, or bad with the failure of the piece left
/// standing.
async fn learn(
    session: &mut Session<'_>,
    device: &Device,
    failed: (&ReadRequest, DateTime<Utc>, ReadError),
    learner: &mut Learner,
    readings: &mut Vec<Reading>,
) -> Learned {
    let registers = &device.registers;
    let (req, ts, e) = failed;
    let mut out = Learned {
        pieces: None,
        answered: e.device_answered(),
        error: None,
        connect_failure: None,
    };
    let mut pieces = Vec::new();
    let mut split = false;
    let first_reading = readings.len();
    // Failing pieces, and whether their split was granted.
    let mut failing = vec![(req.clone(), ts, e, true)];
    while let Some((piece, ts, e, granted)) = failing.pop() {
        let halves = if granted
            || (out.connect_failure.is_none()
                && splittable(&piece, registers)
                && learner.may_split(&piece, &e))
        {
            bisect(&piece, registers)
        } else {
            None
        };
        let Some((a, b)) = halves else {
            learner.outcome(&piece, registers, Err(&e));
            let detail = e.to_string();
            push_bad(readings, &piece, ts, &detail);
            out.error.get_or_insert(detail);
            pieces.push(piece);
            continue;
        };
        pause(device).await;
        let first = probe(session, device, &a).await;
        pause(device).await;
        let second = probe(session, device, &b).await;
        let timed_out = |r: &Result<Words, ReadError>| matches!(r, Err(ReadError::Timeout(_)));
        if matches!(e, ReadError::Timeout(_)) && timed_out(&first.1) && timed_out(&second.1) {
            // Smaller reads time out too: the device is silent, not picky.
            learner.found_silent(&piece);
            failing.push((piece, ts, e, false));
            continue;
        }
        split = true;
        for (half, (ts, result)) in [(a, first), (b, second)] {
            match result {
                Ok(words) => {
                    out.answered = true;
                    learner.outcome(&half, registers, Ok(()));
                    push_answer(readings, registers, &half, ts, &words);
                    pieces.push(half);
                }
                Err(e) => {
                    out.answered |= e.device_answered();
                    if e.is_connect() {
                        out.connect_failure.get_or_insert_with(|| e.clone());
                    }
                    failing.push((half, ts, e, false));
                }
            }
        }
    }
    if split {
        pieces.sort_by_key(|r| (r.kind, r.start));
        out.pieces = Some(pieces);
    }
    // In address order, as an unsplit request gives them (the pieces were
    // read in the order their failures came).
    readings[first_reading..].sort_by_key(|r| registers[r.index].address.0);
    out
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

#[cfg(test)]
mod size {
    use std::sync::Arc;

    use super::DevicePoller;
    use crate::modbus::endpoint::Endpoint;

    /// Every device's task holds its poll's future for life, so at 10,000
    /// devices each 100 bytes of it are a megabyte. Rare paths (learning, a
    /// connect, the pipelined and RTU links) are boxed to keep it small
    /// (the sizes are in BENCHMARKS.md).
    #[test]
    fn the_poll_future_stays_small() {
        let device = crate::config::parse(
            "devices:\n  - { name: a, host: 127.0.0.1, port: 1, registers: [ { name: r, kind: holding, address: 0 } ] }\n",
            "devices.yaml",
        )
        .unwrap()
        .remove(0);
        let mut poller =
            DevicePoller::new(Arc::new(device), Arc::new(Endpoint::new("127.0.0.1", 1)));
        let poll = poller.poll();
        let size = std::mem::size_of_val(&poll);
        assert!(size <= 1024, "a poll's future is {size} bytes");
    }
}
