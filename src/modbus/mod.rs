//! Modbus TCP: planning read requests for a device ([`plan`]), turning words
//! into values ([`decode`]), the read requests' frames ([`tcp`]) and the
//! connections to endpoints ([`endpoint`]).

pub mod decode;
pub mod endpoint;
pub mod plan;
pub mod stats;
pub mod tcp;
