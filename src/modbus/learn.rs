//! A read plan that learns from the device. Coalescing with gap fill is
//! right for most devices and wrong for some: a read spanning an address the
//! device does not map answers exception 2 (illegal data address), one longer
//! than the device takes answers exception 3 (illegal data value), and some
//! devices simply do not answer such reads. When a request fails that way,
//! the poller splits it in two at a value border (at its widest gap, else
//! nearest its middle: [`bisect`]) and reads the halves, and so on until
//! each failing value stands alone. The pieces replace the request in the plan, so later polls
//! read the learned blocks straight away; the plan is kept for as long as the
//! poller lives, which is until its device's definition changes.
//!
//! Learning is bounded: one poll spends at most [`LEARN_REQUESTS_PER_POLL`]
//! extra requests on it and continues on the next poll. A timeout is split
//! only when a smaller read answers: a device that is simply silent (its
//! halves time out too) keeps its coalesced plan.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use super::ReadError;
use super::plan::ReadRequest;
use crate::registry::{Register, RegisterKind};

/// Extra requests one poll may spend splitting failed requests. Isolating one
/// refused address in a 125-register block takes two requests per halving,
/// about 14 in all, so one hole costs two polls; a device that times out on
/// its holes costs a poll at most this many timeouts more (never one per
/// register), and a silent one two, once (see [`Learner::may_split`]).
pub const LEARN_REQUESTS_PER_POLL: usize = 8;

/// Splits `req` into two requests at a value border, so that no value (a
/// u32, a string, the bit fields of one word) is ever cut in two: at the
/// widest gap of unconfigured addresses it reads through, because that is
/// where a device's unmapped addresses are, and the gap is then read by
/// neither half; with no gap (or several as wide), at the border nearest
/// the middle, which halves a request too long for the device or around a
/// value it refuses. `None` when the request carries a single value.
pub fn bisect(req: &ReadRequest, registers: &[Register]) -> Option<(ReadRequest, ReadRequest)> {
    let mut members = req.registers.clone();
    members.sort_by_key(|&i| registers[i].address.0);
    let middle = u32::from(req.start) + u32::from(req.count) / 2;
    // Borders: positions in `members` where a value starts after every
    // earlier value has ended; the best has the widest gap before it, then
    // the start nearest the middle.
    let mut end = 0u32;
    let mut best: Option<(usize, (u32, u32))> = None;
    for (pos, &i) in members.iter().enumerate() {
        let r = &registers[i];
        let start = u32::from(r.address.0);
        if pos > 0 && start >= end {
            let rank = (start - end, u32::MAX - start.abs_diff(middle));
            if best.is_none_or(|(_, b)| rank > b) {
                best = Some((pos, rank));
            }
        }
        end = end.max(r.last_address() + 1);
    }
    let (pos, _) = best?;
    let (left, right) = members.split_at(pos);
    Some((
        piece(req.kind, left, registers),
        piece(req.kind, right, registers),
    ))
}

/// Whether [`bisect`] can split `req`: it carries more than one value. Cheap
/// (no allocation): the plan keeps each request's registers in address order.
pub fn splittable(req: &ReadRequest, registers: &[Register]) -> bool {
    let mut end = 0u32;
    for (pos, &i) in req.registers.iter().enumerate() {
        let r = &registers[i];
        if pos > 0 && u32::from(r.address.0) >= end {
            return true;
        }
        end = end.max(r.last_address() + 1);
    }
    false
}

/// The request reading exactly `members` (sorted by address).
fn piece(kind: RegisterKind, members: &[usize], registers: &[Register]) -> ReadRequest {
    let start = registers[members[0]].address.0;
    let end = members
        .iter()
        .map(|&i| registers[i].last_address() + 1)
        .max()
        .expect("a piece has members");
    ReadRequest {
        kind,
        start,
        count: (end - u32::from(start)) as u16,
        registers: members.to_vec(),
    }
}

/// Exception 2 (illegal data address) or 3 (illegal data value): the answer
/// of a device to a read it cannot serve as asked.
fn refusal(e: &ReadError) -> Option<u8> {
    match e {
        ReadError::Exception(code) if matches!(u8::from(*code), 2 | 3) => Some(u8::from(*code)),
        _ => None,
    }
}

/// What one poll group has learned about its device, and the bounds of the
/// poll under way. It lives in every poll group's task, so what only a
/// learning device needs is boxed: 32 bytes for a device that never
/// refuses a read.
#[derive(Debug, Default)]
pub struct Learner {
    /// Requests the coalesced plan had.
    coalesced: u32,
    /// Extra requests this poll may still spend.
    budget: u8,
    /// A timeout probe of this poll found the device silent.
    quiet: bool,
    /// The last poll left a split undone for want of budget.
    unfinished: bool,
    /// What changed since the view was last published.
    changed: bool,
    known: Option<Box<Known>>,
    /// Where the view goes, and this poll group's number in its device.
    publish: Option<(Arc<LearnedPlans>, u32)>,
}

#[derive(Debug, Default)]
struct Known {
    /// Whether a request has been split.
    split: bool,
    /// Requests of one value the device refuses: kind, start and exception.
    refused: Vec<(RegisterKind, u16, u8)>,
    /// Requests that timed out with their halves timing out too: not split
    /// on a timeout again until they answer.
    silent: Vec<(RegisterKind, u16)>,
}

impl Learner {
    pub fn new(coalesced: usize) -> Self {
        Self {
            coalesced: u32::try_from(coalesced).unwrap_or(u32::MAX),
            ..Self::default()
        }
    }

    /// Publishes what this poll group learns to `plans`, as group `group` of
    /// its device.
    pub fn publish_to(&mut self, plans: Arc<LearnedPlans>, group: usize) {
        self.publish = Some((plans, u32::try_from(group).unwrap_or(u32::MAX)));
    }

    /// Called before each poll.
    pub fn start_poll(&mut self) {
        self.budget = LEARN_REQUESTS_PER_POLL as u8;
        self.quiet = false;
        self.unfinished = false;
    }

    /// Whether the last poll finished every split it found needed.
    pub fn settled(&self) -> bool {
        !self.unfinished
    }

    fn known(&mut self) -> &mut Known {
        self.known.get_or_insert_with(Box::default)
    }

    /// Whether a request that failed with `e` should be split, spending two
    /// requests of the poll's budget on its halves. Exceptions 2 and 3 are
    /// answers, cheap to probe; a timeout is probed only while this poll has
    /// not found the device silent and the request has not been found silent
    /// before, so a silent device costs at most one probe (two timeouts) a
    /// poll, once per request, and none after that until it answers.
    pub fn may_split(&mut self, req: &ReadRequest, e: &ReadError) -> bool {
        let worth = match e {
            ReadError::Timeout(_) => {
                !self.quiet
                    && self
                        .known
                        .as_ref()
                        .is_none_or(|k| !k.silent.contains(&(req.kind, req.start)))
            }
            e => refusal(e).is_some(),
        };
        if !worth {
            return false;
        }
        if self.budget < 2 {
            self.unfinished = true;
            return false;
        }
        self.budget -= 2;
        true
    }

    /// The halves of a timed-out request timed out too: the device is
    /// silent, not picky.
    pub fn found_silent(&mut self, req: &ReadRequest) {
        self.quiet = true;
        let silent = &mut self.known().silent;
        if !silent.contains(&(req.kind, req.start)) {
            silent.push((req.kind, req.start));
        }
    }

    /// Notes how `req` ended: an answer clears what was known against it; an
    /// exception 2 or 3 to a request that cannot be split is a refused value
    /// (one that can is only waiting for a poll with budget to split it).
    pub fn outcome(
        &mut self,
        req: &ReadRequest,
        registers: &[Register],
        result: Result<(), &ReadError>,
    ) {
        let code = result
            .err()
            .and_then(refusal)
            .filter(|_| !splittable(req, registers));
        if self.known.is_none() && code.is_none() {
            return; // the default path: nothing known, nothing to learn
        }
        let key = (req.kind, req.start);
        let answered = result.is_ok() || result.is_err_and(ReadError::device_answered);
        let known = self.known();
        if answered {
            known.silent.retain(|s| *s != key);
        }
        let refused = &mut known.refused;
        let at = refused.iter().position(|r| (r.0, r.1) == key);
        match (at, code) {
            (None, Some(code)) => refused.push((key.0, key.1, code)),
            (Some(i), Some(code)) if refused[i].2 != code => refused[i].2 = code,
            // Only an answer says the value is readable again: a timeout or
            // a demoted unit says nothing about it.
            (Some(i), None) if answered => {
                refused.remove(i);
            }
            _ => return,
        }
        self.changed = true;
    }

    /// `plan[n]` was split into `pieces`.
    pub fn replaced(&mut self, plan: &mut Vec<ReadRequest>, n: usize, pieces: Vec<ReadRequest>) {
        plan.splice(n..=n, pieces);
        self.known().split = true;
        self.changed = true;
    }

    /// After a poll: publishes the view when it changed (rarely: a lock and
    /// a few allocations, never on a poll that learned nothing).
    pub fn after_poll(&mut self, device: &str, plan: &[ReadRequest], registers: &[Register]) {
        if !std::mem::take(&mut self.changed) {
            return;
        }
        if let Some((plans, group)) = &self.publish {
            plans.set(device, *group as usize, self.view(plan, registers));
        }
    }

    /// What has been learned, or `None` while the plan is the coalesced one
    /// and the device refuses nothing.
    pub fn view(&self, plan: &[ReadRequest], registers: &[Register]) -> Option<LearnedPlan> {
        let known = self.known.as_ref()?;
        if !known.split && known.refused.is_empty() {
            return None;
        }
        let mut learned = LearnedPlan {
            coalesced: self.coalesced as usize,
            ..LearnedPlan::default()
        };
        for req in plan {
            let refused = known
                .refused
                .iter()
                .find(|r| (r.0, r.1) == (req.kind, req.start));
            match refused {
                None => learned.blocks.push(Block {
                    kind: req.kind,
                    start: req.start,
                    count: req.count,
                }),
                Some(&(_, _, exception)) => learned.refused.push(Refused {
                    kind: req.kind,
                    address: req.start,
                    count: req.count,
                    registers: req
                        .registers
                        .iter()
                        .map(|&i| registers[i].name.to_string())
                        .collect(),
                    exception,
                }),
            }
        }
        Some(learned)
    }
}

/// A learned plan as people see it: the blocks read, and the values the
/// device refuses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LearnedPlan {
    /// Requests the coalesced plan had.
    pub coalesced: usize,
    pub blocks: Vec<Block>,
    pub refused: Vec<Refused>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub kind: RegisterKind,
    pub start: u16,
    pub count: u16,
}

/// A value the device answers with exception 2 or 3 even when read alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub kind: RegisterKind,
    pub address: u16,
    pub count: u16,
    pub registers: Vec<String>,
    pub exception: u8,
}

impl Refused {
    fn detail(&self) -> String {
        ReadError::Exception(tokio_modbus::ExceptionCode::new(self.exception)).to_string()
    }
}

impl LearnedPlan {
    /// Folds the poll groups of one device into one view.
    fn merge(groups: &[Option<LearnedPlan>]) -> Option<LearnedPlan> {
        let mut out: Option<LearnedPlan> = None;
        for g in groups.iter().flatten() {
            let o = out.get_or_insert_with(LearnedPlan::default);
            o.coalesced += g.coalesced;
            o.blocks.extend_from_slice(&g.blocks);
            o.refused.extend_from_slice(&g.refused);
        }
        out
    }

    /// The `learned` field of `/api/devices`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "summary": self.to_string(),
            "coalesced_requests": self.coalesced,
            "blocks": self.blocks.iter().map(|b| serde_json::json!({
                "kind": b.kind.as_str(), "start": b.start, "count": b.count,
            })).collect::<Vec<_>>(),
            "refused": self.refused.iter().map(|r| serde_json::json!({
                "kind": r.kind.as_str(), "address": r.address, "count": r.count,
                "registers": r.registers, "exception": r.exception, "detail": r.detail(),
            })).collect::<Vec<_>>(),
        })
    }

    /// One line per block and refused value, for `check --probe`.
    pub fn lines(&self) -> Vec<String> {
        let span = |kind: RegisterKind, start: u16, count: u16| {
            let last = u32::from(start) + u32::from(count) - 1;
            format!("{:<8} {start}..{last} ({count})", kind.as_str())
        };
        let mut out: Vec<String> = self
            .blocks
            .iter()
            .map(|b| format!("block   {}", span(b.kind, b.start, b.count)))
            .collect();
        out.extend(self.refused.iter().map(|r| {
            format!(
                "refused {}: {}: {}",
                span(r.kind, r.address, r.count),
                r.registers.join(", "),
                r.detail()
            )
        }));
        out
    }
}

/// `learned: 3 blocks, 1 address refused (was 1 request)`.
impl fmt::Display for LearnedPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize, one: &'static str, many: &'static str| {
            format!("{n} {}", if n == 1 { one } else { many })
        };
        write!(
            f,
            "learned: {}, {} refused (coalesced: {})",
            plural(self.blocks.len(), "block", "blocks"),
            plural(self.refused.len(), "address", "addresses"),
            plural(self.coalesced, "request", "requests"),
        )
    }
}

/// What every polled device has learned, by name, for the API and the
/// status page. A device has an entry only once it has learned something;
/// the fleet removes it when the device stops or its definition changes, so
/// a changed definition starts from the coalesced plan and shows nothing.
#[derive(Debug, Default)]
pub struct LearnedPlans {
    /// Per device, per poll group.
    devices: RwLock<HashMap<String, Vec<Option<LearnedPlan>>>>,
}

impl LearnedPlans {
    fn set(&self, device: &str, group: usize, plan: Option<LearnedPlan>) {
        let mut devices = self.devices.write().expect("learned plans poisoned");
        let groups = devices.entry(device.to_string()).or_default();
        if groups.len() <= group {
            groups.resize(group + 1, None);
        }
        groups[group] = plan;
    }

    /// Forgets what `device` learned (it stopped, or its definition changed).
    pub fn remove(&self, device: &str) {
        self.devices
            .write()
            .expect("learned plans poisoned")
            .remove(device);
    }

    /// What the device has learned, `None` when nothing.
    pub fn get(&self, device: &str) -> Option<LearnedPlan> {
        LearnedPlan::merge(
            self.devices
                .read()
                .expect("learned plans poisoned")
                .get(device)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_modbus::ExceptionCode;

    use super::*;
    use crate::modbus::plan::plan;
    use crate::registry::{DataType, RequestLimits};

    fn reg(address: u16, data_type: DataType) -> Register {
        Register::test(RegisterKind::Holding, address, data_type)
    }

    fn whole(registers: &[Register]) -> ReadRequest {
        let limits = RequestLimits {
            max_gap: 125,
            ..RequestLimits::DEFAULT
        };
        let p = plan(registers, &limits);
        assert_eq!(p.len(), 1, "the test registers make one coalesced request");
        p.into_iter().next().unwrap()
    }

    fn shape(r: &ReadRequest) -> (u16, u16, Vec<usize>) {
        (r.start, r.count, r.registers.clone())
    }

    #[test]
    fn a_request_is_split_at_its_widest_gap_which_neither_half_reads() {
        let regs = vec![
            reg(0, DataType::U16),
            reg(5, DataType::U16),
            reg(10, DataType::U32),
            reg(20, DataType::U16),
        ];
        let (a, b) = bisect(&whole(&regs), &regs).unwrap();
        assert_eq!(shape(&a), (0, 12, vec![0, 1, 2]));
        assert_eq!(shape(&b), (20, 1, vec![3]));
    }

    #[test]
    fn a_request_without_gaps_is_halved_at_the_border_nearest_its_middle() {
        let regs: Vec<_> = (0..10u16).map(|i| reg(i * 2, DataType::U32)).collect();
        let (a, b) = bisect(&whole(&regs), &regs).unwrap();
        assert_eq!((a.start, a.count, b.start, b.count), (0, 10, 10, 10));
        // Gaps as wide as each other: the one nearest the middle.
        let regs: Vec<_> = (0..5u16).map(|i| reg(i * 3, DataType::U16)).collect();
        let (a, b) = bisect(&whole(&regs), &regs).unwrap();
        assert_eq!((a.start, a.count, b.start, b.count), (0, 4, 6, 7));
    }

    #[test]
    fn a_value_across_the_middle_is_never_cut() {
        // 0..12: the middle (6) falls inside the string at 4..8.
        let mut text = reg(4, DataType::String);
        text.length = Some(4);
        let regs = vec![reg(0, DataType::U32), text, reg(10, DataType::U32)];
        let (a, b) = bisect(&whole(&regs), &regs).unwrap();
        assert_eq!(shape(&a), (0, 2, vec![0]));
        assert_eq!(shape(&b), (4, 8, vec![1, 2]));
    }

    #[test]
    fn bit_fields_of_one_word_are_one_value_and_cannot_be_split() {
        let mut a = reg(5, DataType::Bool);
        a.bit = Some(0);
        let mut b = a.clone();
        b.bit = Some(9);
        let regs = vec![a, b];
        let req = whole(&regs);
        assert!(!splittable(&req, &regs));
        assert_eq!(bisect(&req, &regs), None);
        let one = vec![reg(7, DataType::F64)];
        assert!(!splittable(&whole(&one), &one));
        assert_eq!(bisect(&whole(&one), &one), None);
    }

    /// Splits every piece until each holds one value, as learning does when
    /// every read fails: every register ends up in exactly one piece, read
    /// whole, and the pieces never overlap.
    #[test]
    fn bisecting_to_the_end_keeps_every_value_whole_and_read_once() {
        let types = [DataType::U16, DataType::U32, DataType::F64, DataType::I16];
        let mut regs = Vec::new();
        let mut at = 0u16;
        for i in 0..40u16 {
            let t = types[usize::from(i) % types.len()];
            regs.push(reg(at, t));
            at += t.width() + i % 3;
        }
        let limits = RequestLimits::DEFAULT;
        let mut pieces = plan(&regs, &limits);
        let mut requests = pieces.len();
        let mut done = Vec::new();
        while let Some(p) = pieces.pop() {
            assert_eq!(splittable(&p, &regs), bisect(&p, &regs).is_some());
            match bisect(&p, &regs) {
                Some((a, b)) => {
                    assert!(a.start + a.count <= b.start, "{a:?} overlaps {b:?}");
                    requests += 2;
                    pieces.extend([a, b]);
                }
                None => done.push(p),
            }
        }
        assert_eq!(done.len(), regs.len());
        for p in &done {
            let r = &regs[p.registers[0]];
            assert_eq!((p.start, p.count), (r.address.0, r.width()));
        }
        // A full binary tree over 40 leaves: 39 splits of two requests.
        assert_eq!(requests, plan(&regs, &limits).len() + 2 * (regs.len() - 1));
    }

    /// Two values in one request, and a learner at the start of a poll.
    fn two_values_polling() -> (Vec<Register>, ReadRequest, Learner) {
        let regs = vec![reg(0, DataType::U16), reg(4, DataType::U16)];
        let req = whole(&regs);
        let mut l = Learner::new(1);
        l.start_poll();
        (regs, req, l)
    }

    fn refused(code: u8) -> ReadError {
        ReadError::Exception(ExceptionCode::new(code))
    }

    #[test]
    fn only_exceptions_2_and_3_and_timeouts_are_worth_a_split() {
        let (_, req, mut l) = two_values_polling();
        assert!(l.may_split(&req, &refused(2)));
        assert!(l.may_split(&req, &refused(3)));
        assert!(l.may_split(&req, &ReadError::Timeout(Duration::from_secs(1))));
        for e in [
            refused(4),
            refused(6),
            ReadError::Connect("refused".into()),
            ReadError::Transport("reset".into()),
            ReadError::Protocol("bad frame".into()),
        ] {
            assert!(!l.may_split(&req, &e), "{e}");
        }
        assert!(l.settled());
    }

    #[test]
    fn one_poll_spends_at_most_its_budget_and_says_it_is_unfinished() {
        let (regs, req, mut l) = two_values_polling();
        let granted = (0..100).filter(|_| l.may_split(&req, &refused(2))).count();
        assert_eq!(granted * 2, LEARN_REQUESTS_PER_POLL);
        assert!(!l.settled());
        // Left whole for want of budget, two values are not "refused".
        l.outcome(&req, &regs, Err(&refused(2)));
        assert_eq!(l.view(std::slice::from_ref(&req), &regs), None);
        l.start_poll();
        assert!(l.may_split(&req, &refused(2)));
        assert!(l.settled());
    }

    #[test]
    fn a_request_found_silent_is_not_probed_on_a_timeout_until_it_answers() {
        let (regs, req, mut l) = two_values_polling();
        let timeout = ReadError::Timeout(Duration::from_millis(100));
        assert!(l.may_split(&req, &timeout));
        l.found_silent(&req);
        // Nor any other request in the same poll.
        let other = ReadRequest {
            start: 50,
            ..req.clone()
        };
        assert!(!l.may_split(&other, &timeout));
        l.start_poll();
        assert!(!l.may_split(&req, &timeout));
        assert!(l.may_split(&other, &timeout));
        // A refusal is still worth a split, and an answer ends the silence.
        assert!(l.may_split(&req, &refused(2)));
        l.outcome(&req, &regs, Ok(()));
        l.start_poll();
        assert!(l.may_split(&req, &timeout));
        // Nothing was split and nothing refused: nothing to show.
        assert_eq!(l.view(&[req], &regs), None);
    }

    #[test]
    fn the_view_lists_blocks_and_refused_values_with_their_exception() {
        let mut regs = vec![reg(0, DataType::U16), reg(1, DataType::U16)];
        regs.push(reg(8, DataType::U32));
        regs[1].name = "pressure".into();
        let coalesced = whole(&regs);
        let (a, b) = bisect(&coalesced, &regs).unwrap();
        let (a1, a2) = bisect(&a, &regs).unwrap();
        let mut plan = vec![coalesced];
        let mut l = Learner::new(1);
        l.replaced(&mut plan, 0, vec![a1, a2.clone(), b]);
        l.outcome(&a2, &regs, Err(&refused(2)));
        let view = l.view(&plan, &regs).unwrap();
        assert_eq!(
            view.to_string(),
            "learned: 2 blocks, 1 address refused (coalesced: 1 request)"
        );
        assert_eq!(
            view.lines(),
            vec![
                "block   holding  0..0 (1)",
                "block   holding  8..9 (2)",
                "refused holding  1..1 (1): pressure: exception 2 (illegal data address)",
            ]
        );
        let json = view.to_json();
        assert_eq!(json["refused"][0]["registers"][0], "pressure");
        assert_eq!(json["refused"][0]["exception"], 2);
        assert_eq!(json["blocks"].as_array().unwrap().len(), 2);
        // The value answers again: no longer refused.
        l.outcome(&a2, &regs, Ok(()));
        assert_eq!(l.view(&plan, &regs).unwrap().refused, vec![]);
    }

    #[test]
    fn a_learner_that_learned_nothing_costs_32_bytes() {
        // Every poll group's task holds one (see the type's comment).
        assert_eq!(std::mem::size_of::<Learner>(), 32);
    }

    #[test]
    fn learned_plans_are_kept_per_device_and_group_and_forgotten_on_remove() {
        let plans = LearnedPlans::default();
        let one = |n: u16| LearnedPlan {
            coalesced: 1,
            blocks: vec![Block {
                kind: RegisterKind::Input,
                start: n,
                count: 1,
            }],
            refused: vec![],
        };
        plans.set("a", 1, Some(one(7)));
        plans.set("a", 0, Some(one(3)));
        let merged = plans.get("a").unwrap();
        assert_eq!((merged.coalesced, merged.blocks.len()), (2, 2));
        assert_eq!(plans.get("b"), None);
        plans.remove("a");
        assert_eq!(plans.get("a"), None);
    }
}
