use super::*;

const TOKEN: &str = "correct-horse-battery-staple";

fn hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file(text: &str) -> (tempfile::TempDir, TokenSource) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, text).unwrap();
    (
        dir,
        TokenSource {
            file: Some(path),
            env: None,
        },
    )
}

fn env(text: &str) -> TokenSource {
    TokenSource {
        file: None,
        env: Some(text.to_string()),
    }
}

/// The error of a file holding `text`, with the temporary path cut off.
fn file_error(text: &str) -> String {
    let (dir, source) = file(text);
    let e = source.load().unwrap_err().to_string();
    let prefix = dir.path().join("tokens").display().to_string();
    e.strip_prefix(&prefix).unwrap_or(&e).to_string()
}

#[test]
fn hashed_and_plain_secrets_name_their_caller_and_tenant() {
    let (_dir, source) = file(&format!(
        "# operators\nadmin sha256:{}\n\n  acme-ui {TOKEN}   acme  # the customer's page\n",
        hex("rp_admin-token-0123456789")
    ));
    let tokens = source.load().unwrap();
    assert_eq!(tokens.len(), 2);
    let admin = tokens.check("rp_admin-token-0123456789").unwrap();
    assert_eq!((&*admin.name, admin.tenant.as_deref()), ("admin", None));
    let acme = tokens.check(TOKEN).unwrap();
    assert_eq!(
        (&*acme.name, acme.tenant.as_deref()),
        ("acme-ui", Some("acme"))
    );
    assert!(tokens.check("correct-horse-battery-stapl").is_none());
    assert!(tokens.check("").is_none());
    assert!(
        tokens.check(&hex(TOKEN)).is_none(),
        "the hash is not the token"
    );
}

#[test]
fn the_environment_takes_entries_separated_by_semicolons_or_newlines() {
    let tokens = env(&format!(
        "a sha256:{};b {TOKEN} t1\nc sha256:{} ",
        hex("token-number-one-aaaa"),
        hex("token-number-three-cc")
    ))
    .load()
    .unwrap();
    assert_eq!(tokens.len(), 3);
    assert_eq!(&*tokens.check(TOKEN).unwrap().name, "b");
    assert_eq!(&*tokens.check("token-number-three-cc").unwrap().name, "c");
}

#[test]
fn file_and_environment_add_up_and_share_the_names() {
    let (_dir, mut source) = file(&format!("a {TOKEN}\n"));
    source.env = Some("b sha256:".to_string() + &hex("another-long-token-x"));
    assert_eq!(source.load().unwrap().len(), 2);
    source.env = Some(format!("a sha256:{}", hex("another-long-token-x")));
    let e = source.load().unwrap_err().to_string();
    assert!(
        e.starts_with("REGPOLL_HTTP_TOKENS entry 1, column 1:"),
        "{e}"
    );
    assert!(e.contains("`a` is used twice"), "{e}");
}

#[test]
fn mistakes_are_named_with_line_and_column_and_how_to_fix_them() {
    let cases = [
        (format!("a {TOKEN}\na {TOKEN}x\n"), ":2:1:", "used twice"),
        (
            format!("a {TOKEN}\n  b  {TOKEN}\n"),
            ":2:6:",
            "same token as `a`'s",
        ),
        (
            "x sha256:abc\n".to_string(),
            ":1:3:",
            "64 hexadecimal digits",
        ),
        (
            format!("x sha256:{}\n", "g".repeat(64)),
            ":1:3:",
            "64 hexadecimal digits",
        ),
        (
            "x short-token\n".to_string(),
            ":1:3:",
            "at least 16 characters",
        ),
        (
            format!("x {TOKEN} Acme\n"),
            ":1:32:",
            "valid: 1-63 characters",
        ),
        (
            format!("x {TOKEN} -acme\n"),
            ":1:32:",
            "valid: 1-63 characters",
        ),
        (
            format!("x {TOKEN} {}\n", "a".repeat(64)),
            ":1:32:",
            "valid: 1-63 characters",
        ),
        (
            format!("x {TOKEN} acme extra\n"),
            ":1:37:",
            "after the tenant",
        ),
        ("lonely\n".to_string(), ":1:7:", "has no secret"),
        (format!("bad/name {TOKEN}\n"), ":1:1:", "not a token name"),
        (format!("é {TOKEN}\n"), ":1:1:", "not a token name"),
        (
            "# nothing but comments\n\n".to_string(),
            ": the token file holds no token",
            "regpoll token new",
        ),
    ];
    for (text, place, what) in cases {
        let e = file_error(&text);
        assert!(e.starts_with(place), "{text:?}: {e}");
        assert!(e.contains(what), "{text:?}: {e}");
    }
}

#[test]
fn errors_never_repeat_a_secret() {
    for text in [
        "x tooShortSecret\n".to_string(),
        format!("x {TOKEN}\ny {TOKEN}\n"),
        format!("x {TOKEN} NOT_A_TENANT\n"),
        format!("x {TOKEN} acme {TOKEN}\n"),
    ] {
        let e = file_error(&text);
        assert!(!e.contains("tooShortSecret") && !e.contains(TOKEN), "{e}");
    }
    let e = env("x tooShortSecret").load().unwrap_err().to_string();
    assert!(!e.contains("tooShortSecret"), "{e}");
    assert!(format!("{:?}", env(TOKEN)).contains("<set>"));
    assert!(!format!("{:?}", env(TOKEN)).contains(TOKEN));
}

#[test]
fn an_unreadable_file_or_an_empty_variable_is_an_error() {
    let source = TokenSource {
        file: Some("/nonexistent/regpoll-tokens".into()),
        env: None,
    };
    let e = source.load().unwrap_err().to_string();
    assert!(
        e.starts_with("/nonexistent/regpoll-tokens: cannot read the token file"),
        "{e}"
    );
    let e = env(" ; \n").load().unwrap_err().to_string();
    assert!(e.starts_with("REGPOLL_HTTP_TOKENS: "), "{e}");
}

#[test]
fn hostile_lines_are_refused_without_panicking() {
    for text in [
        "\u{0}\u{0} \u{0}".to_string(),
        "x sha256:".to_string() + &"é".repeat(32),
        "x sha256:".to_string() + &"0".repeat(100_000),
        "n".repeat(100_000) + " " + TOKEN,
        format!("x {}", "\u{202e}".repeat(20)),
    ] {
        let (_dir, source) = file(&text);
        let e = source.load();
        assert!(e.is_err() || text.contains('\u{202e}'), "{text:.40}");
        assert!(e.err().map_or(0, |e| e.to_string().len()) < 500);
    }
}

#[test]
fn a_new_token_is_random_url_safe_and_its_line_lets_it_in() {
    let a = new_token("ops", None).unwrap();
    let b = new_token("ops", Some("acme")).unwrap();
    assert_ne!(a.token, b.token);
    assert!(a.token.starts_with(NEW_TOKEN_PREFIX));
    assert_eq!(
        a.token.len(),
        NEW_TOKEN_PREFIX.len() + 43,
        "32 bytes in base64url"
    );
    assert!(
        a.token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    assert!(!a.line.contains(&a.token));
    let tokens = env(&format!("{}\n{}", a.line, b.line.replace("ops", "ops2")))
        .load()
        .unwrap();
    assert_eq!(&*tokens.check(&a.token).unwrap().name, "ops");
    let caller = tokens.check(&b.token).unwrap();
    assert_eq!(caller.tenant.as_deref(), Some("acme"));
    assert!(new_token("no spaces", None).is_err());
    assert!(new_token("ok", Some("Not-A-Tenant")).is_err());
}

#[cfg(unix)]
#[test]
fn a_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, _) = file("x");
    let path = dir.path().join("tokens");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(loose_permissions(&path), None);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let w = loose_permissions(&path).unwrap();
    assert!(
        w.contains("readable by every user") && w.contains("chmod o-rwx"),
        "{w}"
    );
}
