//! Latest values: the newest reading of every register, in memory (always;
//! the HTTP API reads it) and in Redis (when configured), in the JSON shape
//! of the Redis contract ([`contract`]).

pub mod contract;
pub mod memory;
pub mod notice;
pub mod redis;
