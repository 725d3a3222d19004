//! What regpoll's TLS ends share (the HTTP API's server, the Redis
//! writer's client): the crypto provider, and PEM files read without ever
//! quoting them (a key's lines are secret).

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ring, not aws-lc-rs (which needs cmake and nasm to build). rustls
/// 0.23.48 deprecated ring's provider for its lack of post-quantum key
/// exchange only; it still offers X25519 and the NIST curves. Named
/// explicitly: rustls picking one itself would panic the day some crate
/// enables aws-lc-rs too.
pub fn provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of the PEM file given to `--flag`; none is an error.
/// `hint` says what the file should hold.
pub fn read_certificates(
    path: &Path,
    flag: &str,
    hint: &str,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bad = |e: pem::Error| {
        anyhow::anyhow!(
            "{}: cannot read certificates for {flag}: {}; {hint}",
            path.display(),
            pem_error(&e)
        )
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(bad)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    if certs.is_empty() {
        anyhow::bail!(
            "{}: holds no certificate (no `-----BEGIN CERTIFICATE-----` section); {hint}",
            path.display()
        );
    }
    Ok(certs)
}

/// The first private key of the PEM file given to `--flag`.
pub fn read_private_key(path: &Path, flag: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot read a private key for {flag}: {}; give a PEM file with a PKCS#8, PKCS#1 or SEC1 key",
            path.display(),
            pem_error(&e)
        )
    })
}

/// What went wrong reading a PEM file, without its contents.
fn pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::Io(io) => io.to_string(),
        pem::Error::NoItemsFound => "no such PEM section in the file".into(),
        _ => "not a valid PEM file".into(),
    }
}

/// `localhost` for rustls's `DnsName("localhost")`, `10.0.0.1` for
/// `IpAddress(10.0.0.1)`: a certificate's names as its maker wrote them;
/// anything else as it is.
pub fn presented_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_are_shown_plain() {
        assert_eq!(presented_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(presented_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(presented_name("DirectoryName"), "DirectoryName");
    }
}
