//! Where history is stored: PostgreSQL by binary COPY ([`postgres`], with
//! its encoder in `pgcopy`) or SQLite by multi-row INSERT ([`sqlite`]).

mod pgcopy;
pub mod postgres;
pub mod sqlite;

use crate::history::row::Row;

/// The statement PostgreSQL history is written with: a binary COPY into
/// `register_readings` of a stream as [`copy_bytes`] makes it.
pub use pgcopy::COPY_STATEMENT;

/// The exact binary COPY stream (PGCOPY) the PostgreSQL store sends for
/// `rows` with [`COPY_STATEMENT`], header and trailer included. It is for
/// tools that must send what regpoll sends, such as the benchmark's floor
/// and its `psql` baseline; the store itself sends it in pieces.
pub fn copy_bytes(rows: &[Row]) -> Vec<u8> {
    pgcopy::encode(rows)
}
