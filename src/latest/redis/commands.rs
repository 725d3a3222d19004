//! One poll report as the Redis commands the writer sends for it.

use super::RedisSettings;
use super::connection::Commands;
use crate::latest::contract::{push_json, push_latest_json, push_rfc3339};
use crate::latest::notice::Notice;
use crate::reading::PollReport;
use crate::registry::Tenant;

/// The kinds of key a device has.
const LATEST: &[u8] = b":latest:";
const STATE: &[u8] = b":device:";
const UPDATES: &[u8] = b":updates:";

/// Where a device's keys are: `<prefix>:<kind>:<device>`, or
/// `<prefix>:<tenant>:<kind>:<device>` for a device with a tenant, so that
/// a Redis ACL pattern (`~regpoll:acme:*`, `&regpoll:acme:*`) covers one
/// tenant's keys and channels and no other's. Every command that writes or
/// deletes a device's keys names them through this, so the tenant's place
/// in a key is decided once.
pub(super) struct DeviceKeys<'a> {
    prefix: &'a [u8],
    /// `b":"` before a tenant, empty without one.
    colon: &'a [u8],
    tenant: &'a [u8],
    device: &'a [u8],
}

impl<'a> DeviceKeys<'a> {
    pub(super) fn new(prefix: &'a str, tenant: Option<&'a Tenant>, device: &'a str) -> Self {
        let tenant = tenant.map_or(&b""[..], |t| t.as_str().as_bytes());
        DeviceKeys {
            prefix: prefix.as_bytes(),
            colon: if tenant.is_empty() { b"" } else { b":" },
            tenant,
            device: device.as_bytes(),
        }
    }

    /// The pieces of the key of `kind` ([`LATEST`], [`STATE`] or
    /// [`UPDATES`]), written one after the other without a copy.
    fn of(&self, kind: &'static [u8]) -> [&'a [u8]; 5] {
        [self.prefix, self.colon, self.tenant, kind, self.device]
    }
}

/// Appends one poll's commands to `out`: the latest values, the device
/// state, expiry, and the update message.
///
/// It runs for every poll, so each register's JSON is written once: into the
/// update message, whose bytes the latest-values hash then copies, and keys
/// are written from their pieces. Building them through the redis crate's
/// command helpers (a `Vec` per value, commands that grow by doubling, keys
/// made with `format!`) was a sixth of regpoll's CPU at 10,000 devices
/// (perf, BENCHMARKS.md).
pub(super) fn add_report(
    out: &mut Commands,
    scratch: &mut Scratch,
    settings: &RedisSettings,
    report: &PollReport,
) {
    use std::io::Write as _;
    let keys = DeviceKeys::new(
        &settings.prefix,
        report.device.tenant.as_ref(),
        &report.device.name,
    );
    let latency_ms = report.latency.as_secs_f64() * 1000.0;
    let state = report.state().as_bytes();

    // {"device","ts","state","latency_ms","error","values":{…}}, as DESIGN.md.
    let n = report.readings.len();
    let Scratch { msg, spans } = scratch;
    msg.clear();
    spans.clear();
    msg.extend_from_slice(b"{\"device\":");
    push_json(msg, &*report.device.name);
    msg.extend_from_slice(b",\"ts\":\"");
    let started = msg.len();
    push_rfc3339(msg, report.started);
    let started = started..msg.len();
    msg.extend_from_slice(b"\",\"state\":\"");
    msg.extend_from_slice(state);
    msg.extend_from_slice(b"\",\"latency_ms\":");
    push_json(msg, &latency_ms);
    msg.extend_from_slice(b",\"error\":");
    match &report.error {
        Some(e) => push_json(msg, e.as_str()),
        None => msg.extend_from_slice(b"null"),
    }
    msg.extend_from_slice(b",\"values\":{");
    // Where each register's JSON sits in the message.
    let mut last_ts = None;
    for (i, r) in report.readings.iter().enumerate() {
        if i > 0 {
            msg.push(b',');
        }
        push_json(msg, &*report.register(r).name);
        msg.push(b':');
        let from = msg.len();
        push_latest_json(msg, report, r, &mut last_ts);
        spans.push(from..msg.len());
    }
    msg.extend_from_slice(b"}}");
    let started = &msg[started];

    let key = |kind: &'static [u8]| keys.of(kind);
    if n > 0 {
        out.command(2 + 2 * n).arg(b"HSET").arg_parts(&key(LATEST));
        for (r, span) in report.readings.iter().zip(spans.iter()) {
            out.arg(report.register(r).name.as_bytes())
                .arg(&msg[span.clone()]);
        }
    }

    let error = report.error.as_deref();
    // As `{latency_ms:.3}` writes it, from whole microseconds: formatting a
    // float to fixed decimals takes the slow exact path of the formatter.
    let mut latency = [0u8; 48];
    // In u64: formatting and dividing a u128 (`as_nanos`) is slower.
    let us = report.latency.as_secs().saturating_mul(1_000_000)
        + u64::from((report.latency.subsec_nanos() + 500) / 1000);
    let room = {
        let mut at = &mut latency[..];
        // 48 bytes hold any u64 of milliseconds and its decimals.
        let _ = write!(at, "{}.{:03}", us / 1000, us % 1000);
        at.len()
    };
    let latency = &latency[..latency.len() - room];
    let args = 8 + 2 * usize::from(report.reachable) + 2 * usize::from(error.is_some());
    out.command(args)
        .arg(b"HSET")
        .arg_parts(&key(STATE))
        .arg(b"state")
        .arg(state)
        .arg(b"last_poll")
        .arg(started)
        .arg(b"latency_ms")
        .arg(latency);
    if report.reachable {
        out.arg(b"last_success").arg(started);
    }
    match error {
        Some(e) => {
            out.arg(b"error").arg(e.as_bytes());
        }
        None => {
            out.command(3)
                .arg(b"HDEL")
                .arg_parts(&key(STATE))
                .arg(b"error");
        }
    }
    if let Some(ttl) = settings.ttl {
        let secs = ttl.as_secs().max(1).min(i64::MAX as u64).to_string();
        for kind in [LATEST, STATE] {
            out.command(3)
                .arg(b"EXPIRE")
                .arg_parts(&key(kind))
                .arg(secs.as_bytes());
        }
    }
    out.command(3)
        .arg(b"PUBLISH")
        .arg_parts(&key(UPDATES))
        .arg(msg);
}

/// Buffers [`add_report`] reuses from one report to the next, so that a
/// poll's commands are built without allocating.
#[derive(Default)]
pub(super) struct Scratch {
    /// The update message, which the latest-values hash copies from.
    msg: Vec<u8>,
    /// Where each register's JSON sits in `msg`.
    spans: Vec<std::ops::Range<usize>>,
}

/// The bytes the writer sends to Redis for `report` alone: what the
/// benchmark's floor replays to measure the cost of sending them.
pub fn packed_report(settings: &RedisSettings, report: &PollReport) -> Vec<u8> {
    let mut out = Commands::default();
    add_report(&mut out, &mut Scratch::default(), settings, report);
    out.into_bytes()
}

/// Appends one registry change's commands to `out`: removed registers leave
/// the latest-values hash; a device no longer polled loses that hash and its
/// state becomes `inactive` or `skipped` (the reason in `error`, which the
/// next poll's state replaces); then the change is published on the
/// device's update channel.
pub(super) fn add_notice(out: &mut Commands, settings: &RedisSettings, notice: &Notice) {
    let keys = DeviceKeys::new(&settings.prefix, notice.tenant(), notice.device());
    let key = |kind: &'static [u8]| keys.of(kind);
    match notice {
        Notice::RegistersRemoved { registers, .. } => {
            if registers.is_empty() {
                return;
            }
            out.command(2 + registers.len())
                .arg(b"HDEL")
                .arg_parts(&key(LATEST));
            for r in registers {
                out.arg(r.as_bytes());
            }
        }
        Notice::DeviceStopped { state, reason, .. } => {
            out.command(2).arg(b"DEL").arg_parts(&key(LATEST));
            match reason {
                Some(reason) => {
                    out.command(6)
                        .arg(b"HSET")
                        .arg_parts(&key(STATE))
                        .arg(b"state")
                        .arg(state.as_str().as_bytes())
                        .arg(b"error")
                        .arg(reason.as_bytes());
                }
                None => {
                    out.command(4)
                        .arg(b"HSET")
                        .arg_parts(&key(STATE))
                        .arg(b"state")
                        .arg(state.as_str().as_bytes());
                    out.command(3)
                        .arg(b"HDEL")
                        .arg_parts(&key(STATE))
                        .arg(b"error");
                }
            }
            if let Some(ttl) = settings.ttl {
                let secs = ttl.as_secs().max(1).min(i64::MAX as u64).to_string();
                out.command(3)
                    .arg(b"EXPIRE")
                    .arg_parts(&key(STATE))
                    .arg(secs.as_bytes());
            }
        }
        Notice::TenantChanged { .. } => {
            out.command(3)
                .arg(b"DEL")
                .arg_parts(&key(LATEST))
                .arg_parts(&key(STATE));
        }
    }
    let Some(message) = notice.message() else {
        return;
    };
    let mut msg = Vec::new();
    push_json(&mut msg, &message);
    out.command(3)
        .arg(b"PUBLISH")
        .arg_parts(&key(UPDATES))
        .arg(&msg);
}
