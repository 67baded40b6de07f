//! TLS for every listener (`--tls-cert` / `--tls-key`): one certificate and key,
//! loaded and checked once at start, serve gRPC (through tonic's rustls acceptor)
//! and HTTP (through [`TlsListener`]). rustls with the ring provider only.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

/// A client has this long to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken HTTP connections waiting for axum to take them.
const ACCEPTED_BACKLOG: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: String },
    #[error("{path} is not a PEM certificate chain: {detail}")]
    BadCertificate { path: String, detail: String },
    #[error("{path} holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {detail}")]
    BadKey { path: String, detail: String },
    #[error("the certificate {cert} and the key {key} do not fit together: {detail}")]
    Mismatch {
        cert: String,
        key: String,
        detail: String,
    },
}

/// The server's certificate chain and key, as PEM (for tonic) and parsed (for rustls).
#[derive(Clone)]
pub struct TlsIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Reads and checks the pair, so a wrong file fails the start with its name,
    /// not the first client's handshake.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: path.display().to_string(),
                source,
            })
        };
        let cert_pem = read("the TLS certificate", cert_path)?;
        let key_pem = read("the TLS key", key_path)?;
        let cert_name = cert_path.display().to_string();
        let key_name = key_path.display().to_string();

        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadCertificate {
                path: cert_name.clone(),
                detail: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate { path: cert_name });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
            path: key_name.clone(),
            detail: e.to_string(),
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch {
            cert: cert_name.clone(),
            key: key_name.clone(),
            detail: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Mismatch {
            cert: cert_name,
            key: key_name,
            detail: e.to_string(),
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert_pem,
            key_pem,
            config: Arc::new(config),
        })
    }

    /// For the gRPC listener (tonic adds the `h2` ALPN itself).
    pub fn grpc_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }

    /// Wraps the HTTP listener: handshakes run in their own tasks, so one slow
    /// client does not hold up the others.
    pub fn http_listener(&self, listener: TcpListener) -> std::io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(self.config.clone());
        let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
        tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(TlsListener { rx, local_addr })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off, as axum does.
                debug!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "HTTP TLS handshake failed"),
                Err(_) => debug!(%peer, "HTTP TLS handshake timed out"),
            }
        });
    }
}

/// An [`axum::serve::Listener`] of handshaken TLS connections.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
