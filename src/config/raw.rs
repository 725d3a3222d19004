//! The devices.yaml shape as serde sees it. Every field is optional here so that
//! validation (in `config`) can say precisely what is missing and where;
//! `deny_unknown_fields` turns typos into errors instead of silent defaults.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub defaults: Option<Spanned<RawDevice>>,
    pub devices: Vec<Spanned<RawDevice>>,
}

/// A device entry, and also the `defaults` block (which may set every field but
/// `name` and `registers`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    pub name: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub unit_id: Option<Spanned<i64>>,
    pub active: Option<Spanned<bool>>,
    pub every: Option<Spanned<String>>,
    pub cron: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
    pub align: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
    pub pause_between_requests: Option<Spanned<String>>,
    pub max_registers_per_request: Option<Spanned<i64>>,
    pub max_bits_per_request: Option<Spanned<i64>>,
    pub max_gap: Option<Spanned<i64>>,
    pub tags: Option<Spanned<BTreeMap<String, String>>>,
    pub registers: Option<Spanned<Vec<Spanned<RawRegister>>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegister {
    pub name: Option<Spanned<String>>,
    pub kind: Option<Spanned<String>>,
    pub address: Option<Spanned<i64>>,
    pub r#type: Option<Spanned<String>>,
    pub order: Option<Spanned<String>>,
    pub scale: Option<Spanned<f64>>,
    pub offset: Option<Spanned<f64>>,
    pub unit: Option<Spanned<String>>,
    pub valid: Option<Spanned<RawValid>>,
    pub every: Option<Spanned<String>>,
    pub cron: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
    pub bit: Option<Spanned<i64>>,
    pub length: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawValid {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// serde-saphyr's message without its source snippet (we print our own
/// `file:line:column:` prefix).
pub(crate) fn describe_parse_error(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    // The message may still carry a trailing " at line X column Y"; our prefix says that.
    let text = match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    text.trim().to_string()
}
