//! The status page's endpoints, built so that one refresh costs the server a
//! fixed number of requests whatever the fleet size:
//!
//! - `GET /api/fleet`: the summary (devices by state, readings by quality,
//!   history and Redis) and one page of the device listing, filtered by name,
//!   tag and state, devices needing attention first, then in natural order
//!   (`s2` before `s10`);
//! - `GET /api/latest?devices=a,b,c`: the latest values of many devices;
//! - `GET /api/buckets?devices=a,b,c`: their per-bucket history (sparklines).
//!
//! A request names or pages through at most `--api-max-devices` devices, so
//! its work is bounded; more is a 400 that says to split the list. Names are
//! separated by commas: no device name can hold one (see `config::validate`).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Map, Value, json};

use super::caller::Scope;
use super::devices::{polled_json, polled_names, skipped_json};
use super::error::ApiError;
use super::params::Params;
use super::readings::{Capped, MIN_ROW_BYTES};
use super::{ApiState, Shared};
use crate::history::query::{self, QueryError, RangeQuery, Rows};
use crate::reading::rfc3339;
use crate::registry::{Device, format_duration, parse_duration};

/// The longest device name (see `config::validate::check_name`): a list of
/// `n` names is at most `n × (this + 1)` bytes, so a longer one is refused
/// before it is split.
const MAX_NAME: usize = 100;

/// Distinct values listed per tag key in the summary (for the page's tag
/// filter): a tag with a value per device would otherwise list the fleet.
const MAX_TAG_VALUES: usize = 50;

const FLEET_PARAMS: &[&str] = &["search", "state", "tag", "page", "per_page"];
const LATEST_PARAMS: &[&str] = &["devices"];
const BUCKET_PARAMS: &[&str] = &["devices", "from", "to", "bucket"];

/// The states that need no attention. Every other one, including states
/// this version does not know yet, does.
const CALM_STATES: &[&str] = &["up", "pending"];

/// `GET /api/fleet?search=&state=&tag=&page=&per_page=`.
///
/// The summary, filters and order work on borrowed rows (a name, a state,
/// the tags); only the page's devices are turned into JSON. Building the
/// JSON of every device on each refresh cost 20 MiB of peak memory and
/// 66 ms an answer at 10,000 devices (BENCHMARKS.md, "The status page").
pub(crate) async fn fleet(
    State(state): State<ApiState>,
    scope: Scope,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let s = &state.0;
    let params = Params::parse(raw.as_deref(), FLEET_PARAMS)?;
    let filter = Filter::parse(&params)?;
    let per_page = count(&params, "per_page", 50, s.limits.max_devices)?;
    let page = count(&params, "page", 0, usize::MAX)?;

    let latest = &s.stats.latest;
    let polled = s.stats.devices.borrow();
    let rejected = s.stats.registry.snapshot();
    let mut rows: Vec<Row> = polled
        .iter()
        .filter(|d| scope.sees(d.tenant_name()))
        .map(|d| {
            let state = latest.state_name(&d.name).unwrap_or("pending");
            Row::new(
                &d.name,
                state,
                Some(&d.tags),
                Some(d),
                rejected.get(&d.name).map(|r| r.reason.as_str()),
                s,
            )
        })
        .collect();
    rows.extend(
        rejected
            .iter()
            .filter(|(_, r)| !r.polling_previous && scope.sees(r.tenant_name()))
            .map(|(name, r)| Row::new(name, "skipped", None, None, Some(&r.reason), s)),
    );
    let summary = summary(&rows, s, &scope);
    let mut matched: Vec<&Row> = rows.iter().filter(|r| filter.keeps(r)).collect();
    matched.sort_by(|a, b| {
        (!a.attention)
            .cmp(&!b.attention)
            .then_with(|| natural_cmp(a.name, b.name))
    });
    let total = matched.len();
    let pages = total.div_ceil(per_page).max(1);
    let page = page.min(pages - 1);
    let shown: Vec<Value> = matched
        .into_iter()
        .skip(page * per_page)
        .take(per_page)
        .map(|r| {
            let mut json = match r.device {
                Some(d) => polled_json(d, &s.stats, r.reason),
                None => skipped_json(r.name, r.reason.unwrap_or_default(), &s.stats),
            };
            json["attention"] = json!(r.attention);
            json
        })
        .collect();
    Ok(Json(json!({
        "summary": summary,
        "matched": total,
        "page": page,
        "pages": pages,
        "per_page": per_page,
        "devices": shown,
    })))
}

/// One device of the listing, borrowed: what the summary, the filters and
/// the order need.
struct Row<'a> {
    name: &'a str,
    state: &'a str,
    tags: Option<&'a BTreeMap<String, String>>,
    /// The polled device; `None` for a skipped one.
    device: Option<&'a Device>,
    /// Why its registry rows were refused, if they were.
    reason: Option<&'a str>,
    attention: bool,
}

impl<'a> Row<'a> {
    /// A device needs attention when its state is not a calm one, when its
    /// newest registry rows were refused (it is skipped, or polled on its
    /// previous definition), or when a value it reported last is not good
    /// (a device can be up with one request failing).
    fn new(
        name: &'a str,
        state: &'a str,
        tags: Option<&'a BTreeMap<String, String>>,
        device: Option<&'a Device>,
        reason: Option<&'a str>,
        s: &Shared,
    ) -> Row<'a> {
        let attention = !CALM_STATES.contains(&state)
            || reason.is_some()
            || (state == "up" && s.stats.latest.has_value_not_good(name));
        Row {
            name,
            state,
            tags,
            device,
            reason,
            attention,
        }
    }
}

/// Counts by state (whatever states the listing has), readings by quality,
/// the history writer and Redis as `/api/stats` shows them, the tags the
/// page can filter by, in a cluster what `/api/cluster` says but the
/// owners, and the database's health as `/api/database` shows it (all from
/// memory: the page's refresh costs no database statement).
///
/// For a tenant's scope the counts are of its devices only, and what has
/// no per-device split (readings by quality, history, Redis, the cluster,
/// the database) is null: it would tell of the other tenants' devices.
fn summary(rows: &[Row], s: &Shared, scope: &Scope) -> Value {
    let mut states: BTreeMap<&str, usize> = ["up", "down", "demoted", "pending"]
        .iter()
        .map(|s| (*s, 0))
        .collect();
    let mut tags: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut attention = 0;
    for r in rows {
        *states.entry(r.state).or_default() += 1;
        attention += usize::from(r.attention);
        for (k, v) in r.tags.into_iter().flatten() {
            let values = tags.entry(k).or_default();
            if values.len() < MAX_TAG_VALUES {
                values.insert(v);
            }
        }
    }
    if scope.tenant.is_some() {
        return json!({
            "devices": rows.len(),
            "attention": attention,
            "states": states,
            "readings": null,
            "history": null,
            "redis": null,
            "tags": tags,
            "cluster": null,
            "database": null,
            "at": rfc3339(Utc::now()),
        });
    }
    let stats = s.stats.snapshot().to_json();
    let problems = s.stats.history_snapshot().problems(Utc::now());
    json!({
        "devices": rows.len(),
        "attention": attention,
        "states": states,
        "readings": stats["readings"],
        "history": { "problems": problems, "counters": stats["history"] },
        "redis": s.stats.redis.as_ref().map(|_| stats["redis"].clone()),
        "tags": tags,
        "cluster": s.stats.cluster.as_deref().map(|view| {
            super::cluster::view_json(view, super::cluster::fenced_polls(&s.stats), Utc::now())
        }),
        "database": super::database::health(s).to_json(Utc::now()),
        "at": rfc3339(Utc::now()),
    })
}

/// What `/api/fleet` keeps: a case-insensitive part of the name, one state
/// (or `attention`), and one tag, `key=value` or a value under any key.
#[derive(Debug, Default)]
struct Filter {
    search: Option<String>,
    state: Option<String>,
    tag: Option<(Option<String>, String)>,
}

impl Filter {
    fn parse(params: &Params) -> Result<Filter, ApiError> {
        let tag = params.non_empty("tag").map(|t| match t.split_once('=') {
            Some((k, v)) => (Some(k.to_string()), v.to_string()),
            None => (None, t.to_string()),
        });
        Ok(Filter {
            search: params.non_empty("search").map(str::to_lowercase),
            state: params.non_empty("state").map(str::to_string),
            tag,
        })
    }

    fn keeps(&self, r: &Row) -> bool {
        if let Some(search) = &self.search
            && !r.name.to_lowercase().contains(search.as_str())
        {
            return false;
        }
        if let Some(state) = &self.state {
            let keep = match state.as_str() {
                "attention" => r.attention,
                s => r.state == s,
            };
            if !keep {
                return false;
            }
        }
        match &self.tag {
            None => true,
            Some((key, value)) => r.tags.is_some_and(|tags| {
                tags.iter()
                    .any(|(k, v)| key.as_ref().is_none_or(|key| key == k) && v == value)
            }),
        }
    }
}

/// A whole number parameter between 0 and `max` (`default` when absent).
fn count(params: &Params, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
    let Some(text) = params.non_empty(name) else {
        return Ok(default);
    };
    let n: usize = text.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "`{name}`: `{}` is not a whole number",
            text.escape_debug()
        ))
    })?;
    if n > max || (name == "per_page" && n == 0) {
        return Err(ApiError::bad_request(format!(
            "`{name}` must be between 1 and {max} (--api-max-devices), not {n}"
        )));
    }
    Ok(n)
}

/// The names of `devices=a,b,c`: required, at most `max`, each one a name a
/// device can have; repeated names count once.
pub(crate) fn device_names(params: &Params, max: usize) -> Result<Vec<String>, ApiError> {
    let list = params.non_empty("devices").ok_or_else(|| {
        ApiError::bad_request(
            "`devices` is required: a comma-separated list, e.g. ?devices=boiler-1,boiler-2",
        )
    })?;
    if list.len() > max * (MAX_NAME + 1) {
        return Err(too_many(max));
    }
    let mut names = Vec::new();
    let mut seen = BTreeSet::new();
    for name in list.split(',') {
        if name.is_empty() {
            return Err(ApiError::bad_request(
                "`devices` has an empty name (two commas in a row, or one at an end); separate names with one comma",
            ));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(ApiError::bad_request(format!(
                "`devices`: `{}` contains `{}`; device names use only letters, digits, `-`, `_` and `.`",
                name.escape_debug(),
                c.escape_debug()
            )));
        }
        if seen.insert(name) {
            names.push(name.to_string());
        }
    }
    if names.len() > max {
        return Err(too_many(max));
    }
    Ok(names)
}

fn too_many(max: usize) -> ApiError {
    ApiError::bad_request(format!(
        "`devices` names more than {max} devices (--api-max-devices); split the list over several requests"
    ))
}

/// `GET /api/latest?devices=a,b,c`: each polled device's state and latest
/// values; names not being polled are listed under `unknown` (a device can
/// be removed between the page's listing and this request).
pub(crate) async fn latest(
    State(state): State<ApiState>,
    scope: Scope,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let s = &state.0;
    let params = Params::parse(raw.as_deref(), LATEST_PARAMS)?;
    let names = device_names(&params, s.limits.max_devices)?;
    let polled = polled_names(&s.stats, &scope);
    let mut devices = Map::new();
    let mut unknown = Vec::new();
    for name in names {
        if !polled.contains(&name) {
            unknown.push(name);
            continue;
        }
        let latest = s.stats.latest.device(&name);
        let values: Map<String, Value> = latest
            .iter()
            .flat_map(|d| d.values.iter())
            .map(|(reg, v)| (reg.clone(), v.to_json()))
            .collect();
        devices.insert(name, json!({ "values": values }));
    }
    Ok(Json(json!({ "devices": devices, "unknown": unknown })))
}

/// `GET /api/buckets?devices=a,b,c&from=now-1h&to=now&bucket=1m`: the
/// per-bucket aggregates of every register of each device, in one answer
/// of at most `--api-max-response` bytes. Names the registry does not know
/// are listed under `unknown`.
pub(crate) async fn buckets(
    State(state): State<ApiState>,
    scope: Scope,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let s = &state.0;
    let params = Params::parse(raw.as_deref(), BUCKET_PARAMS)?;
    let names = device_names(&params, s.limits.max_devices)?;
    let now = Utc::now();
    let instant = |key: &str, default: &str| {
        let text = params.get(key).unwrap_or(default);
        query::parse_instant(text, now).map_err(|e| ApiError::bad_request(format!("{key}: {e}")))
    };
    let (from, to) = (instant("from", "now-1h")?, instant("to", "now")?);
    let bucket = parse_duration(params.non_empty("bucket").unwrap_or("1m"))
        .map_err(|e| ApiError::bad_request(format!("bucket: {e}")))?;
    let cap = s.limits.max_response;
    // The rows of all devices share what one answer can hold.
    let mut left = (cap / MIN_ROW_BYTES).max(1);
    let mut devices: BTreeMap<String, Rows> = BTreeMap::new();
    let mut unknown = Vec::new();
    for name in names {
        let q = RangeQuery {
            device: name.clone(),
            register: None,
            from,
            to,
            bucket: Some(bucket),
            limit: left.min(query::MAX_LIMIT),
        };
        match query::range_of_tenant(&s.query_db, &q, scope.tenant.as_deref()).await {
            Ok(rows) => {
                left = left.saturating_sub(rows.len()).max(1);
                devices.insert(name, rows);
            }
            Err(QueryError::NotFound(_)) => unknown.push(name),
            Err(QueryError::TooMany { .. }) => return Err(too_large(cap)),
            Err(e) => return Err(ApiError::from_query(e, &s.db_warn)),
        }
    }
    let answer = json!({
        "from": rfc3339(from),
        "to": rfc3339(to),
        "bucket": format_duration(bucket),
        "devices": devices,
        "unknown": unknown,
    });
    let mut out = Capped::new(cap);
    serde_json::to_writer(&mut out, &answer).map_err(|_| too_large(cap))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], out.buf).into_response())
}

fn too_large(cap: usize) -> ApiError {
    ApiError::bad_request(format!(
        "the answer would be larger than {} (--api-max-response); name fewer devices, use a coarser bucket or a shorter from/to",
        super::limits::format_bytes(cap)
    ))
}

/// Orders names as people count: runs of digits by their value, so `s2`
/// comes before `s10`; other text case-insensitively; ties by bytes.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a, b);
    loop {
        match (x.is_empty(), y.is_empty()) {
            (true, true) => return a.cmp(b),
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        let (cx, rx) = chunk(x);
        let (cy, ry) = chunk(y);
        let digits = |c: &str| c.starts_with(|ch: char| ch.is_ascii_digit());
        let order = if digits(cx) && digits(cy) {
            let (tx, ty) = (cx.trim_start_matches('0'), cy.trim_start_matches('0'));
            tx.len().cmp(&ty.len()).then_with(|| tx.cmp(ty))
        } else {
            // Without allocating: a sort compares each name many times.
            cx.chars()
                .flat_map(char::to_lowercase)
                .cmp(cy.chars().flat_map(char::to_lowercase))
        };
        if order != Ordering::Equal {
            return order;
        }
        (x, y) = (rx, ry);
    }
}

/// The leading run of digits or of non-digits, and the rest.
fn chunk(s: &str) -> (&str, &str) {
    let digit = s.starts_with(|c: char| c.is_ascii_digit());
    let end = s
        .find(|c: char| c.is_ascii_digit() != digit)
        .unwrap_or(s.len());
    s.split_at(end)
}

#[cfg(test)]
mod tests;
