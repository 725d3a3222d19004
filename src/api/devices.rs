//! `GET /api/devices` and `GET /api/devices/{name}/latest`: the polled
//! devices and their latest values, from memory (with or without Redis).

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use chrono::Utc;
use serde_json::{Map, json};

use super::caller::Scope;
use super::error::ApiError;
use super::params::check_text;
use super::{ApiState, Shared};
use crate::reading::rfc3339;
use crate::registry::Device;
use crate::stats::Sources;

fn opt_ts(ts: Option<chrono::DateTime<Utc>>) -> serde_json::Value {
    ts.map_or(serde_json::Value::Null, |t| json!(rfc3339(t)))
}

/// The state of one polled device: "up", "down", "demoted" (its unit timed
/// out `demote_after` times in a row and is not asked until `last_error`'s
/// next try), or "pending" before its first poll; and what its read plan
/// learned ("learned", null when it is the coalesced plan and the device
/// refuses nothing). In a cluster, `polled_json` adds the "owner": this
/// instance's id (every device it lists is one it polls, or one nobody
/// polls; `/api/cluster` has the owner of every device).
fn device_json(device: &Device, stats: &Sources) -> serde_json::Value {
    let state = stats.latest.state(&device.name);
    let learned = stats.counters.learned.get(&device.name);
    json!({
        "name": device.name,
        "host": device.host,
        "port": device.port,
        "unit_id": device.unit_id.0,
        "transport": device.transport.as_str(),
        "serial": device.transport.serial().map(|l| json!({
            "path": l.path,
            "settings": l.settings(),
        })),
        "schedule": device.schedule.describe(),
        "registers": device.registers.len(),
        "deadbands": deadbands_json(device),
        "tags": device.tags,
        "tenant": device.tenant,
        "state": state
            .as_ref()
            .map_or("pending", |s| crate::reading::state_name(s.up, s.demoted)),
        "last_poll": opt_ts(state.as_ref().map(|s| s.last_poll)),
        "last_success": opt_ts(state.as_ref().and_then(|s| s.last_success)),
        "last_error": state.as_ref().and_then(|s| s.error.clone()),
        "latency_ms": state.as_ref().map(|s| s.latency_ms),
        "polls": state.as_ref().map_or(0, |s| s.polls),
        "learned": learned.map(|l| l.to_json()),
    })
}

/// The registers whose history is thinned by a deadband, by name, each
/// with its band and heartbeat (`{}` when none is): so that someone who
/// finds fewer rows than polls sees why.
fn deadbands_json(device: &Device) -> serde_json::Value {
    let with: Map<String, serde_json::Value> = device
        .registers
        .iter()
        .filter_map(|r| Some((r.name.to_string(), r.deadband.as_deref()?.to_json())))
        .collect();
    with.into()
}

pub(crate) async fn devices(
    State(state): State<ApiState>,
    scope: Scope,
) -> Json<serde_json::Value> {
    Json(json!({ "devices": listing(&state.0, &scope) }))
}

/// Every device the API lists, each with its `state`: the polled ones, then
/// those skipped because their registry rows cannot be used (state
/// "skipped", with the "reason"). A rejected device still polled on its
/// previous definition is listed as polled, with the "reason" its new rows
/// were refused. What `/api/devices` serves; `/api/fleet` builds the same
/// objects (`polled_json`, `skipped_json`) for the devices of its page.
/// Only the devices `scope` sees are listed.
pub(crate) fn listing(s: &Shared, scope: &Scope) -> Vec<serde_json::Value> {
    let stats = &s.stats;
    let rejected = stats.registry.snapshot();
    let mut list: Vec<serde_json::Value> = stats
        .devices
        .borrow()
        .iter()
        .filter(|d| scope.sees(d.tenant_name()))
        .map(|d| {
            let reason = rejected.get(&d.name).map(|r| r.reason.as_str());
            polled_json(d, stats, reason)
        })
        .collect();
    list.extend(
        rejected
            .iter()
            .filter(|(_, r)| !r.polling_previous && scope.sees(r.tenant_name()))
            .map(|(name, r)| skipped_json(name, &r.reason, stats)),
    );
    list
}

/// The names of the devices this instance polls that `scope` sees.
pub(crate) fn polled_names(stats: &Sources, scope: &Scope) -> BTreeSet<String> {
    stats
        .devices
        .borrow()
        .iter()
        .filter(|d| scope.sees(d.tenant_name()))
        .map(|d| d.name.clone())
        .collect()
}

/// A polled device, with the `reason` its newest registry rows were refused
/// when it is polled on its previous definition.
pub(crate) fn polled_json(
    device: &Device,
    stats: &Sources,
    reason: Option<&str>,
) -> serde_json::Value {
    let mut json = device_json(device, stats);
    if let Some(reason) = reason {
        json["reason"] = json!(reason);
    }
    if let Some(owner) = super::cluster::owner_of_listed(stats, true) {
        json["owner"] = owner;
    }
    json
}

/// A device not polled because its registry rows cannot be used (by no
/// instance of a cluster: its `owner` is null).
pub(crate) fn skipped_json(name: &str, reason: &str, stats: &Sources) -> serde_json::Value {
    let mut json = json!({ "name": name, "state": "skipped", "reason": reason });
    if let Some(owner) = super::cluster::owner_of_listed(stats, false) {
        json["owner"] = owner;
    }
    json
}

/// A device that is not polled and one of another tenant are the same 404,
/// so that a tenant cannot learn the names of the others' devices.
pub(crate) async fn device_latest(
    State(state): State<ApiState>,
    scope: Scope,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(name) = name.map_err(|e| {
        ApiError::bad_request(format!("the device name in the path: {}", e.body_text()))
    })?;
    check_text(&name)
        .map_err(|problem| ApiError::bad_request(format!("the device name {problem}")))?;
    let s = &state.0;
    let device = s
        .stats
        .devices
        .borrow()
        .iter()
        .find(|d| d.name == name && scope.sees(d.tenant_name()))
        .cloned()
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no device named `{name}` is being polled; GET /api/devices lists them"
            ))
        })?;
    let mut body = device_json(&device, &s.stats);
    let values: Map<String, serde_json::Value> = s
        .stats
        .latest
        .device(&name)
        .map(|d| {
            d.values
                .iter()
                .map(|(reg, v)| (reg.clone(), v.to_json()))
                .collect()
        })
        .unwrap_or_default();
    body["device"] = json!(name);
    body["values"] = serde_json::Value::Object(values);
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_lists_the_bands_of_its_registers_that_have_one() {
        let yaml = "devices:\n  - name: a\n    host: h\n    heartbeat: 15m\n    registers:\n      - { name: t, kind: holding, address: 0, deadband_percent: 1 }\n      - { name: s, kind: holding, address: 1, type: string, length: 2, deadband: 0, heartbeat: 1h }\n      - { name: n, kind: holding, address: 5 }\n";
        let device = crate::config::parse(yaml, "devices.yaml")
            .unwrap()
            .remove(0);
        assert_eq!(
            deadbands_json(&device),
            json!({
                "t": { "deadband_percent": 1.0, "heartbeat": "15m" },
                "s": { "deadband": 0.0, "heartbeat": "1h" },
            })
        );
        let plain = "devices:\n  - { name: a, host: h, registers: [ { name: n, kind: holding, address: 0 } ] }\n";
        let device = crate::config::parse(plain, "devices.yaml")
            .unwrap()
            .remove(0);
        assert_eq!(deadbands_json(&device), json!({}));
    }
}
