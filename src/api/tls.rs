//! HTTPS for the API (`--http-tls-cert`, `--http-tls-key`): rustls with the
//! ring provider, behind a listener of our own for `axum::serve`.
//!
//! The handshakes run in tasks of their own, off the accept path, each
//! bounded by [`HANDSHAKE_TIMEOUT`]: a client that connects and never
//! finishes its handshake costs one task until the timeout, and never stops
//! the next client from being accepted. At most [`HANDSHAKES_MAX`] run at
//! once; past that new connections wait in the kernel's backlog.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes in progress at once.
pub const HANDSHAKES_MAX: usize = 256;

/// The PEM files of the certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Both files or neither: one alone is a mistake worth stopping for.
    pub fn pair(cert: Option<PathBuf>, key: Option<PathBuf>) -> anyhow::Result<Option<Self>> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
            (None, None) => Ok(None),
            (Some(_), None) => anyhow::bail!(
                "--http-tls-cert is given without --http-tls-key (REGPOLL_HTTP_TLS_KEY); HTTPS needs both the certificate chain and its private key"
            ),
            (None, Some(_)) => anyhow::bail!(
                "--http-tls-key is given without --http-tls-cert (REGPOLL_HTTP_TLS_CERT); HTTPS needs both the certificate chain and its private key"
            ),
        }
    }

    /// The server's TLS configuration, read from the files now.
    pub fn server_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let certs = crate::tls::read_certificates(
            &self.cert,
            "--http-tls-cert",
            "give a PEM file with the server's certificate first, then its intermediates",
        )?;
        let key = crate::tls::read_private_key(&self.key, "--http-tls-key")?;
        let mut config = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{} and {}: the certificate and key cannot serve HTTPS: {e}; check that the key is the certificate's",
                    self.cert.display(),
                    self.key.display()
                )
            })?;
        // The API speaks HTTP/1.1 only (axum's `http1` feature).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Accepts TCP connections and hands out those whose TLS handshake
/// finished.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::AbortHandle,
}

impl TlsListener {
    /// Starts accepting on `tcp` (on the current runtime).
    pub fn new(tcp: tokio::net::TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(HANDSHAKES_MAX);
        let acceptor = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx)).abort_handle();
        Ok(TlsListener {
            ready,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // The accept loop holds the socket: stop listening with the server.
        self.acceptor.abort();
    }
}

async fn accept_loop(
    tcp: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "HTTPS: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (aborted): nothing will come again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
