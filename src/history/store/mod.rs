//! Where history is stored: PostgreSQL by binary COPY ([`postgres`],
//! [`pgcopy`]) or SQLite by multi-row INSERT ([`sqlite`]).

pub mod pgcopy;
pub mod postgres;
pub mod sqlite;
