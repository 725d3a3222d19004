//! What each subcommand does, one file each; `output` prints what they find.
//! Errors are printed with their whole cause chain; the exit code is 0 on
//! success, 1 on failure and 2 for an invalid devices.yaml.

use std::path::Path;
use std::process::ExitCode;

mod check;
mod demo;
mod devices;
mod migrate;
mod output;
mod query;
mod read;
mod run;
pub mod scan;
mod simulate;
mod status;
mod token;

use crate::cli::{Command, DbArgs, DevicesCommand, TokenCommand};
use crate::config::{self, ConfigErrors};
use crate::db::Db;
use crate::registry::Device;

/// The devices.yaml shipped with regpoll, used by `regpoll demo`.
pub const BUNDLED_DEVICES: &str = include_str!("../../devices.yaml");

pub async fn dispatch(command: Command) -> ExitCode {
    let result = match command {
        Command::Run(args) => run::run(*args).await,
        Command::Simulate { file, faults } => simulate::simulate(&file, faults.as_deref()).await,
        Command::Demo(args) => demo::demo(args).await,
        Command::Check { file, probe } => check::check(&file, probe).await,
        Command::Read(args) => read::read(args).await,
        Command::Scan(args) => scan::scan(args).await,
        Command::Devices(DevicesCommand::Sync { file, db }) => devices::sync(&file, &db).await,
        Command::Devices(DevicesCommand::List(db)) => devices::list(&db).await,
        Command::Devices(DevicesCommand::Show { name, db }) => devices::show(&name, &db).await,
        Command::Query(q) => query::query(q).await,
        Command::Migrate(db) => migrate::migrate(&db).await,
        Command::Status(args) => status::status(&args).await,
        Command::Token(TokenCommand::New { name, tenant }) => token::new(&name, tenant.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ConfigErrors>().is_some() => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {}", crate::db::error_text(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn load_file(path: &Path) -> anyhow::Result<Vec<Device>> {
    Ok(config::load(path)?)
}

async fn open_db(db: &DbArgs) -> anyhow::Result<Db> {
    Db::open_with(
        db.database_url().as_deref(),
        &db.database_tls(),
        &db.sqlite_path,
    )
    .await
}
