//! History: every reading, kept in PostgreSQL (TimescaleDB when present) or
//! SQLite. The [`writer`] batches poll reports from a bounded queue into
//! [`row::Row`]s and hands them to a [`store`], keeping what the database
//! does not take in memory and the disk [`spool`] (rows it refuses for good
//! go to the [`quarantine`]); the [`deadband`] filter leaves out the
//! readings of registers with a deadband that did not move; [`rollup`]
//! keeps the 1-minute and hourly rollups, [`retention`] bounds how long
//! each tier is kept, [`jobs`] watches TimescaleDB's background jobs,
//! [`maintenance`] records the runs of regpoll's own jobs, and [`query`]
//! reads history back.

pub mod deadband;
pub mod jobs;
pub mod maintenance;
mod pending;
pub mod quarantine;
pub mod query;
pub mod retention;
pub mod rollup;
pub mod row;
pub mod spool;
pub mod store;
pub mod writer;
