//! The devices.yaml shape as serde sees it. Every field is optional here so that
//! validation (in `config`) can say precisely what is missing and where;
//! `deny_unknown_fields` turns typos into errors instead of silent defaults.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// The file's first pass: `defaults` in full, `devices` only checked to be
/// there and skipped over (see `config::parse`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub defaults: Option<Spanned<RawDevice>>,
    #[allow(dead_code)] // read only to require the key; the second pass takes the entries
    pub devices: IgnoredAny,
}

/// The file's second pass: hands each entry of `devices` to `each` as soon as
/// it is read, so only one raw device is alive at a time, and collects what
/// `each` makes of it. `each` also gets the names seen so far, to report
/// duplicates.
pub(super) struct DevicesOf<F> {
    pub each: F,
}

impl<'de, F, T> DeserializeSeed<'de> for DevicesOf<F>
where
    F: FnMut(Spanned<RawDevice>, &mut HashMap<String, u64>) -> Option<T>,
{
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Vec<T>, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de, F, T> Visitor<'de> for DevicesOf<F>
where
    F: FnMut(Spanned<RawDevice>, &mut HashMap<String, u64>) -> Option<T>,
{
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map with `devices` and optionally `defaults`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<T>, A::Error> {
        let mut each = self.each;
        let mut out = Vec::new();
        // The first pass has already refused unknown and missing keys.
        while let Some(key) = map.next_key::<String>()? {
            if key == "devices" {
                out = map.next_value_seed(EachDevice {
                    each: &mut each,
                    _out: std::marker::PhantomData,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

struct EachDevice<'f, F, T> {
    each: &'f mut F,
    _out: std::marker::PhantomData<T>,
}

impl<'de, F, T> DeserializeSeed<'de> for EachDevice<'_, F, T>
where
    F: FnMut(Spanned<RawDevice>, &mut HashMap<String, u64>) -> Option<T>,
{
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Vec<T>, D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de, F, T> Visitor<'de> for EachDevice<'_, F, T>
where
    F: FnMut(Spanned<RawDevice>, &mut HashMap<String, u64>) -> Option<T>,
{
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of devices")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Vec<T>, S::Error> {
        let mut seen = HashMap::new();
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(dev) = seq.next_element::<Spanned<RawDevice>>()? {
            if let Some(d) = (self.each)(dev, &mut seen) {
                out.push(d);
            }
        }
        Ok(out)
    }
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
