//! `regpoll query`: stored history, the latest value of every register of a
//! device or a time range of one register.

use chrono::{DateTime, Utc};

use super::open_db;
use super::output::{json_cell, number, print_rows};
use crate::cli::{DbArgs, FormatArgs, QueryCommand};
use crate::history::query;
use crate::reading::rfc3339;

pub(super) async fn query(command: QueryCommand) -> anyhow::Result<()> {
    match command {
        QueryCommand::Latest { device, format, db } => latest(&device, format, &db).await,
        QueryCommand::Range {
            device,
            register,
            since,
            until,
            bucket,
            limit,
            format,
            db,
        } => {
            let now = Utc::now();
            let q = query::RangeQuery {
                device,
                register: Some(register),
                from: instant("since", &since, now)?,
                to: instant("until", &until, now)?,
                bucket,
                limit,
            };
            range(&q, format, &db).await
        }
    }
}

async fn latest(device: &str, format: FormatArgs, db: &DbArgs) -> anyhow::Result<()> {
    let db = open_db(db).await?;
    let rows = query::latest(&db, device).await;
    db.close().await;
    let rows = rows?;
    print_rows(
        &rows,
        format,
        &["REGISTER", "VALUE", "UNIT", "QUALITY", "TS", "DETAIL"],
        |r| {
            vec![
                r.register.clone(),
                json_cell(&r.value),
                r.unit.clone().unwrap_or_default(),
                r.quality.clone().unwrap_or_else(|| "—".into()),
                r.ts.map(rfc3339).unwrap_or_else(|| "never".into()),
                r.detail.clone().unwrap_or_default(),
            ]
        },
    )
}

/// `--since 1h` means an hour ago; an RFC 3339 time is taken as is.
fn instant(flag: &str, text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let relative = query::parse_lookback(text).is_ok();
    let text = if relative {
        format!("now-{text}")
    } else {
        text.to_string()
    };
    query::parse_instant(&text, now).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

async fn range(q: &query::RangeQuery, format: FormatArgs, db: &DbArgs) -> anyhow::Result<()> {
    query::validate(q)?;
    let db = open_db(db).await?;
    let rows = query::range(&db, q).await;
    db.close().await;
    match rows? {
        query::Rows::Raw(rows) => {
            print_rows(&rows, format, &["TS", "VALUE", "QUALITY", "DETAIL"], |r| {
                vec![
                    rfc3339(r.ts),
                    r.value_text
                        .clone()
                        .or(r.value.map(number))
                        .unwrap_or_default(),
                    r.quality.clone(),
                    r.detail.clone().unwrap_or_default(),
                ]
            })
        }
        query::Rows::Buckets(rows) => print_rows(
            &rows,
            format,
            &["BUCKET", "AVG", "MIN", "MAX", "COUNT"],
            |r| {
                vec![
                    rfc3339(r.bucket),
                    number(r.avg),
                    number(r.min),
                    number(r.max),
                    r.count.to_string(),
                ]
            },
        ),
    }
}
