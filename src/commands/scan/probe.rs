//! The requests behind `regpoll scan`, through an endpoint's [`Session`] so
//! that any transport an endpoint speaks can be scanned.
//!
//! Per unit id: one read of one value says whether anything answers (an
//! exception is an answer; a gateway's exception 10 or 11 says nothing is
//! there). For each unit that answers, the largest read it takes is found by
//! bisecting the count between 1 and the protocol's limit (a count the device
//! cannot take is exception 3, illegal data value, application protocol
//! 6.1-6.4; a device that checks the address first can mislead it, so a
//! read refused for its count later is bisected again where it was refused
//! and the window probed again). Then the address window is read in blocks of that size; a block
//! that is refused is read again in pieces of `resolution` addresses, and
//! where a refused piece meets a readable one the edge is found exactly by
//! bisection. Readable runs shorter than `resolution` between two refused
//! pieces can be missed: that is the price of not asking about every
//! address one by one.
//!
//! Everything is bounded: a time and a request budget for the whole scan,
//! shared out among the units still to probe, and a unit that stops
//! answering ([`SILENT_AFTER`] timeouts in a row) is given up.

use std::io::Write;
use std::time::Duration;

use tokio::time::Instant;

use crate::modbus::ReadError;
use crate::modbus::endpoint::Session;
use crate::modbus::plan::{MAX_BITS_PER_REQUEST, MAX_REGISTERS_PER_REQUEST};
use crate::registry::{LogFrames, RegisterKind, RequestLimits, UnitId};

/// Timeouts in a row after which a unit that answered is taken to have
/// stopped answering, and its probing ends. More than the requests one
/// refused block can cost in a row, so one silent block does not end it.
pub const SILENT_AFTER: u32 = 8;

/// What to scan and within which bounds.
#[derive(Debug, Clone)]
pub struct Plan {
    pub units: Vec<UnitId>,
    pub kind: RegisterKind,
    /// First and last address probed.
    pub window: (u16, u16),
    pub timeout: Duration,
    /// Size of the pieces a refused block is read in again.
    pub resolution: u16,
    pub max_time: Duration,
    pub max_requests: u32,
    pub log_frames: LogFrames,
}

/// Whether a unit id answered the first read.
#[derive(Debug, Clone, PartialEq)]
pub enum Presence {
    /// With values, or with the exception given (still an answer).
    Answers(Option<ReadError>),
    /// A gateway says nothing is behind this unit id (exception 10 or 11).
    Nobody(ReadError),
    /// No usable answer: a timeout, a broken connection, a garbled frame.
    Silent(ReadError),
}

/// A run of addresses that all read the same way.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub first: u16,
    pub last: u16,
    /// `None`: readable; otherwise why reads of it failed.
    pub refused: Option<ReadError>,
}

/// What was found about one unit that answers.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitReport {
    pub unit: UnitId,
    /// The largest count it reads in one request.
    pub largest: u16,
    /// The probed addresses, in order, without gaps.
    pub pieces: Vec<Piece>,
    /// Why probing ended before the end of the window, if it did.
    pub stopped: Option<String>,
}

impl UnitReport {
    pub fn readable(&self) -> impl Iterator<Item = &Piece> {
        self.pieces.iter().filter(|p| p.refused.is_none())
    }
}

/// Everything a scan found.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub presence: Vec<(UnitId, Presence)>,
    pub units: Vec<UnitReport>,
    pub requests: u32,
    /// Why the scan ended early, if it did.
    pub stopped: Option<String>,
}

impl Report {
    /// The units that answered the first read, in the order probed.
    pub fn answering(&self) -> impl Iterator<Item = UnitId> + '_ {
        self.presence
            .iter()
            .filter(|(_, p)| matches!(p, Presence::Answers(_)))
            .map(|(u, _)| *u)
    }
}

/// Why probing stops before its end.
#[derive(Debug)]
enum Stop {
    Budget,
    Silent,
    Connect(ReadError),
    /// A read of `count` from `start` was refused for its count
    /// (exception 3) after all: the unit's largest read is smaller there.
    TooLong {
        start: u16,
        count: u16,
    },
}

impl Stop {
    fn describe(&self, plan: &Plan) -> String {
        match self {
            Stop::Budget => format!(
                "out of budget (--max-time {}, --max-requests {}); narrow --addresses or --units, or raise them",
                crate::registry::format_duration(plan.max_time),
                plan.max_requests
            ),
            Stop::Silent => format!(
                "stopped answering ({SILENT_AFTER} timeouts in a row); it may time out instead of refusing addresses it does not have, or be busy: narrow --addresses or raise --timeout"
            ),
            Stop::Connect(e) => format!("the endpoint cannot be reached any more ({e})"),
            Stop::TooLong { start, count } => {
                format!("a read of {count} from {start} was refused for its count (exception 3)")
            }
        }
    }
}

/// The scan in progress: the session it holds and what is left of its budget.
pub struct Scanner<'s, 'e, 'o> {
    session: &'s mut Session<'e>,
    plan: &'s Plan,
    limits: RequestLimits,
    out: &'o mut dyn Write,
    /// The end of the whole scan's time, and the requests it has left.
    until: Instant,
    requests_left: u32,
    /// The same for the phase running now (discovery, or one unit).
    phase_until: Instant,
    phase_requests: u32,
    requests: u32,
    timeouts: u32,
    /// The size of the pieces of the unit being probed.
    resolution: u32,
}

impl<'s, 'e, 'o> Scanner<'s, 'e, 'o> {
    pub fn new(session: &'s mut Session<'e>, plan: &'s Plan, out: &'o mut dyn Write) -> Self {
        let until = Instant::now() + plan.max_time;
        Self {
            session,
            plan,
            limits: RequestLimits {
                // A scan asks each question once: a retry would double the
                // time spent on every unit that is not there.
                retries: 0,
                log_frames: plan.log_frames,
                ..RequestLimits::DEFAULT
            },
            out,
            until,
            requests_left: plan.max_requests,
            phase_until: until,
            phase_requests: plan.max_requests,
            requests: 0,
            timeouts: 0,
            resolution: 1,
        }
    }

    /// Every unit's presence, then the ranges of each that answers. Fails
    /// only when the endpoint cannot be reached at all.
    pub async fn run(mut self) -> anyhow::Result<Report> {
        let mut report = Report {
            presence: Vec::new(),
            units: Vec::new(),
            requests: 0,
            stopped: None,
        };
        let mut silent = SilentRun::default();
        for &unit in &self.plan.units {
            let presence = match self.presence(unit).await {
                Ok(p) => p,
                Err(Stop::Connect(e)) if report.presence.is_empty() => {
                    anyhow::bail!("cannot reach the endpoint: {e}")
                }
                Err(stop) => {
                    report.stopped = Some(stop.describe(self.plan));
                    break;
                }
            };
            silent.note(unit, &presence, self.out);
            report.presence.push((unit, presence));
        }
        silent.flush(self.out);
        let answering: Vec<UnitId> = report.answering().collect();
        for (i, &unit) in answering.iter().enumerate() {
            if report.stopped.is_some() {
                break;
            }
            self.share_budget(answering.len() - i);
            let (found, fatal) = self.unit(unit).await;
            report.units.push(found);
            report.stopped = fatal.map(|stop| stop.describe(self.plan));
        }
        report.requests = self.requests;
        Ok(report)
    }

    /// Gives the next unit its share of what is left, so that one unit
    /// with a large map cannot use up the others' budget.
    fn share_budget(&mut self, units_left: usize) {
        let n = u32::try_from(units_left).unwrap_or(u32::MAX).max(1);
        let now = Instant::now();
        self.phase_until = now + self.until.saturating_duration_since(now) / n;
        self.phase_requests = self.requests_left / n;
        self.timeouts = 0;
    }

    /// One request, within the budget. `Ok(Err(_))` is a read that failed
    /// (an exception, a timeout); `Err(_)` ends the probing.
    async fn ask(
        &mut self,
        unit: UnitId,
        start: u16,
        count: u16,
    ) -> Result<Result<(), ReadError>, Stop> {
        if self.phase_requests == 0 || Instant::now() >= self.phase_until {
            return Err(Stop::Budget);
        }
        self.phase_requests -= 1;
        self.requests_left = self.requests_left.saturating_sub(1);
        self.requests += 1;
        let (kind, timeout) = (self.plan.kind, self.plan.timeout);
        let (_, result) = self
            .session
            .read(unit, kind, start, count, timeout, &self.limits)
            .await;
        match result {
            Ok(_) => {
                self.timeouts = 0;
                Ok(Ok(()))
            }
            Err(e) if e.is_connect() => Err(Stop::Connect(e)),
            Err(e) if e.device_answered() && !nobody(&e) => {
                self.timeouts = 0;
                Ok(Err(e))
            }
            Err(e) => {
                self.timeouts += 1;
                if self.timeouts >= SILENT_AFTER {
                    return Err(Stop::Silent);
                }
                Ok(Err(e))
            }
        }
    }

    /// One read of one value at the window's start.
    async fn presence(&mut self, unit: UnitId) -> Result<Presence, Stop> {
        self.timeouts = 0;
        Ok(match self.ask(unit, self.plan.window.0, 1).await? {
            Ok(()) => Presence::Answers(None),
            Err(e) if nobody(&e) => Presence::Nobody(e),
            Err(e) if e.device_answered() => Presence::Answers(Some(e)),
            Err(e) => Presence::Silent(e),
        })
    }

    /// The largest read and the ranges of one unit that answers; with the
    /// reason when the scan as a whole cannot go on.
    async fn unit(&mut self, unit: UnitId) -> (UnitReport, Option<Stop>) {
        let mut report = UnitReport {
            unit,
            largest: protocol_limit(self.plan.kind),
            pieces: Vec::new(),
            stopped: None,
        };
        let mut at = self.plan.window.0;
        let stop = loop {
            match self.largest(unit, at, report.largest).await {
                Ok((largest, refused)) => {
                    report.largest = largest;
                    self.say(format_args!(
                        "unit {}: {}",
                        unit.0,
                        largest_text(self.plan.kind, largest, refused.as_ref())
                    ));
                }
                Err(stop) => break Some(stop),
            }
            match self.ranges(unit, &mut report).await {
                // Some devices check the address before the count (the
                // protocol says the count first), so the first bisection
                // can be misled; a count refused later is found again
                // where it was refused, and the window probed again.
                Err(Stop::TooLong { start, count }) if count > 1 => {
                    let why = Stop::TooLong { start, count }.describe(self.plan);
                    self.say(format_args!("unit {}: {why}; probing again", unit.0));
                    (at, report.largest) = (start, count - 1);
                }
                result => break result.err(),
            }
        };
        let Some(stop) = stop else {
            return (report, None);
        };
        let why = stop.describe(self.plan);
        let next = report
            .pieces
            .last()
            .map_or(u32::from(self.plan.window.0), |p| u32::from(p.last) + 1);
        let rest = if next <= u32::from(self.plan.window.1) {
            format!("; {}-{} not probed", next, self.plan.window.1)
        } else {
            String::new()
        };
        self.say(format_args!("unit {}: {why}{rest}", unit.0));
        report.stopped = Some(format!("{why}{rest}"));
        // Only a lost endpoint ends the scan; a unit's budget or silence ends that unit.
        (report, matches!(stop, Stop::Connect(_)).then_some(stop))
    }

    /// The largest count up to `max` not refused with exception 3, read
    /// from `at` (by bisection); and the answer to one more, when `max` is
    /// not it. A timeout is not taken for a refusal: it may come from an
    /// address that hangs the device, which a smaller count would only
    /// avoid by chance.
    async fn largest(
        &mut self,
        unit: UnitId,
        at: u16,
        max: u16,
    ) -> Result<(u16, Option<ReadError>), Stop> {
        let mut refused = match self.count_taken(unit, at, max).await? {
            None => return Ok((max, None)),
            Some(e) => e,
        };
        let (mut ok, mut bad) = (1, max);
        while bad - ok > 1 {
            let mid = ok + (bad - ok) / 2;
            match self.count_taken(unit, at, mid).await? {
                None => ok = mid,
                Some(e) => (bad, refused) = (mid, e),
            }
        }
        Ok((ok, Some(refused)))
    }

    /// `None` when the unit takes a read of `count` values from `at` (or
    /// as near as the address space allows), else what it answered. The
    /// protocol checks the count before the address (6.1-6.4), so an
    /// address the unit does not have still tells whether the count is taken.
    async fn count_taken(
        &mut self,
        unit: UnitId,
        at: u16,
        count: u16,
    ) -> Result<Option<ReadError>, Stop> {
        let start = at.min((65536 - u32::from(count)) as u16);
        Ok(match self.ask(unit, start, count).await? {
            Err(e) if refuses_count(&e) => Some(e),
            _ => None,
        })
    }

    /// [`Self::ask`] while probing ranges: a read of several values refused
    /// for its count (exception 3) says nothing about the addresses, only
    /// that the largest read was wrong here.
    async fn read_range(
        &mut self,
        unit: UnitId,
        start: u16,
        count: u16,
    ) -> Result<Result<(), ReadError>, Stop> {
        match self.ask(unit, start, count).await? {
            Err(e) if refuses_count(&e) && count > 1 => Err(Stop::TooLong { start, count }),
            answer => Ok(answer),
        }
    }

    /// Reads the window in blocks of the unit's largest read, refused
    /// blocks again in pieces, and prints each range once it is known.
    async fn ranges(&mut self, unit: UnitId, report: &mut UnitReport) -> Result<(), Stop> {
        let (first, last) = (u32::from(self.plan.window.0), u32::from(self.plan.window.1));
        let block = u32::from(report.largest);
        // Never larger than the unit's largest read, or the pieces (and
        // the bisections inside them) would be refused for their count.
        let resolution = u32::from(self.plan.resolution).clamp(1, block);
        self.resolution = resolution;
        let mut found = Found::default();
        let mut at = first;
        let result = async {
            while at <= last {
                let end = (at + block - 1).min(last);
                match self
                    .read_range(unit, at as u16, (end - at + 1) as u16)
                    .await?
                {
                    Ok(()) => self.add(unit, &mut found, piece(at, end, None)).await?,
                    Err(_) => {
                        let mut chunk = at;
                        while chunk <= end {
                            let chunk_end = (chunk + resolution - 1).min(end);
                            let refused = self
                                .read_range(unit, chunk as u16, (chunk_end - chunk + 1) as u16)
                                .await?
                                .err();
                            self.add(unit, &mut found, piece(chunk, chunk_end, refused))
                                .await?;
                            chunk = chunk_end + 1;
                        }
                    }
                }
                at = end + 1;
            }
            self.close_last(unit, &mut found).await
        }
        .await;
        self.print(unit, &mut found, true);
        report.pieces = found.pieces;
        result
    }
}

impl Scanner<'_, '_, '_> {
    /// Takes the next piece of the window. A refused piece is refined once
    /// the piece after it is known: from a readable neighbour, bisection
    /// finds exactly where readable addresses end.
    async fn add(&mut self, unit: UnitId, found: &mut Found, next: Piece) -> Result<(), Stop> {
        let mut next = next;
        if let Some(last) = found.pieces.last()
            && last.refused.is_some()
            && last.refused != next.refused
        {
            self.refine_last(found, unit, Some(&mut next)).await?;
        }
        found.push(next);
        self.print(unit, found, false);
        Ok(())
    }

    /// Refines a refused piece at the end of the window.
    async fn close_last(&mut self, unit: UnitId, found: &mut Found) -> Result<(), Stop> {
        if found.pieces.last().is_some_and(|p| p.refused.is_some()) {
            self.refine_last(found, unit, None).await?;
        }
        Ok(())
    }

    /// Moves the edges of the last piece (refused) to its exact first and
    /// last refused address: the readable addresses before them join the
    /// piece before (or become one of their own), those after them `next`
    /// when it is readable (or a piece of their own). Only exceptions are
    /// refined: each step on a timeout would cost a whole timeout.
    async fn refine_last(
        &mut self,
        found: &mut Found,
        unit: UnitId,
        next: Option<&mut Piece>,
    ) -> Result<(), Stop> {
        let mut i = found.pieces.len() - 1;
        if !matches!(found.pieces[i].refused, Some(ReadError::Exception(_))) {
            return Ok(());
        }
        let resolution = self.resolution;
        let (mut lo, hi) = (
            u32::from(found.pieces[i].first),
            u32::from(found.pieces[i].last),
        );
        // A refused piece was read in pieces of at most `resolution`
        // addresses, each refused, so its first and last `resolution`
        // addresses each hold a refused one: the bisections stay inside.
        if lo < hi {
            let span = resolution.min(hi - lo + 1);
            let readable = self.readable_len(unit, span, |n| (lo, n)).await?;
            if readable > 0 {
                let head = piece(lo, lo + readable - 1, None);
                match i.checked_sub(1).map(|b| &mut found.pieces[b]) {
                    Some(before) if before.refused.is_none() => before.last = head.last,
                    _ => {
                        found.pieces.insert(i, head);
                        i += 1;
                    }
                }
                lo += readable;
                found.pieces[i].first = lo as u16;
            }
        }
        if lo < hi {
            let span = resolution.min(hi - lo + 1);
            let readable = self.readable_len(unit, span, |n| (hi + 1 - n, n)).await?;
            if readable > 0 {
                let tail = piece(hi + 1 - readable, hi, None);
                found.pieces[i].last = (hi - readable) as u16;
                match next {
                    Some(next) if next.refused.is_none() => next.first = tail.first,
                    _ => found.pieces.push(tail),
                }
            }
        }
        Ok(())
    }

    /// The most addresses `0..span` that read, by bisection, when a read of
    /// `span` is known to be refused; `at(n)` is where a read of `n` starts.
    async fn readable_len(
        &mut self,
        unit: UnitId,
        span: u32,
        at: impl Fn(u32) -> (u32, u32),
    ) -> Result<u32, Stop> {
        let (mut ok, mut bad) = (0, span);
        while bad - ok > 1 {
            let mid = ok + (bad - ok) / 2;
            let (start, count) = at(mid);
            match self.read_range(unit, start as u16, count as u16).await? {
                Ok(()) => ok = mid,
                Err(_) => bad = mid,
            }
        }
        Ok(ok)
    }

    /// Prints the pieces that can no longer change: all of them when `all`,
    /// else all but the last, and but the one before a refused last piece
    /// (its refinement may still move their border).
    fn print(&mut self, unit: UnitId, found: &mut Found, all: bool) {
        let n = found.pieces.len();
        let upto = match found.pieces.last() {
            _ if all => n,
            Some(p) if p.refused.is_some() => n.saturating_sub(2),
            _ => n.saturating_sub(1),
        };
        let kind = self.plan.kind.as_str();
        for p in &found.pieces[found.printed.min(upto)..upto] {
            let line = match &p.refused {
                None => format!("unit {}: {kind} {} readable", unit.0, span_text(p)),
                Some(e) => format!("unit {}: {kind} {} not readable: {e}", unit.0, span_text(p)),
            };
            let _ = writeln!(self.out, "{line}");
        }
        found.printed = found.printed.max(upto);
    }

    fn say(&mut self, line: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.out, "{line}");
    }
}

/// The pieces found so far, and how many of them are printed.
#[derive(Default)]
struct Found {
    pieces: Vec<Piece>,
    printed: usize,
}

impl Found {
    /// Appends `p`, merged into the last piece when they read the same way.
    fn push(&mut self, p: Piece) {
        match self.pieces.last_mut() {
            Some(last)
                if last.refused == p.refused && u32::from(last.last) + 1 == u32::from(p.first) =>
            {
                last.last = p.last;
            }
            _ => self.pieces.push(p),
        }
    }
}

fn piece(first: u32, last: u32, refused: Option<ReadError>) -> Piece {
    Piece {
        first: first as u16,
        last: last as u16,
        refused,
    }
}

/// `100` or `100-199`.
pub fn span_text(p: &Piece) -> String {
    if p.first == p.last {
        p.first.to_string()
    } else {
        format!("{}-{}", p.first, p.last)
    }
}

/// The most values one read of `kind` may carry (application protocol
/// 6.1-6.4: 2000 bits, 125 registers).
pub fn protocol_limit(kind: RegisterKind) -> u16 {
    if kind.is_bit() {
        MAX_BITS_PER_REQUEST
    } else {
        MAX_REGISTERS_PER_REQUEST
    }
}

/// A gateway's answer for a unit id it has nothing behind: exception 10
/// (gateway path unavailable) or 11 (target device failed to respond).
fn nobody(e: &ReadError) -> bool {
    matches!(e, ReadError::Exception(c) if matches!(u8::from(*c), 10 | 11))
}

/// Whether an answer says the count was too many: exception 3 (illegal
/// data value).
fn refuses_count(e: &ReadError) -> bool {
    matches!(e, ReadError::Exception(c) if u8::from(*c) == 3)
}

fn largest_text(kind: RegisterKind, largest: u16, refused: Option<&ReadError>) -> String {
    let what = if kind.is_bit() { "bits" } else { "registers" };
    match refused {
        None if largest == protocol_limit(kind) => {
            format!("largest read {largest} {what} (the protocol's limit)")
        }
        None => format!("largest read {largest} {what}"),
        Some(e) => format!(
            "largest read {largest} {what} ({} answers {e})",
            largest + 1
        ),
    }
}

/// Collapses units that do not answer into one line per run of
/// consecutive ids with the same outcome, printed when the run ends (or
/// every [`SilentRun::PRINT_EVERY`] units, to show progress).
#[derive(Default)]
struct SilentRun {
    first: u8,
    last: u8,
    text: String,
}

impl SilentRun {
    const PRINT_EVERY: u8 = 16;

    fn note(&mut self, unit: UnitId, presence: &Presence, out: &mut dyn Write) {
        let text = match presence {
            Presence::Answers(answer) => {
                self.flush(out);
                let _ = match answer {
                    None => writeln!(out, "unit {}: answers", unit.0),
                    Some(e) => writeln!(out, "unit {}: answers, with {e}", unit.0),
                };
                return;
            }
            Presence::Nobody(e) => format!("nobody there ({e})"),
            Presence::Silent(e @ ReadError::Timeout(_)) => format!("no answer ({e})"),
            Presence::Silent(e) => format!("no usable answer ({e})"),
        };
        let continues = !self.text.is_empty()
            && self.text == text
            && u16::from(self.last) + 1 == u16::from(unit.0)
            && self.last - self.first + 1 < Self::PRINT_EVERY;
        if continues {
            self.last = unit.0;
            return;
        }
        self.flush(out);
        (self.first, self.last, self.text) = (unit.0, unit.0, text);
    }

    fn flush(&mut self, out: &mut dyn Write) {
        if self.text.is_empty() {
            return;
        }
        let _ = if self.first == self.last {
            writeln!(out, "unit {}: {}", self.first, self.text)
        } else {
            writeln!(out, "units {}-{}: {}", self.first, self.last, self.text)
        };
        self.text.clear();
    }
}
