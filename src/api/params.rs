//! Query strings, parsed strictly at the edge: every name and value must be
//! valid UTF-8 once percent-decoded and free of control characters (a NUL
//! would otherwise reach PostgreSQL, which refuses it, and turn a client's
//! mistake into a 503 and a log line per request); every name must be known
//! and given once (`?device=a&device=b` is ambiguous, never "the last one
//! wins"). Each failure is a 400 that names the parameter.

use std::collections::HashMap;

use percent_encoding::percent_decode;

use super::error::ApiError;

/// The parameters of one request, by name.
#[derive(Debug, Default)]
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    /// Parses `query` (the part after `?`, if any), accepting only `known` names.
    pub(crate) fn parse(query: Option<&str>, known: &[&str]) -> Result<Params, ApiError> {
        let mut params = HashMap::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(raw_name)
                .map_err(|problem| ApiError::bad_request(format!("a parameter name {problem}")))?;
            if !known.contains(&name.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{}`; known: {}",
                    name.escape_debug(),
                    known.join(", ")
                )));
            }
            let value = decode(raw_value)
                .map_err(|problem| ApiError::bad_request(format!("`{name}` {problem}")))?;
            if params.contains_key(&name) {
                return Err(ApiError::bad_request(format!(
                    "`{name}` is given more than once; give each parameter once"
                )));
            }
            params.insert(name, value);
        }
        Ok(Params(params))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The parameter when given and not empty.
    pub(crate) fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }
}

/// `+` as a space, then `%XX` escapes; refuses what no name or time can hold.
fn decode(raw: &str) -> Result<String, String> {
    let spaced = raw.replace('+', " ");
    let text = percent_decode(spaced.as_bytes())
        .decode_utf8()
        .map_err(|_| "is not valid UTF-8 once percent-decoded; encode text as UTF-8".to_string())?;
    check_text(&text)?;
    Ok(text.into_owned())
}

/// Refuses control characters (NUL, newlines, escapes): no device,
/// register or time contains one, and a NUL cannot be sent to PostgreSQL.
pub(crate) fn check_text(text: &str) -> Result<(), String> {
    match text.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "contains the control character {}; names and times never do",
            c.escape_unicode()
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["device", "from"];

    fn message(query: &str) -> String {
        Params::parse(Some(query), KNOWN).unwrap_err().1
    }

    #[test]
    fn names_and_values_are_percent_decoded() {
        let p = Params::parse(Some("device=boiler%201&from=now-1h"), KNOWN).unwrap();
        assert_eq!(p.get("device"), Some("boiler 1"));
        assert_eq!(p.get("from"), Some("now-1h"));
        let p = Params::parse(Some("device=a+b&from="), KNOWN).unwrap();
        assert_eq!(p.get("device"), Some("a b"));
        assert_eq!(p.non_empty("from"), None);
        let p = Params::parse(Some("device=%C3%A9t%C3%A9&"), KNOWN).unwrap();
        assert_eq!(p.get("device"), Some("été"));
        assert!(Params::parse(None, KNOWN).unwrap().get("device").is_none());
    }

    #[test]
    fn a_nul_byte_or_control_character_is_refused_by_name() {
        let m = message("device=ab%00cd");
        assert!(m.contains("`device`") && m.contains("\\u{0}"), "{m}");
        let m = message("from=now%0A");
        assert!(
            m.contains("`from`") && m.contains("control character"),
            "{m}"
        );
    }

    #[test]
    fn invalid_utf8_is_refused_by_name() {
        let m = message("device=%FF%FE");
        assert!(m.contains("`device`") && m.contains("UTF-8"), "{m}");
        let m = message("%C3=1");
        assert!(m.contains("parameter name") && m.contains("UTF-8"), "{m}");
    }

    #[test]
    fn a_repeated_parameter_is_refused_by_name() {
        let m = message("device=a&device=b");
        assert!(m.contains("`device` is given more than once"), "{m}");
    }

    #[test]
    fn unknown_names_are_listed_with_the_known_ones() {
        let m = message("device=a&colour=red");
        assert!(
            m.contains("unknown parameter `colour`") && m.contains("device, from"),
            "{m}"
        );
        let m = message("dev%00ice=a");
        assert!(m.contains("parameter name") && m.contains("control"), "{m}");
    }
}
