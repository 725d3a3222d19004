//! TLS for `rediss://`: the client configuration built once from the CA
//! and client-certificate files, and the handshake's failures told apart,
//! because "the handshake failed" alone leaves the user to guess between a
//! wrong host name, a CA that does not match and a port that is not TLS.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The files TLS to Redis is set up from (`--redis-ca`, `--redis-cert`,
/// `--redis-key`); all unset: the public roots and no client certificate.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// PEM file of the CA (or CAs) that signed Redis's certificate.
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate (Redis's `tls-auth-clients`).
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key: Option<PathBuf>,
}

impl RedisTls {
    /// Whether any file is given (they only mean something with `rediss://`).
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// What a `rediss://` connection is opened with.
#[derive(Clone)]
pub(super) struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
    /// The roots trusted, as errors name them.
    roots: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("name", &self.name)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// What the files of `--redis-ca` and `--redis-cert` should hold.
const CA_HINT: &str = "give a PEM file with the CA certificates that signed Redis's certificate";
const CERT_HINT: &str = "give a PEM file with the client certificate first, then its intermediates";

impl Tls {
    /// Reads the files and builds the configuration for a server called
    /// `host` (a DNS name or an IP address, checked against the
    /// certificate either way).
    pub(super) fn new(host: &str, files: &RedisTls) -> anyhow::Result<Tls> {
        let name = ServerName::try_from(host.to_string())
            .with_context(|| format!("{host:?} is not a host name TLS can verify"))?;
        let mut roots = rustls::RootCertStore::empty();
        let shown_roots = match &files.ca {
            Some(path) => {
                for cert in crate::tls::read_certificates(path, "--redis-ca", CA_HINT)? {
                    roots.add(cert).with_context(|| {
                        format!(
                            "--redis-ca {}: a certificate in it is not a usable CA",
                            path.display()
                        )
                    })?;
                }
                format!("the CA file {}", path.display())
            }
            None => {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                "the public roots (webpki-roots)".to_string()
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .context("TLS to Redis: no protocol version available")?
            .with_root_certificates(roots);
        let config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    crate::tls::read_certificates(cert, "--redis-cert", CERT_HINT)?,
                    crate::tls::read_private_key(key, "--redis-key")?,
                )
                .with_context(|| {
                    format!(
                        "--redis-key {} does not belong to --redis-cert {}",
                        key.display(),
                        cert.display()
                    )
                })?,
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => bail!("--redis-cert is given without --redis-key: give both"),
            (None, Some(_)) => bail!("--redis-key is given without --redis-cert: give both"),
        };
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            name,
            roots: shown_roots,
        })
    }

    /// The handshake on an open TCP connection; `shown` names Redis in errors.
    pub(super) async fn handshake(
        &self,
        tcp: TcpStream,
        shown: &str,
    ) -> anyhow::Result<TlsStream<TcpStream>> {
        self.connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| self.explain(&e, shown))
    }

    /// The handshake's failure in the user's terms.
    fn explain(&self, e: &std::io::Error, shown: &str) -> anyhow::Error {
        let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        match tls {
            Some(rustls::Error::InvalidCertificate(cert)) => self.bad_certificate(cert, shown),
            Some(rustls::Error::AlertReceived(alert)) => anyhow::anyhow!(
                "Redis at {shown} refused the TLS handshake ({}): {}",
                alert_text(*alert),
                refusal_hint(*alert)
            ),
            _ => anyhow::anyhow!(
                "Redis at {shown} did not answer the TLS handshake ({e}): is it a plain (non-TLS) port? use redis://"
            ),
        }
    }

    fn bad_certificate(&self, cert: &CertificateError, shown: &str) -> anyhow::Error {
        let name = self.name.to_str();
        match cert {
            CertificateError::NotValidForNameContext { presented, .. } => anyhow::anyhow!(
                "Redis at {shown} presented a certificate that is not valid for {name:?} (it names {}): connect by a name the certificate holds",
                presented
                    .iter()
                    .map(|n| crate::tls::presented_name(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            CertificateError::NotValidForName => anyhow::anyhow!(
                "Redis at {shown} presented a certificate that is not valid for {name:?}: connect by a name the certificate holds"
            ),
            CertificateError::UnknownIssuer | CertificateError::BadSignature => anyhow::anyhow!(
                "Redis at {shown} presented a certificate not signed by a CA in {}: give --redis-ca the CA that signed it",
                self.roots
            ),
            other => anyhow::anyhow!(
                "Redis at {shown} presented a certificate that cannot be trusted ({other:?}; trusted: {})",
                self.roots
            ),
        }
    }
}

/// A refusal after the handshake looked done on this side: with TLS 1.3 the
/// server checks the client certificate only after the client finished, so
/// a missing one shows up as an alert on the first answer.
pub(super) fn refused_after_handshake(e: &std::io::Error, shown: &str) -> Option<anyhow::Error> {
    let tls = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())?;
    match tls {
        rustls::Error::AlertReceived(alert) => Some(anyhow::anyhow!(
            "Redis at {shown} refused the TLS connection ({}): {}",
            alert_text(*alert),
            refusal_hint(*alert)
        )),
        _ => None,
    }
}

fn alert_text(alert: AlertDescription) -> String {
    format!("{alert:?}")
}

fn refusal_hint(alert: AlertDescription) -> &'static str {
    match alert {
        AlertDescription::CertificateRequired
        | AlertDescription::HandshakeFailure
        | AlertDescription::BadCertificate
        | AlertDescription::UnknownCA
        | AlertDescription::CertificateUnknown => {
            "it may require a client certificate it trusts: give --redis-cert and --redis-key"
        }
        _ => "check the server's TLS settings",
    }
}
