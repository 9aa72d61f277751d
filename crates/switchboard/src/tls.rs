//! TLS with rustls (feature `tls`): certificates and keys from PEM, for
//! `serve_tls` (`https://` and `wss://` served) and for
//! [`client::connect`](crate::client::connect) (`wss://` dialled).
//!
//! rustls runs on its `ring` provider, chosen here rather than taken from the process
//! default, so that another crate's provider in the same build changes nothing.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use switchboard::{client::{self, ClientConfig}, tls::{Certificate, Roots, TlsConfig}};
//!
//! // A server's certificate chain and key (see `serve_tls`).
//! let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
//!
//! // A client that trusts a private CA only, instead of Mozilla's roots.
//! let ca = Certificate::from_pem_file("ca.pem")?;
//! let config = ClientConfig::default().roots(Roots::Only(ca));
//! let (ws, _) = client::connect_with("wss://chat.internal:8443/chat/lobby", &config).await?;
//! # let _ = (tls, ws);
//! # Ok(()) }
//! ```

use crate::client::ConnectError;
use std::{
    fmt, io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{
    TlsAcceptor, TlsConnector,
    rustls::{
        self, RootCertStore,
        crypto::CryptoProvider,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    },
};

/// A server's certificate chain and private key: what
/// `serve_tls` presents to its clients.
///
/// TLS 1.2 and 1.3 with rustls' safe defaults, no client certificates, and ALPN
/// `http/1.1` (the only HTTP that carries a WebSocket handshake here, RFC 6455 §4.1).
#[derive(Clone)]
pub struct TlsConfig {
    acceptor: TlsAcceptor,
}

impl TlsConfig {
    /// Reads the chain (the server's certificate first, then its intermediates) from
    /// `cert` and the private key (PKCS#8, PKCS#1 or SEC1) from `key`, both PEM.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        Self::from_pem(&read(cert.as_ref())?, &read(key.as_ref())?)
    }

    /// The chain and the key from PEM text, as [`TlsConfig::from_pem_files`] reads them.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let chain = certificates(cert)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|error| match error {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey,
            error => TlsError::Pem(error.to_string()),
        })?;
        // Also checks that the key belongs to the certificate.
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|error| TlsError::Rejected(error.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs the server's side of the TLS handshake on `io`, e.g. an accepted
    /// `TcpStream`, for a server of your own: [`upgrade::accept`](crate::upgrade::accept)
    /// then runs the WebSocket handshake on the [`TlsStream`] as on any stream.
    ///
    /// ```no_run
    /// # async fn run(tls: switchboard::tls::TlsConfig) -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
    /// let (tcp, _) = listener.accept().await?;
    /// let stream = tls.accept(tcp).await?;
    /// let mut ws = switchboard::upgrade::accept(stream).await?;
    /// while let Some(Ok(message)) = ws.recv().await {
    ///     ws.send(message).await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// No deadline: bound it with `tokio::time::timeout`, as
    /// `serve_tls` does with the hub's `handshake_timeout`.
    pub async fn accept<IO>(&self, io: IO) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        Ok(TlsStream(self.acceptor.accept(io).await?))
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs.
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

/// The server's side of a TLS connection, from [`TlsConfig::accept`].
#[derive(Debug)]
pub struct TlsStream<IO>(tokio_rustls::server::TlsStream<IO>);

impl<IO> TlsStream<IO> {
    /// The stream underneath, e.g. for its addresses.
    pub fn get_ref(&self) -> &IO {
        self.0.get_ref().0
    }

    /// The server name the client asked for (SNI), if it sent one.
    pub fn server_name(&self) -> Option<&str> {
        self.0.get_ref().1.server_name()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A certificate (DER), e.g. the root a client trusts in [`Roots::Only`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate(CertificateDer<'static>);

impl Certificate {
    /// A certificate in DER.
    pub fn from_der(der: impl Into<Vec<u8>>) -> Self {
        Self(CertificateDer::from(der.into()))
    }

    /// Every certificate of a PEM text (at least one).
    pub fn from_pem(pem: &[u8]) -> Result<Vec<Self>, TlsError> {
        Ok(certificates(pem)?.into_iter().map(Self).collect())
    }

    /// Every certificate of a PEM file (at least one).
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Vec<Self>, TlsError> {
        Self::from_pem(&read(path.as_ref())?)
    }

    /// The certificate's DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.0
    }
}

/// The certificates a client trusts: a `wss://` server's chain must end at one of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Roots {
    /// Mozilla's root program, compiled in (`webpki-roots`): the same on every machine,
    /// with no CA bundle to install. The default: it is what browsers trust.
    #[default]
    WebPki,
    /// These certificates only, e.g. a private CA or a test's self-signed certificate.
    Only(Vec<Certificate>),
}

/// Why a [`TlsConfig`] or a [`Certificate`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        #[source]
        source: io::Error,
    },
    /// The PEM text does not parse.
    #[error("invalid pem: {0}")]
    Pem(String),
    /// The PEM text holds no certificate.
    #[error("no certificate in the pem")]
    NoCertificate,
    /// The PEM text holds no private key.
    #[error("no private key in the pem")]
    NoPrivateKey,
    /// rustls refused the chain or the key (e.g. a key of another certificate, or a
    /// kind of key it does not support).
    #[error("certificate or key refused: {0}")]
    Rejected(String),
}

/// Opens a TLS connection to `host` over `tcp`, checking its certificate against `roots`.
pub(crate) async fn connect(
    tcp: TcpStream,
    host: &str,
    roots: &Roots,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let invalid =
        |error: String| ConnectError::Tls(io::Error::new(io::ErrorKind::InvalidInput, error));
    // An IP address is checked against the certificate's IP addresses, a name against
    // its DNS names; the name is also sent as SNI.
    let name = ServerName::try_from(host.to_owned()).map_err(|error| invalid(error.to_string()))?;
    let config = client_config(roots).map_err(|error| invalid(error.to_string()))?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(ConnectError::Tls)
}

/// The client's rustls configuration for `roots`; Mozilla's is built once.
fn client_config(roots: &Roots) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    static WEBPKI: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    match roots {
        Roots::WebPki => {
            if let Some(config) = WEBPKI.get() {
                return Ok(config.clone());
            }
            let store = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let config = client_config_with(store)?;
            Ok(WEBPKI.get_or_init(|| config).clone())
        }
        Roots::Only(certificates) => {
            let mut store = RootCertStore::empty();
            for certificate in certificates {
                store.add(certificate.0.clone())?;
            }
            client_config_with(store)
        }
    }
}

fn client_config_with(store: RootCertStore) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// rustls on `ring`: TLS 1.3 and 1.2 with X25519, P-256 and P-384 key exchange.
/// rustls 0.23.48 deprecates this provider for lacking post-quantum key exchange
/// (X25519MLKEM768, which only its `aws-lc-rs` provider has), which is a defence
/// against recording traffic today to decrypt it later. `aws-lc-rs` builds aws-lc, a C
/// and assembly library several times the size of ring, whose build wants cmake on
/// some targets; ring needs only a C compiler.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem(error.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(chain)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap()
    }

    #[test]
    fn a_chain_and_its_key_make_a_config() {
        let cert = self_signed();
        let config = TlsConfig::from_pem(
            cert.cert.pem().as_bytes(),
            cert.signing_key.serialize_pem().as_bytes(),
        );
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (one, other) = (self_signed(), self_signed());
        let error = TlsConfig::from_pem(
            one.cert.pem().as_bytes(),
            other.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(error, TlsError::Rejected(_)), "{error:?}");
    }

    #[test]
    fn pem_without_what_it_needs_is_named() {
        let cert = self_signed();
        let key = cert.signing_key.serialize_pem();
        let pem = cert.cert.pem();
        assert!(matches!(
            TlsConfig::from_pem(key.as_bytes(), key.as_bytes()),
            Err(TlsError::NoCertificate)
        ));
        assert!(matches!(
            TlsConfig::from_pem(pem.as_bytes(), pem.as_bytes()),
            Err(TlsError::NoPrivateKey)
        ));
        let missing = TlsConfig::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem");
        assert!(matches!(missing, Err(TlsError::Read { path, .. }) if path.ends_with("cert.pem")));
    }

    #[test]
    fn certificates_round_trip_through_pem() {
        let cert = self_signed();
        let parsed = Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
        assert_eq!(parsed, [Certificate::from_der(cert.cert.der().to_vec())]);
        assert_eq!(parsed[0].der(), cert.cert.der().as_ref());
    }

    #[test]
    fn roots_of_garbage_are_an_error_not_a_panic() {
        let roots = Roots::Only(vec![Certificate::from_der(b"not a certificate".to_vec())]);
        assert!(client_config(&roots).is_err());
        assert!(client_config(&Roots::WebPki).is_ok());
    }
}
