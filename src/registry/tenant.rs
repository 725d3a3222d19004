//! A tenant: the customer or site a device belongs to, when one regpoll
//! serves several. Its name goes into Redis keys (so that ACL key patterns
//! can isolate a tenant) and names database roles, hence the narrow rule.

use std::fmt;
use std::sync::Arc;

/// Longest tenant name: PostgreSQL's identifier limit (63 bytes), since a
/// tenant names its database role.
pub const TENANT_MAX: usize = 63;

/// What a tenant name may be, for error messages.
pub const TENANT_RULE: &str =
    "1-63 characters of a-z, 0-9, `_` and `-`, starting with a letter or digit, e.g. acme";

/// A valid tenant name (see [`TENANT_RULE`]). Shared: every device of a
/// tenant holds the same text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(Arc<str>);

impl Tenant {
    /// The name checked against [`TENANT_RULE`]; the error says what is
    /// wrong with it.
    pub fn parse(name: &str) -> Result<Tenant, String> {
        let Some(first) = name.chars().next() else {
            return Err(format!("tenant is empty; valid: {TENANT_RULE}"));
        };
        if name.len() > TENANT_MAX {
            return Err(format!(
                "tenant is {} characters long; valid: {TENANT_RULE}",
                name.chars().count()
            ));
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(format!(
                "tenant `{name}` starts with `{first}`; valid: {TENANT_RULE}"
            ));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')))
        {
            return Err(format!(
                "tenant `{name}` contains `{c}`; valid: {TENANT_RULE}"
            ));
        }
        Ok(Tenant(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Tenant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_follow_the_key_and_role_rule() {
        for good in ["acme", "a", "0site", "site_b-2", &"a".repeat(63)] {
            assert_eq!(Tenant::parse(good).unwrap().as_str(), good);
        }
        for (bad, says) in [
            ("", "empty"),
            ("Acme", "starts with `A`"),
            ("-acme", "starts with `-`"),
            ("_acme", "starts with `_`"),
            ("ac me", "contains ` `"),
            ("acme:latest", "contains `:`"),
            ("acme*", "contains `*`"),
            ("acmé", "contains `é`"),
            ("a\nb", "contains `\n`"),
        ] {
            let e = Tenant::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
            assert!(e.contains("valid: 1-63 characters"), "{e}");
        }
        let long = "a".repeat(64);
        assert!(
            Tenant::parse(&long)
                .unwrap_err()
                .contains("64 characters long")
        );
        // Many multi-byte characters: refused by length, never indexed into.
        let wide = "é".repeat(40);
        assert!(Tenant::parse(&wide).is_err());
    }
}
