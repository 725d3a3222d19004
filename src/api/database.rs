//! `GET /api/database`: the database's health as the service last read it
//! (every `--jobs-check-interval`): the history tables' storage, TimescaleDB's
//! background jobs, the error of the last read when it failed, and the last
//! runs of regpoll's own maintenance jobs. From
//! memory: asking costs the database nothing. The status page's Database
//! card shows the same from `/api/fleet`'s summary.

use axum::Json;
use axum::extract::State;
use chrono::Utc;

use super::{ApiState, Shared};
use crate::history::health::DatabaseHealth;

pub(super) async fn database(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(health(&state.0).to_json(Utc::now()))
}

/// The health of the service's database, as last read.
pub(super) fn health(s: &Shared) -> DatabaseHealth {
    DatabaseHealth {
        kind: s.db.kind(),
        location: s.db.location(),
        storage: s.stats.storage.health(),
        jobs: s.stats.jobs.report(),
        maintenance: Some(s.stats.maintenance().snapshot()),
    }
}
