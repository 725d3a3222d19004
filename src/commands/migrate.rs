//! `regpoll migrate`: create or upgrade the schema (opening the database
//! does it), then exit.

use super::open_db;
use crate::cli::DbArgs;

pub(super) async fn migrate(args: &DbArgs) -> anyhow::Result<()> {
    let db = open_db(args).await?;
    println!("{} schema is up to date", db.kind());
    db.close().await;
    Ok(())
}
