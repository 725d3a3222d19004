//! TLS to PostgreSQL: which `sslmode` and files a connection uses (the
//! URL's parameters, overridden by regpoll's `--database-ssl*` settings),
//! checked once before the first connection, and what a failed handshake
//! or a login refused for want of TLS means, in words an operator can act on.
//!
//! sqlx does the handshake (rustls with the ring provider); every pool,
//! the migration connection and the `LISTEN` connections are opened from
//! the options built here, so they all use the same settings.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError};
use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::settings::{self, Setting};

/// The `--database-ssl*` settings: each one given overrides the URL's
/// parameter of the same name.
#[derive(Debug, Clone, Default)]
pub struct PgTls {
    pub sslmode: Option<PgSslMode>,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
}

/// Parses an `sslmode` as PostgreSQL's clients spell it.
pub fn parse_sslmode(text: &str) -> Result<PgSslMode, String> {
    let mode = match text.trim().to_ascii_lowercase().as_str() {
        "disable" => PgSslMode::Disable,
        "allow" => PgSslMode::Allow,
        "prefer" => PgSslMode::Prefer,
        "require" => PgSslMode::Require,
        "verify-ca" => PgSslMode::VerifyCa,
        "verify-full" => PgSslMode::VerifyFull,
        _ => {
            return Err(format!(
                "`{text}` is not an sslmode; use disable, allow, prefer, require, verify-ca or verify-full"
            ));
        }
    };
    Ok(mode)
}

/// The name PostgreSQL's clients give `mode`.
pub fn sslmode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// One of the three files, the ways it can be named, and how it is checked.
struct FileParam {
    /// The URL parameter's names sqlx reads, the libpq one first.
    url_names: &'static [&'static str],
    /// The environment variable sqlx reads when the URL does not name it.
    env: &'static str,
    setting: &'static Setting,
    /// What the file must hold.
    holds: &'static str,
    /// A private key, not certificates.
    is_key: bool,
}

const ROOT_CERT: FileParam = FileParam {
    url_names: &["sslrootcert", "ssl-root-cert", "ssl-ca"],
    env: "PGSSLROOTCERT",
    setting: &settings::DATABASE_SSLROOTCERT,
    holds: "the CA certificate(s) that signed the server's certificate, in PEM form",
    is_key: false,
};

const CLIENT_CERT: FileParam = FileParam {
    url_names: &["sslcert", "ssl-cert"],
    env: "PGSSLCERT",
    setting: &settings::DATABASE_SSLCERT,
    holds: "regpoll's client certificate in PEM form",
    is_key: false,
};

const CLIENT_KEY: FileParam = FileParam {
    url_names: &["sslkey", "ssl-key"],
    env: "PGSSLKEY",
    setting: &settings::DATABASE_SSLKEY,
    holds: "the client certificate's private key in PEM form, unencrypted",
    is_key: true,
};

/// A file named by a setting, the URL or the environment, with where it
/// was named, for errors.
struct Named {
    path: PathBuf,
    from: String,
}

impl FileParam {
    /// The file in use: the setting's, else the URL's last, else the
    /// environment's (as sqlx reads them). A PEM given inline in the
    /// environment is no file and is left to sqlx.
    fn named(&self, given: Option<&Path>, url: &url::Url) -> Option<Named> {
        if let Some(path) = given {
            return Some(Named {
                path: path.to_path_buf(),
                from: format!("--{} ({})", self.setting.flag, self.setting.env),
            });
        }
        let in_url = url
            .query_pairs()
            .filter(|(k, _)| self.url_names.contains(&&**k))
            .last();
        if let Some((k, v)) = in_url {
            return Some(Named {
                path: PathBuf::from(&*v),
                from: format!("`{k}` in the database URL"),
            });
        }
        let env = std::env::var(self.env).ok()?;
        (!env.trim_start().starts_with("-----BEGIN")).then(|| Named {
            path: PathBuf::from(env),
            from: self.env.to_string(),
        })
    }

    /// Reads the file and checks that it holds what it must. Never shows
    /// the file's content (a key is a secret).
    fn check(&self, named: &Named) -> anyhow::Result<()> {
        let fail = |why: String| {
            anyhow::anyhow!(
                "cannot use {} given by {}: {why}; it must hold {}",
                named.path.display(),
                named.from,
                self.holds
            )
        };
        let bytes =
            std::fs::read(&named.path).map_err(|e| fail(format!("cannot read it ({e})")))?;
        let ok = if self.is_key {
            match PrivateKeyDer::from_pem_slice(&bytes) {
                Ok(_) => true,
                Err(_) if contains(&bytes, b"ENCRYPTED") => {
                    return Err(fail(
                        "the key is encrypted, which regpoll cannot use (there is no sslpassword); \
                         decrypt it with `openssl pkey -in KEY -out KEY.plain` and keep that file readable by regpoll only"
                            .into(),
                    ));
                }
                Err(_) => false,
            }
        } else {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
            matches!(certs, Ok(c) if !c.is_empty())
        };
        if ok {
            Ok(())
        } else {
            Err(fail("it is not in PEM form or holds none".into()))
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `opts` (parsed from `url`) with the settings of `tls` applied and the
/// files checked: a file that is missing, unreadable or not PEM is an
/// error naming the setting and the path, before any connection.
///
/// As with libpq, `require` with a root certificate checks the server's
/// certificate against it (as `verify-ca`); sqlx alone would ignore it.
pub(super) fn apply(
    url: &url::Url,
    mut opts: PgConnectOptions,
    tls: &PgTls,
) -> anyhow::Result<PgConnectOptions> {
    let root = ROOT_CERT.named(tls.sslrootcert.as_deref(), url);
    let cert = CLIENT_CERT.named(tls.sslcert.as_deref(), url);
    let key = CLIENT_KEY.named(tls.sslkey.as_deref(), url);
    for (param, named) in [
        (&ROOT_CERT, &root),
        (&CLIENT_CERT, &cert),
        (&CLIENT_KEY, &key),
    ] {
        if let Some(named) = named {
            param.check(named)?;
        }
    }
    match (&cert, &key) {
        (Some(c), None) => anyhow::bail!(
            "a client certificate ({}, given by {}) needs its key: give sslkey too (--{}, {})",
            c.path.display(),
            c.from,
            settings::DATABASE_SSLKEY.flag,
            settings::DATABASE_SSLKEY.env
        ),
        (None, Some(k)) => anyhow::bail!(
            "a client key ({}, given by {}) needs its certificate: give sslcert too (--{}, {})",
            k.path.display(),
            k.from,
            settings::DATABASE_SSLCERT.flag,
            settings::DATABASE_SSLCERT.env
        ),
        _ => {}
    }
    let mut mode = tls.sslmode.unwrap_or_else(|| opts.get_ssl_mode());
    if matches!(mode, PgSslMode::Require) && root.is_some() {
        mode = PgSslMode::VerifyCa;
    }
    opts = opts.ssl_mode(mode);
    if let Some(r) = root {
        opts = opts.ssl_root_cert(r.path);
    }
    if let (Some(c), Some(k)) = (cert, key) {
        opts = opts.ssl_client_cert(c.path).ssl_client_key(k.path);
    }
    Ok(opts)
}

/// The root certificate file of `opts`, if any. sqlx has no getter for it,
/// so it is read back from the options' URL form (`sslrootcert=file: …`),
/// whose other parts (the password) are never shown.
fn root_cert_of(opts: &PgConnectOptions) -> Option<String> {
    let url = opts.to_url_lossy();
    let (_, v) = url.query_pairs().find(|(k, _)| k == "sslrootcert")?;
    Some(
        v.strip_prefix("file: ")
            .unwrap_or("an inline PEM")
            .to_string(),
    )
}

/// What went wrong, when it is about TLS.
#[derive(Debug, PartialEq)]
enum Failure {
    /// The certificate is not for the host name connected to.
    WrongHost { asked: String, names: Vec<String> },
    /// Not signed by a CA regpoll trusts.
    UnknownCa,
    /// Any other fault of the server's certificate (expired, not yet
    /// valid, wrong purpose): rustls's words.
    ServerCertificate(String),
    /// The server answered `N` to the TLS request.
    ServerWithoutTls,
    /// pg_hba turned away a connection without TLS.
    TlsRequired,
    /// pg_hba wants a client certificate and none was sent.
    ClientCertMissing,
    /// The server refused the client certificate sent: how.
    ClientCertRefused(String),
}

/// The TLS failure anywhere in `e`'s chain.
fn failure(e: &(dyn StdError + 'static)) -> Option<Failure> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(f) = failure_at(c) {
            return Some(f);
        }
        cause = c.source();
    }
    None
}

/// The TLS failure `e` itself is: rustls's error, held directly or (as
/// sqlx passes a failed handshake on) inside an `io::Error`, whose
/// `source()` skips it; or sqlx's or the server's words for one.
fn failure_at(e: &(dyn StdError + 'static)) -> Option<Failure> {
    let inner = match e.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Io(io)) => Some(io as &(dyn StdError + 'static)),
        Some(sqlx::Error::Tls(tls)) => Some(&**tls as &(dyn StdError + 'static)),
        Some(other) => return from_sqlx(other),
        None => None,
    };
    let e = inner.unwrap_or(e);
    let rustls = e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<std::io::Error>()?
            .get_ref()?
            .downcast_ref::<rustls::Error>()
    });
    match rustls {
        Some(r) => from_rustls(r),
        None if e.to_string() == "server does not support TLS" => Some(Failure::ServerWithoutTls),
        None => None,
    }
}

fn from_rustls(e: &rustls::Error) -> Option<Failure> {
    Some(match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => Failure::WrongHost {
                asked: expected.to_str().into_owned(),
                names: presented
                    .iter()
                    .map(|n| crate::tls::presented_name(n).to_string())
                    .collect(),
            },
            CertificateError::NotValidForName => Failure::WrongHost {
                asked: String::new(),
                names: Vec::new(),
            },
            CertificateError::UnknownIssuer => Failure::UnknownCa,
            other => Failure::ServerCertificate(
                rustls::Error::InvalidCertificate(other.clone()).to_string(),
            ),
        },
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied),
        ) => Failure::ClientCertRefused(format!("TLS alert {alert:?}")),
        _ => return None,
    })
}

fn from_sqlx(e: &sqlx::Error) -> Option<Failure> {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("28000") => {
            let m = db.message();
            if m.ends_with("no encryption") || m.ends_with("SSL off") {
                Some(Failure::TlsRequired)
            } else if m.contains("requires a valid client certificate") {
                Some(Failure::ClientCertMissing)
            } else if m.starts_with("certificate authentication failed")
                || m.starts_with("certificate validation")
            {
                Some(Failure::ClientCertRefused(m.to_string()))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Words for the TLS failure `e` is (not its causes: the caller walks the
/// chain), `None` when it is none. With `opts`, the connection's own
/// sslmode and root certificate are named; without, the message says
/// where to look.
pub(super) fn explain(
    e: &(dyn StdError + 'static),
    opts: Option<&PgConnectOptions>,
) -> Option<String> {
    let failure = failure_at(e)?;
    let mode = opts.map_or("the sslmode", |o| sslmode_name(o.get_ssl_mode()));
    let sslmode_settings = format!(
        "--{}, {}, or sslmode in the URL",
        settings::DATABASE_SSLMODE.flag,
        settings::DATABASE_SSLMODE.env
    );
    Some(match failure {
        Failure::WrongHost { asked, names } => {
            let names = if names.is_empty() {
                String::new()
            } else {
                format!(" (it names {})", names.join(", "))
            };
            let asked = if asked.is_empty() {
                opts.map_or_else(
                    || "connected to".to_string(),
                    |o| format!("`{}`", o.get_host()),
                )
            } else {
                format!("`{asked}`")
            };
            format!(
                "the server's certificate is not valid for the host name {asked}{names}, which sslmode=verify-full requires: \
                 connect by a name the certificate holds, or use sslmode=verify-ca to check only that a trusted CA signed it"
            )
        }
        Failure::UnknownCa => {
            let checked = match opts.map(root_cert_of) {
                Some(Some(file)) => {
                    format!("the sslrootcert file {file} and the built-in public roots")
                }
                Some(None) => "the built-in public roots (no sslrootcert was given)".to_string(),
                None => "the sslrootcert file, or the built-in public roots when none is given"
                    .to_string(),
            };
            format!(
                "the server's certificate is signed by a CA regpoll does not trust (checked against {checked}): \
                 give the CA that signed it as sslrootcert (--{}, {}, or sslrootcert in the URL)",
                settings::DATABASE_SSLROOTCERT.flag,
                settings::DATABASE_SSLROOTCERT.env
            )
        }
        Failure::ServerCertificate(why) => format!(
            "the server's certificate was refused ({why}); with sslmode={mode} it must be valid now and signed by a trusted CA"
        ),
        Failure::ServerWithoutTls => format!(
            "the server does not support TLS (ssl is off there) but sslmode={mode} requires it: turn on ssl on the server, \
             or, on a network you trust, set sslmode=prefer or disable ({sslmode_settings})"
        ),
        Failure::TlsRequired => format!(
            "the server refused a connection without TLS: set sslmode=require or stronger ({sslmode_settings})"
        ),
        Failure::ClientCertMissing => format!(
            "the server requires a client certificate for this user: give sslcert and sslkey (--{}, --{}, or sslcert/sslkey in the URL)",
            settings::DATABASE_SSLCERT.flag,
            settings::DATABASE_SSLKEY.flag
        ),
        Failure::ClientCertRefused(how) => format!(
            "the server refused regpoll's client certificate ({how}): it must be signed by a CA in the server's ssl_ca_file \
             and its common name must be the database user (or be mapped to it in pg_ident.conf)"
        ),
    })
}

/// Whether `e`'s chain holds a TLS failure [`explain`] has words for.
pub(super) fn explain_chain(e: &(dyn StdError + 'static)) -> bool {
    failure(e).is_some()
}

/// Whether `e` says the server wants TLS that the connection did not use:
/// what makes `sslmode=allow` try again with TLS.
pub(super) fn is_tls_required(e: &(dyn StdError + 'static)) -> bool {
    failure(e) == Some(Failure::TlsRequired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sslmode_parses_and_is_named_back() {
        for name in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            assert_eq!(sslmode_name(parse_sslmode(name).unwrap()), name);
        }
        assert_eq!(
            sslmode_name(parse_sslmode("Verify-Full").unwrap()),
            "verify-full"
        );
        let e = parse_sslmode("verify").unwrap_err();
        assert!(e.contains("`verify` is not an sslmode"), "{e}");
        assert!(e.contains("verify-full"), "{e}");
    }

    #[test]
    fn the_root_certificate_is_read_back_from_the_options() {
        let opts = PgConnectOptions::new()
            .password("S3cret")
            .ssl_root_cert("/etc/regpoll/ca.pem");
        assert_eq!(root_cert_of(&opts).as_deref(), Some("/etc/regpoll/ca.pem"));
        assert_eq!(root_cert_of(&PgConnectOptions::new().password("x")), None);
    }

    #[test]
    fn a_wrong_host_name_says_which_names_the_certificate_holds() {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected: rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
                presented: vec!["DnsName(\"localhost\")".into()],
            }),
        );
        let e = sqlx::Error::Io(e);
        let text = explain(&e, None).unwrap();
        assert!(
            text.contains("not valid for the host name `127.0.0.1` (it names localhost)"),
            "{text}"
        );
        assert!(text.contains("verify-ca"), "{text}");
    }

    #[test]
    fn an_error_without_tls_in_it_is_not_explained() {
        let e = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(explain(&e, None), None);
        assert!(!is_tls_required(&e));
    }
}
