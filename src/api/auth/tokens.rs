//! The API's bearer tokens: parsed once from the token file
//! (`--http-token-file`) and `REGPOLL_HTTP_TOKENS`, kept as SHA-256 hashes,
//! and checked in constant time.
//!
//! A line is `<name> <secret> [<tenant>]`; `#` starts a comment. The secret
//! is `sha256:<64 hex digits>` (the token's hash, so the file reveals no
//! token) or the token itself, at least [`PLAIN_MIN`] characters.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::api::caller::Caller;
use crate::registry::Tenant;

/// Shortest token accepted as plain text: shorter ones can be guessed.
pub const PLAIN_MIN: usize = 16;

/// Bytes of randomness in a token made by `regpoll token new`: 256 bits.
const NEW_TOKEN_BYTES: usize = 32;

/// What a token made by regpoll starts with, so that secret scanners and
/// people recognise one in a paste.
pub const NEW_TOKEN_PREFIX: &str = "rp_";

/// Longest token name: it is a metric label and a log field.
const NAME_MAX: usize = 64;

/// Where tokens come from, to read at start and again on a reload.
#[derive(Clone, Default)]
pub struct TokenSource {
    /// `--http-token-file`.
    pub file: Option<PathBuf>,
    /// `REGPOLL_HTTP_TOKENS` (it holds secrets: never shown by `Debug`).
    pub env: Option<String>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("file", &self.file)
            .field("env", &self.env.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl TokenSource {
    /// Whether any source is given; without one the API needs no token.
    pub fn is_set(&self) -> bool {
        self.file.is_some() || self.env.is_some()
    }

    /// Reads and parses every source. A source that is given must hold at
    /// least one token: an empty file that silently opened the API would be
    /// worse than an error.
    pub fn load(&self) -> Result<Tokens, TokenError> {
        let mut tokens = Tokens::default();
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path).map_err(|e| TokenError {
                at: Place::File(path.clone(), 0, 0),
                message: format!(
                    "cannot read the token file: {e}; check the path given to --http-token-file (REGPOLL_HTTP_TOKEN_FILE) and that regpoll may read it"
                ),
            })?;
            let before = tokens.entries.len();
            tokens.add_lines(&text, |line, column| {
                Place::File(path.clone(), line, column)
            })?;
            if tokens.entries.len() == before {
                return Err(TokenError {
                    at: Place::File(path.clone(), 0, 0),
                    message: "the token file holds no token; add a line `<name> sha256:<hex> [<tenant>]` (`regpoll token new <name>` makes one), or leave --http-token-file out to serve without tokens".into(),
                });
            }
        }
        if let Some(text) = &self.env {
            let entries = text.replace(';', "\n");
            let before = tokens.entries.len();
            tokens.add_lines(&entries, Place::Env)?;
            if tokens.entries.len() == before {
                return Err(TokenError {
                    at: Place::Env(0, 0),
                    message: "REGPOLL_HTTP_TOKENS is set but holds no token; give `<name> sha256:<hex> [<tenant>]` entries separated by `;` or newlines, or unset it".into(),
                });
            }
        }
        Ok(tokens)
    }
}

/// The tokens the API accepts.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    hash: [u8; 32],
    caller: Caller,
}

impl fmt::Debug for Tokens {
    /// Names only: a hash of a short token could be brute-forced.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.caller.name))
            .finish()
    }
}

impl Tokens {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The holder of `presented`, if it is one of the tokens. The presented
    /// token is hashed and compared with every configured hash without an
    /// early exit, so the time taken says nothing about how close a guess
    /// came nor which entry matched.
    pub fn check(&self, presented: &str) -> Option<&Caller> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for e in &self.entries {
            if same(&e.hash, &hash) {
                found = Some(&e.caller);
            }
        }
        found
    }

    fn add_lines(
        &mut self,
        text: &str,
        place: impl Fn(usize, usize) -> Place,
    ) -> Result<(), TokenError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("");
            let fields = fields(line);
            if fields.is_empty() {
                continue;
            }
            let at = |column: usize| place(i + 1, column);
            let entry = parse_line(&fields).map_err(|(column, message)| TokenError {
                at: at(column),
                message,
            })?;
            if let Some(other) = self
                .entries
                .iter()
                .find(|e| e.caller.name == entry.caller.name)
            {
                return Err(TokenError {
                    at: at(fields[0].0),
                    message: format!(
                        "the token name `{}` is used twice; give every token its own name (logs and metrics tell tokens apart by it)",
                        other.caller.name
                    ),
                });
            }
            if let Some(other) = self.entries.iter().find(|e| e.hash == entry.hash) {
                return Err(TokenError {
                    at: at(fields[1].0),
                    message: format!(
                        "this is the same token as `{}`'s; make a new one with `regpoll token new {}`",
                        other.caller.name, entry.caller.name
                    ),
                });
            }
            self.entries.push(entry);
        }
        Ok(())
    }
}

/// Constant-time equality of two hashes.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The whitespace-separated fields of a line with their 1-based columns.
fn fields(line: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices().chain([(line.len(), ' ')]) {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                out.push((line[..s].chars().count() + 1, &line[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// One line's entry, or the column at fault and what is wrong. Messages
/// never repeat the secret.
fn parse_line(fields: &[(usize, &str)]) -> Result<Entry, (usize, String)> {
    const FORMAT: &str = "a line is `<name> <secret> [<tenant>]`";
    let (name_col, name) = fields[0];
    valid_name(name).map_err(|m| (name_col, m))?;
    let Some(&(secret_col, secret)) = fields.get(1) else {
        return Err((
            name_col + name.chars().count(),
            format!("the token `{name}` has no secret; {FORMAT}"),
        ));
    };
    let hash = parse_secret(secret).map_err(|m| (secret_col, m))?;
    let tenant = match fields.get(2) {
        Some(&(col, t)) => Some(Arc::from(Tenant::parse(t).map_err(|m| (col, m))?.as_str())),
        None => None,
    };
    if let Some(&(col, _)) = fields.get(3) {
        return Err((col, format!("unexpected text after the tenant; {FORMAT}")));
    }
    Ok(Entry {
        hash,
        caller: Caller {
            name: Arc::from(name),
            tenant,
        },
    })
}

/// A token name: 1-64 letters, digits, `_`, `.` or `-`.
fn valid_name(name: &str) -> Result<(), String> {
    let ok = (1..=NAME_MAX).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a token name; use 1-{NAME_MAX} letters, digits, `_`, `.` or `-`",
            name.chars().take(NAME_MAX).collect::<String>()
        ))
    }
}

fn parse_secret(secret: &str) -> Result<[u8; 32], String> {
    if let Some(hex) = secret.strip_prefix("sha256:") {
        return parse_hex(hex).ok_or_else(|| {
            "after `sha256:` come the token's SHA-256 as 64 hexadecimal digits; `regpoll token new <name>` prints such a line, or `printf %s TOKEN | sha256sum` computes it".to_string()
        });
    }
    if secret.chars().count() < PLAIN_MIN {
        return Err(format!(
            "a token written as it is must have at least {PLAIN_MIN} characters (short ones can be guessed); make one with `regpoll token new <name>`"
        ));
    }
    Ok(Sha256::digest(secret.as_bytes()).into())
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new random token and its line for the token file.
pub struct NewToken {
    pub token: String,
    pub line: String,
}

/// Makes a token from the operating system's random source: 32 bytes,
/// written URL-safe (base64url without padding) after `rp_`.
pub fn new_token(name: &str, tenant: Option<&str>) -> Result<NewToken, String> {
    valid_name(name)?;
    if let Some(t) = tenant {
        Tenant::parse(t)?;
    }
    let mut bytes = [0u8; NEW_TOKEN_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| format!("the operating system's random source failed: {e}"))?;
    let token = format!(
        "{NEW_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = Sha256::digest(token.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let line = match tenant {
        Some(t) => format!("{name} sha256:{hex} {t}"),
        None => format!("{name} sha256:{hex}"),
    };
    Ok(NewToken { token, line })
}

/// Where a token entry is: a file's line and column, or an entry of
/// `REGPOLL_HTTP_TOKENS` (line 0: the file or variable as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    File(PathBuf, usize, usize),
    Env(usize, usize),
}

/// A token source regpoll cannot use: where, what is wrong, how to fix it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{at}: {message}")]
pub struct TokenError {
    pub at: Place,
    pub message: String,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::File(path, 0, _) => write!(f, "{}", path.display()),
            Place::File(path, line, col) => write!(f, "{}:{line}:{col}", path.display()),
            Place::Env(0, _) => write!(f, "REGPOLL_HTTP_TOKENS"),
            Place::Env(entry, col) => write!(f, "REGPOLL_HTTP_TOKENS entry {entry}, column {col}"),
        }
    }
}

/// A warning when the token file can be read or changed by every user of
/// the machine (plain tokens would be theirs; a writable file lets them add
/// their own).
pub fn loose_permissions(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        (mode & 0o006 != 0).then(|| {
            format!(
                "{}: the token file is {} by every user of this machine (mode {:o}); `chmod o-rwx {}`",
                path.display(),
                if mode & 0o002 != 0 { "writable" } else { "readable" },
                mode & 0o777,
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests;
