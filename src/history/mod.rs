//! History: every reading, kept in PostgreSQL (TimescaleDB when present) or
//! SQLite. The [`writer`] batches poll reports from a bounded queue into
//! [`row::Row`]s and hands them to a [`store`], keeping what the database
//! does not take in memory and the disk [`spool`] (rows it refuses for good
//! go to the [`quarantine`]); [`retention`] bounds how
//! long readings are kept, [`jobs`] watches TimescaleDB's background jobs,
//! [`health`] what the tables cost on disk, and [`query`] reads them back.

pub mod health;
pub mod jobs;
mod pending;
pub mod quarantine;
pub mod query;
pub mod retention;
pub mod row;
pub mod spool;
pub mod store;
pub mod writer;
