//! devices.yaml: the schema users write, parsed with serde-saphyr so that every
//! problem can point at a file, line and column. Parsing produces the registry's
//! domain types (`registry::Device`); nothing downstream sees raw YAML.
//!
//! Validation (`validate/`) collects every problem in the file instead of
//! stopping at the first, so a field engineer fixes a file in one pass.

pub mod lint;
mod node;
mod raw;
mod validate;
pub(crate) use raw::describe_parse_error;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde_saphyr::Spanned;

use crate::registry::Device;
use node::{Node, keep_written_text};
use raw::{RawDevice, RawFile};
use validate::Validator;

pub use crate::registry::{DEFAULT_EVERY, DEFAULT_PORT, DEFAULT_TIMEOUT, DEFAULT_UNIT_ID};

/// One problem in a devices.yaml, with where it is and what would be valid.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub device: Option<String>,
    pub register: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(d) = &self.device {
            write!(f, "device `{d}`: ")?;
        }
        if let Some(r) = &self.register {
            write!(f, "register `{r}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one file. Displayed one per line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Reads and validates a devices.yaml file.
pub fn load(path: &Path) -> Result<Vec<Device>, ConfigErrors> {
    let file = path.display().to_string();
    let error = |line, column, message| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line,
            column,
            device: None,
            register: None,
            message,
        }])
    };
    let bytes =
        std::fs::read(path).map_err(|e| error(0, 0, format!("cannot read the file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let (line, column, byte) = first_bad_byte(e.as_bytes(), e.utf8_error().valid_up_to());
        error(
            line,
            column,
            format!(
                "the file is not UTF-8: byte 0x{byte:02X} here is not valid UTF-8 (a file saved as Latin-1 or Windows-1252?); save it as UTF-8"
            ),
        )
    })?;
    parse(&text, &file)
}

/// The error under serde-saphyr's wrappers (source snippet, alias site).
fn innermost(mut e: &serde_saphyr::Error) -> &serde_saphyr::Error {
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = e
    {
        e = error;
    }
    e
}

/// The 1-based line and column (in characters) of the byte at `at`, and
/// that byte: the text before it is valid UTF-8.
fn first_bad_byte(bytes: &[u8], at: usize) -> (u64, u64, u8) {
    let before = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line as u64, column as u64, bytes[at])
}

/// serde-saphyr's default budget (250,000 nodes, 1,000,000 parser events) is
/// there against alias bombs, but it also refuses honest files: 10,000
/// devices × 10 registers is about 450,000 nodes, and a register map shared
/// through an anchor (`registers: *meter`) expands to far more nodes than
/// the text has bytes. The caps on nodes, events and replayed alias events
/// grow with the text instead, 64 nodes per byte, so the work stays linear
/// in the file's size. Scalar text grows the same way, 1 KiB per byte
/// (16 bytes per node): 20,000 devices sharing one 100-register map are
/// 1.3 MB of text that expands to 120 MB of scalars, past the default cap of
/// 64 MiB. The alias-to-anchor ratio check is off: one map shared by
/// thousands of devices is the normal case here, and the linear caps already
/// bound what aliases can expand to.
const NODES_PER_BYTE: usize = 64;
const SCALAR_BYTES_PER_NODE: usize = 16;

fn yaml_options(text: &str) -> serde_saphyr::Options {
    let defaults = serde_saphyr::Budget::default();
    let nodes = defaults
        .max_nodes
        .max(text.len().saturating_mul(NODES_PER_BYTE));
    let scalar_bytes = defaults
        .max_total_scalar_bytes
        .max(nodes.saturating_mul(SCALAR_BYTES_PER_NODE));
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_nodes: nodes,
            max_events: defaults.max_events.max(nodes.saturating_mul(2)),
            max_total_scalar_bytes: scalar_bytes,
            max_recorded_anchor_bytes: defaults.max_recorded_anchor_bytes.max(scalar_bytes),
            enforce_alias_anchor_ratio: false,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: defaults.max_events.max(nodes.saturating_mul(2)),
        },
        // Keys written twice reach `node::entries`, which names the key and
        // both places; serde-saphyr's own error names neither place.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        // `scale: .nan` reaches validation, which says why it is refused.
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
    }
}

/// Parses and validates devices.yaml text; `file` is only used in messages.
///
/// Two passes over the text keep memory proportional to the result, not to
/// the raw YAML: a raw register with the location of every field is about
/// 1 KB, so holding 10,000 raw devices × 10 registers took 180 MB at the
/// peak (and glibc kept it). The first pass reads only `defaults` (skipping
/// `devices` without building anything), because every device is checked
/// against them and the two keys may come in either order; the second
/// streams `devices`, turning each raw entry into a `Device` and dropping it.
pub fn parse(text: &str, file: &str) -> Result<Vec<Device>, ConfigErrors> {
    let parse_error = |e: serde_saphyr::Error| {
        let loc = e.location();
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line: loc.map_or(0, |l| l.line()),
            column: loc.map_or(0, |l| l.column()),
            device: None,
            register: None,
            message: match innermost(&e) {
                serde_saphyr::Error::Budget { breach, .. } => format!(
                    "the file expands, through its anchors and aliases, past regpoll's limit of {NODES_PER_BYTE} YAML nodes and {} bytes of text per byte of the file ({breach:?}); share fewer or smaller maps through anchors, or split the fleet into several files",
                    NODES_PER_BYTE * SCALAR_BYTES_PER_NODE
                ),
                _ => raw::describe_parse_error(&e),
            },
        }])
    };
    let mut head: RawFile =
        serde_saphyr::from_str_with_options(text, yaml_options(text)).map_err(parse_error)?;
    if let Some(d) = &mut head.defaults {
        keep_written_text(d, text);
    }
    let mut v = Validator::new(file);
    let defaults = v.defaults(head.defaults);
    let devices =
        serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(text), |de| {
            serde::de::DeserializeSeed::deserialize(
                raw::DevicesOf {
                    each: |mut dev: Spanned<Node>, seen: &mut HashMap<String, u64>| {
                        keep_written_text(&mut dev, text);
                        v.device(
                            RawDevice::read(&dev, "device"),
                            &defaults,
                            dev.referenced,
                            seen,
                        )
                    },
                },
                de,
            )
        })
        .map_err(parse_error)?;
    v.finish(devices)
}

#[cfg(test)]
mod tests;
