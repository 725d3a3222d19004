//! The scenarios' databases: each a fresh one on the server it is given,
//! so no run measures what an earlier one left behind.

use anyhow::{Context as _, bail};
use sqlx::{Connection as _, Executor as _};

/// A fresh database `regpoll_bench_<name>` next to the one `admin_url` names;
/// returns its URL.
pub async fn fresh_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("scenario name `{name}` must be letters, digits and _ (it names a database)");
    }
    let db = format!("regpoll_bench_{name}");
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("cannot connect to {}", regpoll::db::redact_url(admin_url)))?;
    // The name is ours (a fixed prefix and the scenario name checked above).
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .await?;
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await?;
    conn.close().await?;
    let mut url = url::Url::parse(admin_url).context("the database URL is not a URL")?;
    url.set_path(&db);
    Ok(url.to_string())
}
