//! A YAML node as written, with its place in the file. Reading devices.yaml
//! into typed fields directly (`port: i64`) stops serde at the first value of
//! the wrong type, with a message that names neither the field nor what would
//! be valid (`invalid i64`). Reading a device into `Node`s first never fails
//! on a value, so `raw` can check every field itself, name it, and go on to
//! the next one: a file with seven mistakes reports seven.

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Null,
    Bool(bool),
    /// Wide enough for every integer YAML can spell in 64 bits, signed or not.
    Int(i128),
    Float(f64),
    Str(String),
    /// A plain scalar YAML reads as a boolean or a number (`on`, `007`,
    /// `1.50`), with the text it was written as: a field that holds text
    /// (a name, a tag) takes the text, not `true`, `7` or `1.5`. See
    /// [`keep_written_text`].
    Written(String, Box<Node>),
    Seq(Vec<Spanned<Node>>),
    /// Entries in file order, duplicates kept, so that checking can report
    /// a key written twice with both places (see `config::yaml_options`).
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl Node {
    /// What was found, for messages: "the string `five-oh-two`", "a list".
    pub(super) fn describe(&self) -> String {
        match self {
            Node::Null => "nothing (an empty value)".into(),
            Node::Written(_, n) => n.describe(),
            Node::Bool(b) => format!("the boolean `{b}`"),
            Node::Int(i) => format!("the integer `{i}`"),
            Node::Float(f) => format!("the number `{f}`"),
            Node::Str(s) => format!("the string `{}`", shorten(s)),
            Node::Seq(_) => "a list".into(),
            Node::Map(_) => "a map".into(),
        }
    }

    /// A scalar's text, for fields that hold text (`host`, `every`): `every: 5`
    /// is read as `5`, so that the duration check can say it lacks a unit.
    pub(super) fn text(&self) -> Option<String> {
        match self {
            Node::Str(s) | Node::Written(s, _) => Some(s.clone()),
            Node::Int(i) => Some(i.to_string()),
            Node::Float(f) => Some(f.to_string()),
            Node::Bool(b) => Some(b.to_string()),
            Node::Null | Node::Seq(_) | Node::Map(_) => None,
        }
    }

    /// An integer; a quoted one (`"502"`) too, as before this type existed.
    pub(super) fn int(&self) -> Option<i64> {
        match self {
            Node::Int(i) => i64::try_from(*i).ok(),
            Node::Str(s) => s.trim().parse().ok(),
            Node::Written(_, n) => n.int(),
            _ => None,
        }
    }

    /// A number, integer or not; a quoted one too.
    pub(super) fn float(&self) -> Option<f64> {
        match self {
            Node::Int(i) => Some(*i as f64),
            Node::Float(f) => Some(*f),
            Node::Str(s) => s.trim().parse().ok(),
            Node::Written(_, n) => n.float(),
            _ => None,
        }
    }

    pub(super) fn boolean(&self) -> Option<bool> {
        match self {
            Node::Bool(b) => Some(*b),
            Node::Written(_, n) => n.boolean(),
            _ => None,
        }
    }
}

/// Gives every plain scalar that YAML read as a boolean or a number the
/// text it was written as in `source` (from its span), so that `name: on`
/// stays `on` and `site: 007` stays `007`, as when these fields were read
/// straight into strings. A scalar met through an alias is read where its
/// anchor defined it.
pub(super) fn keep_written_text(node: &mut Spanned<Node>, source: &str) {
    match &mut node.value {
        Node::Bool(_) | Node::Int(_) | Node::Float(_) => {
            let span = node.defined.span();
            let written = span
                .byte_offset()
                .zip(span.byte_len())
                .and_then(|(at, len)| {
                    let at = usize::try_from(at).ok()?;
                    source.get(at..at.checked_add(usize::try_from(len).ok()?)?)
                });
            if let Some(text) = written.map(str::trim).filter(|t| !t.is_empty()) {
                let value = std::mem::replace(&mut node.value, Node::Null);
                node.value = Node::Written(text.to_string(), Box::new(value));
            }
        }
        Node::Seq(items) => items.iter_mut().for_each(|n| keep_written_text(n, source)),
        Node::Map(entries) => entries
            .iter_mut()
            .for_each(|(_, n)| keep_written_text(n, source)),
        Node::Null | Node::Str(_) | Node::Written(..) => {}
    }
}

/// Long values are cut in messages so one line stays one line.
fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Node, D::Error> {
        de.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Node, D::Error> {
        Node::deserialize(de)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Node, E> {
        // Beyond i128 only as a float: still "not a valid port", named as such.
        Ok(i128::try_from(v).map_or(Node::Float(v as f64), Node::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Node, S::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(n) = seq.next_element::<Spanned<Node>>()? {
            out.push(n);
        }
        Ok(Node::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some(k) = map.next_key::<Spanned<String>>()? {
            out.push((k, map.next_value::<Spanned<Node>>()?));
        }
        Ok(Node::Map(out))
    }
}

/// Problems found while reading nodes into fields: where, and what to say.
pub(super) type Problems = Vec<(Location, String)>;

/// The entries of a map node, with every key written twice reported (the
/// later one ignored) and every key not in `known` reported as unknown.
/// `what` names the map in messages ("device", "register").
pub(super) fn entries<'n>(
    map: &'n [(Spanned<String>, Spanned<Node>)],
    known: &[&str],
    what: &str,
    problems: &mut Problems,
) -> Vec<(&'n str, &'n Spanned<Node>)> {
    let mut out: Vec<(&str, &Spanned<Node>)> = Vec::with_capacity(map.len());
    for (i, (k, v)) in map.iter().enumerate() {
        if let Some((first, _)) = map[..i].iter().find(|(f, _)| f.value == k.value) {
            problems.push((
                k.referenced,
                format!(
                    "`{}` is set twice in one {what}, here and at line {}, column {}; keep one",
                    k.value,
                    first.referenced.line(),
                    first.referenced.column()
                ),
            ));
        } else if known.contains(&k.value.as_str()) {
            out.push((k.value.as_str(), v));
        } else {
            problems.push((
                k.referenced,
                format!(
                    "unknown {what} field `{}`; valid fields: {}",
                    shorten(&k.value),
                    known.join(", ")
                ),
            ));
        }
    }
    out
}

/// One field read as `T`, or a problem naming the field, what was found and
/// what would be valid. An empty value (`port:`) is the same as leaving the
/// field out.
pub(super) fn field<T>(
    name: &str,
    node: &Spanned<Node>,
    valid: &str,
    read: impl FnOnce(&Node) -> Option<T>,
    problems: &mut Problems,
) -> Option<Spanned<T>> {
    if node.value == Node::Null {
        return None;
    }
    match read(&node.value) {
        Some(v) => Some(Spanned::new(v, node.referenced, node.defined)),
        None => {
            problems.push((
                node.referenced,
                format!("`{name}` is {}; valid: {valid}", node.value.describe()),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(yaml: &str) -> Node {
        serde_saphyr::from_str::<Node>(yaml).unwrap()
    }

    #[test]
    fn every_kind_of_value_is_read_as_written() {
        assert_eq!(node("5"), Node::Int(5));
        assert_eq!(node("-5"), Node::Int(-5));
        assert_eq!(node("0x1F6"), Node::Int(502));
        assert_eq!(node("1.5"), Node::Float(1.5));
        assert_eq!(node("true"), Node::Bool(true));
        assert_eq!(node("x"), Node::Str("x".into()));
        assert_eq!(node("\"502\""), Node::Str("502".into()));
        assert_eq!(node("~"), Node::Null);
        assert!(matches!(node("[1, a]"), Node::Seq(v) if v.len() == 2));
        assert!(matches!(node("{a: 1}"), Node::Map(v) if v.len() == 1 && v[0].0.value == "a"));
    }

    #[test]
    fn a_quoted_number_is_still_a_number_but_a_word_is_not() {
        assert_eq!(Node::Str(" 502".into()).int(), Some(502));
        assert_eq!(Node::Str("five-oh-two".into()).int(), None);
        assert_eq!(Node::Float(1.5).int(), None);
        assert_eq!(Node::Int(2).float(), Some(2.0));
        assert_eq!(Node::Seq(vec![]).text(), None);
    }

    #[test]
    fn names_and_tags_keep_the_text_yaml_reads_as_booleans_or_numbers() {
        let source = "a: on\nb: 007\nc: 1.50\nd: 0x1F6\ne: off\nf: 12\n";
        let mut n: Spanned<Node> = serde_saphyr::from_str(source).unwrap();
        keep_written_text(&mut n, source);
        let Node::Map(entries) = &n.value else {
            panic!("{n:?}")
        };
        let texts: Vec<String> = entries
            .iter()
            .map(|(_, v)| v.value.text().unwrap())
            .collect();
        assert_eq!(texts, ["on", "007", "1.50", "0x1F6", "off", "12"]);
        // ... and read as what YAML says where a field wants that.
        assert_eq!(entries[0].1.value.boolean(), Some(true));
        assert_eq!(entries[3].1.value.int(), Some(502));
        assert_eq!(entries[2].1.value.float(), Some(1.5));
        assert_eq!(entries[4].1.value.describe(), "the boolean `false`");
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let d = Node::Str("x".repeat(500)).describe();
        assert!(d.len() < 80 && d.ends_with("…`"), "{d}");
    }
}
