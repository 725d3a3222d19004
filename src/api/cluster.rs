//! `GET /api/cluster`: what this instance knows of its cluster (`run
//! --cluster`), and which instance polls each device.
//!
//! Everything but the owners comes from the cluster task's last heartbeat
//! (`cluster::ClusterView`), so it answers without the database, and answers
//! most usefully when the database is the problem: the last known members,
//! `fenced`, and `last_error` say what happened.
//!
//! The owners are read at each request: the registry's active devices with
//! their links, and who owns each link (`cluster::store::owners`), two short
//! statements on the API's own pool. They come from the database rather than
//! from memory because in a cluster each instance's fleet holds only its own
//! devices. Within `READY_TIMEOUT` (or half the request timeout, if that is
//! shorter), like `/ready`'s checks; past it, or when the database refuses,
//! the answer is still a 200 with the rest, `"owners": null` and an
//! `"owners_error"` saying why.
//!
//! Without `--cluster`: `"enabled": false`, every other field null (an empty
//! `instances`), and no database statement. This instance is not listed as a
//! member: it holds no lease and no session, and polls every device.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{RawQuery, State};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::error::ApiError;
use super::params::Params;
use super::{ApiState, READY_TIMEOUT, Shared};
use crate::cluster::{ClusterView, Handovers, Snapshot, store};
use crate::reading::rfc3339;
use crate::registry::format_duration;
use crate::stats::Sources;

pub(crate) async fn cluster(
    State(state): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let s = &state.0;
    Params::parse(raw.as_deref(), &[])?;
    let Some(view) = &s.stats.cluster else {
        return Ok(Json(disabled()));
    };
    let mut body = view_json(view, fenced_polls(&s.stats), Utc::now());
    match owners(s, view).await {
        Ok(owners) => body["owners"] = json!(owners),
        Err(why) => {
            body["owners"] = Value::Null;
            body["owners_error"] = json!(why);
        }
    }
    Ok(Json(body))
}

/// The answer of an instance that is not clustered.
fn disabled() -> Value {
    json!({
        "enabled": false,
        "this": null,
        "lease_s": null,
        "heartbeat_s": null,
        "fence_margin_s": null,
        "session": null,
        "fenced": false,
        "last_error": null,
        "renewed_at": null,
        "instances": [],
        "owners": null,
        "handovers": null,
    })
}

/// Everything `/api/cluster` answers but the owners, as of `now`: also the
/// status page's cluster card (in `/api/fleet`'s summary).
pub(crate) fn view_json(view: &ClusterView, fenced_polls: u64, now: DateTime<Utc>) -> Value {
    let snap = view.snapshot();
    let settings = &view.settings;
    json!({
        "enabled": true,
        "this": view.instance_id(),
        "lease_s": settings.lease.as_secs_f64(),
        "heartbeat_s": settings.heartbeat.as_secs_f64(),
        "fence_margin_s": settings.fence_margin.as_secs_f64(),
        "session": snap.session,
        "fenced": snap.fenced,
        "last_error": snap.last_error,
        "renewed_at": snap.renewed_at.map(rfc3339),
        "instances": instances(&snap, now),
        "handovers": handovers(&view.handovers, fenced_polls),
    })
}

/// Polls this instance skipped or discarded because its fence was closed.
pub(crate) fn fenced_polls(stats: &Sources) -> u64 {
    stats.counters.fenced_polls.load(Ordering::Relaxed)
}

/// The members as of the last heartbeat, with their heartbeat ages moved on
/// to `now` (so that while the database is away they keep growing rather
/// than freeze), and this instance's counts as it holds them now (the
/// database has those of its previous renewal).
fn instances(snap: &Snapshot, now: DateTime<Utc>) -> Vec<Value> {
    let since = snap.renewed_at.map_or(0.0, |at| {
        (now - at).to_std().unwrap_or_default().as_secs_f64()
    });
    snap.members
        .iter()
        .map(|m| {
            let (links, devices) = if m.this {
                (snap.links_owned, snap.devices_owned)
            } else {
                (m.links_owned as usize, m.devices_owned as usize)
            };
            json!({
                "instance_id": m.instance_id,
                "address": m.address,
                "started_at": rfc3339(m.started_at),
                "heartbeat_age_s": m.heartbeat_age_s + since,
                "links_owned": links,
                "devices_owned": devices,
                // The registry's serial lines its machine has: only such an
                // instance may own one.
                "serial_lines": m.serial_lines,
                "this": m.this,
            })
        })
        .collect()
}

fn handovers(h: &Handovers, fenced_polls: u64) -> Value {
    json!({
        "acquired": Handovers::get(&h.acquired),
        "taken_over": Handovers::get(&h.taken_over),
        "released": Handovers::get(&h.released),
        "fenced": Handovers::get(&h.fenced),
        "fenced_polls": fenced_polls,
    })
}

/// Every active device of the registry and the instance that polls it
/// (`None`: nobody yet, or its registry rows cannot be used); or why it
/// cannot be said now.
async fn owners(
    s: &Shared,
    view: &ClusterView,
) -> Result<BTreeMap<String, Option<String>>, String> {
    let Some(pool) = s.query_db.as_postgres() else {
        // `run --cluster` refuses SQLite before anything starts.
        return Err("a cluster needs PostgreSQL".to_string());
    };
    let bound = READY_TIMEOUT.min(s.limits.timeout / 2);
    let read = async {
        let links = s.query_db.active_links().await?;
        let owners = store::owners(pool).await?;
        Ok::<_, sqlx::Error>((links, owners))
    };
    let (links, owners) = match tokio::time::timeout(bound, read).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            let text = crate::db::error_text(&e);
            s.db_warn.warn(|suppressed| {
                tracing::warn!(error = %text, suppressed, "cannot read the cluster's owners; /api/cluster answers without them");
            });
            return Err(format!(
                "cannot read the owners from the database: {text}; the rest is this instance's last heartbeat"
            ));
        }
        Err(_) => {
            return Err(format!(
                "the database did not answer within {}; the rest is this instance's last heartbeat",
                format_duration(bound)
            ));
        }
    };
    let polled = super::devices::polled_names(&s.stats, &super::caller::Scope::default());
    let skipped: BTreeSet<String> = s
        .stats
        .registry
        .snapshot()
        .into_iter()
        .filter(|(_, r)| !r.polling_previous)
        .map(|(name, _)| name)
        .collect();
    Ok(owner_map(
        view.instance_id(),
        &polled,
        &skipped,
        links,
        &owners,
    ))
}

/// Who polls each device: this instance for those it polls (it knows
/// best, and its link may have changed in the registry since it loaded
/// it); nobody for a device skipped because its rows cannot be used (every
/// instance skips it); otherwise the owner of its link, if any.
fn owner_map(
    this: &str,
    polled: &BTreeSet<String>,
    skipped: &BTreeSet<String>,
    links: Vec<(String, String)>,
    owners: &HashMap<String, String>,
) -> BTreeMap<String, Option<String>> {
    let mut map: BTreeMap<String, Option<String>> = links
        .into_iter()
        .map(|(name, link)| {
            let owner = if skipped.contains(&name) {
                None
            } else {
                owners.get(&link).cloned()
            };
            (name, owner)
        })
        .collect();
    for name in polled {
        map.insert(name.clone(), Some(this.to_string()));
    }
    map
}

/// The `owner` of a device listed by `/api/devices` or `/api/fleet`: this
/// instance for a polled one, nobody for a skipped one. Absent without
/// `--cluster` (`None`).
pub(crate) fn owner_of_listed(stats: &Sources, polled: bool) -> Option<Value> {
    let view = stats.cluster.as_ref()?;
    Some(if polled {
        json!(view.instance_id())
    } else {
        Value::Null
    })
}

/// `/ready`'s `cluster` object, and why the instance is not ready when it
/// is fenced: a fenced instance sends no request, so it does none of its
/// work (see the README, "Running several instances").
pub(crate) fn ready(view: &ClusterView) -> (Value, Option<String>) {
    let snap = view.snapshot();
    let problem = snap.fenced.then(|| {
        let why = match (&snap.session, &snap.last_error) {
            (_, Some(e)) => format!("the last heartbeat failed: {e}"),
            (None, None) => format!(
                "not a member yet (joining, or a live instance holds --instance-id {})",
                view.instance_id()
            ),
            (Some(_), None) => "its lease ran out before it was renewed".to_string(),
        };
        format!("cluster: fenced, polling nothing until the lease is renewed; {why}")
    });
    let body = json!({
        "session": snap.session,
        "fenced": snap.fenced,
        "links_owned": snap.links_owned,
        "devices_owned": snap.devices_owned,
        "last_error": snap.last_error,
    });
    (body, problem)
}

#[cfg(test)]
pub(crate) mod tests;
