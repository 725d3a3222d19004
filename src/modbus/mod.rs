//! Modbus TCP: planning read requests for a device ([`plan`]), turning words
//! into values ([`decode`]) and talking to endpoints ([`endpoint`]).

pub mod decode;
pub mod endpoint;
pub mod plan;
