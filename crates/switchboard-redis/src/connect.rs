//! The one place that turns a [`RedisConfig`] into connections: which node to talk to
//! (the URL's, or the master the Sentinels name), and how (TCP or TLS, with the
//! configured roots, and the URL's credentials and database).
//!
//! A [`Connector`] is made once per broker; each (re)connection asks it for the
//! [`Primary`], and a [`Node`] opens the two kinds of connection the broker uses: a
//! redis-rs multiplexed connection (publishes, scripts, reads) and our own pub/sub
//! connection ([`pubsub`]), both with the same TLS and credentials.

use crate::{ConnectError, Deployment, RedisConfig, pubsub};
use futures_util::future::join_all;
use redis::{
    Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError, RedisResult,
    TlsCertificates, Value, aio::MultiplexedConnection,
};
use std::{collections::HashMap, fmt, io, sync::Arc, time::Duration};
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    rustls::{
        self, RootCertStore,
        crypto::CryptoProvider,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    },
};

/// How long a Sentinel may take to name the master: the Sentinels are asked at once,
/// and a silent one must leave time to connect to the master within the link's
/// connect timeout.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);

/// Makes the connections of one broker, from its configuration.
#[derive(Clone)]
pub(crate) struct Connector {
    /// The URL's settings: scheme (TLS or not), credentials, database; and, for a
    /// single server, its address.
    info: ConnectionInfo,
    tls: Option<Tls>,
    /// The master's name and the Sentinels, for [`Deployment::Sentinel`].
    sentinel: Option<(String, Vec<Node>)>,
}

/// What a TLS connection checks the server's certificate against.
#[derive(Clone)]
struct Tls {
    /// For our pub/sub connection.
    config: Arc<rustls::ClientConfig>,
    /// For redis-rs, which builds its own from them: `None` for its default roots
    /// (webpki-roots, as ours).
    root_certificates: Option<Vec<u8>>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("addr", self.info.addr())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Checks the URLs and the root certificates, connecting to nothing. The root
    /// certificates serve every `rediss://` URL: the server's, the Sentinels', the
    /// cluster's nodes'.
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, ConnectError> {
        let mut info = parse(&config.url)?;
        let mut sentinel = None;
        match &config.deployment {
            Deployment::Single => {}
            Deployment::Sentinel { service, sentinels } => {
                let sentinels = parse_all(sentinels, "a Sentinel deployment without Sentinels")?;
                sentinel = Some((service.clone(), sentinels));
            }
            // The cluster's link finds its nodes, reached through `Connector::node`
            // with the scheme and credentials of the first node it was given.
            Deployment::Cluster { nodes } => {
                info = parse_all(nodes, "a Cluster deployment without nodes")?.remove(0);
            }
        }
        let sentinel_urls = sentinel.iter().flat_map(|(_, sentinels)| sentinels);
        let urls: Vec<&ConnectionInfo> = std::iter::once(&info).chain(sentinel_urls).collect();
        // `rediss://…/#insecure` would skip checking the certificate: refused rather
        // than failing at every connection (redis-rs is built without it).
        let insecure = |info: &&ConnectionInfo| {
            matches!(info.addr(), ConnectionAddr::TcpTls { insecure: true, .. })
        };
        if urls.iter().any(insecure) {
            let why = "rediss://…#insecure (TLS without checking the certificate)";
            return Err(ConnectError::Unsupported(why.to_owned()));
        }
        let tls = if urls.iter().any(|info| is_tls(info)) {
            Some(Tls::new(config.root_certificates.as_deref())?)
        } else if config.root_certificates.is_some() {
            let why = "root_certificates are for rediss:// URLs (TLS)";
            return Err(ConnectError::Unsupported(why.to_owned()));
        } else {
            None
        };
        let node = |info: ConnectionInfo| Node {
            info,
            tls: tls.clone(),
        };
        let sentinel = sentinel
            .map(|(service, sentinels)| (service, sentinels.into_iter().map(node).collect()));
        Ok(Self {
            info,
            tls,
            sentinel,
        })
    }

    /// Whether the node to talk to may change while a link is up (a Sentinel's
    /// failover), so that a link must check that its node is still the master.
    pub(crate) fn follows_failover(&self) -> bool {
        self.sentinel.is_some()
    }

    /// The node at `host:port`, reached with the URL's scheme, credentials and
    /// database.
    pub(crate) fn node(&self, host: &str, port: u16) -> Node {
        let addr = if is_tls(&self.info) {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        };
        self.node_at(addr)
    }

    fn node_at(&self, addr: ConnectionAddr) -> Node {
        Node {
            info: self.info.clone().set_addr(addr),
            tls: self.tls.clone(),
        }
    }

    /// The node that takes publishes now, with a connection to it: the URL's server,
    /// or the master the Sentinels name.
    ///
    /// Every Sentinel is asked at once (each within [`SENTINEL_TIMEOUT`]), and the
    /// address that more than half of those that answered name wins, checked to say
    /// it is a master: a Sentinel on the wrong side of a partition, still naming the
    /// old master, is outvoted rather than believed for being first, so that the hubs
    /// do not split between two masters. When the answers do not agree (a tie, no
    /// majority: the Sentinels are mid-failover), this attempt fails and the link
    /// tries again after its backoff.
    pub(crate) async fn primary(&self) -> RedisResult<Primary> {
        let Some((service, sentinels)) = &self.sentinel else {
            let node = self.node_at(self.info.addr().clone());
            let publisher = node.publisher().await?;
            return Ok(Primary { node, publisher });
        };
        let answers = join_all(
            sentinels
                .iter()
                .map(|sentinel| master_named_by(sentinel, service)),
        )
        .await;
        let (mut named, mut failures) = (Vec::new(), Vec::new());
        for (sentinel, answer) in sentinels.iter().zip(answers) {
            match answer {
                Ok(address) => named.push(address),
                Err(error) => failures.push(format!("{sentinel}: {error}")),
            }
        }
        let Some((host, port)) = majority(&named) else {
            let why = if named.is_empty() {
                "no Sentinel named a master"
            } else {
                "the Sentinels that answered do not agree on the master"
            };
            let named = named.iter().map(|(host, port)| format!("{host}:{port}"));
            let answers: Vec<String> = named
                .map(|address| format!("named {address}"))
                .chain(failures)
                .collect();
            tracing::warn!(answers = %answers.join("; "), "{why}");
            return Err(RedisError::from((
                redis::ErrorKind::Io,
                why,
                answers.join("; "),
            )));
        };
        let node = self.node(host, *port);
        let mut publisher = node.publisher().await?;
        if !is_master(&mut publisher).await? {
            return Err(failed("the node the Sentinels name is not a master (yet)"));
        }
        Ok(Primary { node, publisher })
    }
}

/// The master's address `sentinel` gives for `service`.
async fn master_named_by(sentinel: &Node, service: &str) -> RedisResult<(String, u16)> {
    let ask = async {
        let mut conn = sentinel.publisher().await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(service)
            .query_async::<Option<(String, u16)>>(&mut conn)
            .await
    };
    tokio::time::timeout(SENTINEL_TIMEOUT, ask)
        .await
        .unwrap_or_else(|_| Err(failed("the Sentinel did not answer in time")))?
        .ok_or_else(|| failed("the Sentinel knows no master of that name"))
}

/// The address more than half of `named` are.
fn majority(named: &[(String, u16)]) -> Option<&(String, u16)> {
    let votes = |address: &(String, u16)| named.iter().filter(|other| *other == address).count();
    named
        .iter()
        .find(|address| votes(address) * 2 > named.len())
}

/// The node that takes publishes, and a connection to it.
pub(crate) struct Primary {
    pub(crate) node: Node,
    pub(crate) publisher: MultiplexedConnection,
}

/// One Redis server, and how to connect to it.
#[derive(Clone)]
pub(crate) struct Node {
    info: ConnectionInfo,
    tls: Option<Tls>,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.info.addr().fmt(f)
    }
}

impl Node {
    /// A redis-rs multiplexed connection: publishes, scripts, reads.
    pub(crate) async fn publisher(&self) -> RedisResult<MultiplexedConnection> {
        let client = match self.tls.as_ref().filter(|_| is_tls(&self.info)) {
            Some(tls) => {
                let certificates = TlsCertificates {
                    client_tls: None,
                    root_cert: tls.root_certificates.clone(),
                };
                Client::build_with_tls(self.info.clone(), certificates)?
            }
            None => Client::open(self.info.clone())?,
        };
        client.get_multiplexed_async_connection().await
    }

    /// Our own pub/sub connection, authenticated.
    pub(crate) async fn subscriber(&self) -> io::Result<(pubsub::Commands, pubsub::Replies)> {
        let settings = self.info.redis_settings();
        match (self.info.addr(), &self.tls) {
            (ConnectionAddr::Tcp(host, port), _) => {
                let (read, write) = tcp(host, *port).await?.into_split();
                pubsub::open(read, write, settings).await
            }
            (ConnectionAddr::TcpTls { host, port, .. }, Some(tls)) => {
                // An IP address is checked against the certificate's IP addresses, a
                // name against its DNS names (and sent as SNI).
                let name = ServerName::try_from(host.clone())
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
                let tcp = tcp(host, *port).await?;
                let stream = TlsConnector::from(tls.config.clone())
                    .connect(name, tcp)
                    .await?;
                // One TLS session for both ways: its halves share it behind a lock.
                let (read, write) = tokio::io::split(stream);
                pubsub::open(read, write, settings).await
            }
            #[cfg(unix)]
            (ConnectionAddr::Unix(path), _) => {
                let (read, write) = tokio::net::UnixStream::connect(path).await?.into_split();
                pubsub::open(read, write, settings).await
            }
            (other, _) => {
                let message = format!("unsupported Redis address {other}");
                Err(io::Error::new(io::ErrorKind::Unsupported, message))
            }
        }
    }
}

async fn tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether the server on `conn` says it is a master: a Sentinel may name a node not
/// promoted yet, and a master demoted behind the Sentinels' back (`REPLICAOF` by an
/// operator, a partition's other side) keeps its clients connected (a Sentinel's own
/// failover closes them).
///
/// Asked with `HELLO` (no arguments: the protocol stays), whose answer has the role
/// and which every user may run (`@fast @connection`, Redis 6.2+); `ROLE` is
/// `@dangerous`, refused to a restricted ACL user.
pub(crate) async fn is_master(conn: &mut MultiplexedConnection) -> RedisResult<bool> {
    let hello: HashMap<String, Value> = redis::cmd("HELLO").query_async(conn).await?;
    Ok(matches!(
        hello.get("role"),
        Some(Value::BulkString(role)) if role.as_slice() == b"master"
    ))
}

impl Tls {
    /// The roots of `pem` (one certificate or several), or webpki-roots'.
    ///
    /// Installs ring as the process's default rustls provider if there is none:
    /// redis-rs builds its TLS configuration with `rustls::ClientConfig::builder()`,
    /// which panics when rustls was built with two providers (ring and aws-lc-rs, as an
    /// application that also uses reqwest may have) and none is the default. Our own
    /// connection names ring itself.
    fn new(pem: Option<&[u8]>) -> Result<Self, ConnectError> {
        // An error means a default is there already: the application's, kept.
        let _ = ring().install_default();
        let roots = match pem {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for certificate in CertificateDer::pem_slice_iter(pem) {
                    let certificate = certificate.map_err(invalid_roots)?;
                    roots.add(certificate).map_err(invalid_roots)?;
                }
                if roots.is_empty() {
                    return Err(invalid_roots("no certificate in the PEM"));
                }
                roots
            }
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid_roots)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            root_certificates: pem.map(<[u8]>::to_vec),
        })
    }
}

/// rustls on `ring`, as the rest of the workspace (see switchboard's `tls` module for
/// why, and why the deprecation is allowed).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring())
}

#[allow(deprecated)]
fn ring() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

fn parse(url: &str) -> Result<ConnectionInfo, ConnectError> {
    url.into_connection_info()
        .map_err(|error| ConnectError::InvalidUrl(Box::new(error)))
}

/// `urls` parsed, at least one.
fn parse_all(urls: &[String], none: &str) -> Result<Vec<ConnectionInfo>, ConnectError> {
    if urls.is_empty() {
        return Err(ConnectError::Unsupported(none.to_owned()));
    }
    urls.iter().map(|url| parse(url)).collect()
}

fn invalid_roots(error: impl ToString) -> ConnectError {
    ConnectError::InvalidCertificates(error.to_string())
}

/// An error of the link's own (no answer in time, no node to ask), as redis-rs's.
pub(crate) fn failed(why: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_roots_are_checked_before_any_connection() {
        let tls = Connector::new(&RedisConfig::default().url("rediss://redis.example:6380/"));
        assert!(tls.unwrap().tls.is_some());
        let plain = Connector::new(&RedisConfig::default());
        assert!(plain.unwrap().tls.is_none());
        let garbage = RedisConfig::default()
            .url("rediss://redis.example/")
            .root_certificates("not a certificate");
        assert!(matches!(
            Connector::new(&garbage),
            Err(ConnectError::InvalidCertificates(_))
        ));
        let roots_without_tls = RedisConfig::default().root_certificates("x");
        assert!(matches!(
            Connector::new(&roots_without_tls),
            Err(ConnectError::Unsupported(_))
        ));
        let no_sentinels = RedisConfig::default().sentinel("mymaster", Vec::<String>::new());
        assert!(matches!(
            Connector::new(&no_sentinels),
            Err(ConnectError::Unsupported(_))
        ));
        let bad_sentinel = RedisConfig::default().sentinel("mymaster", ["nope://x"]);
        assert!(matches!(
            Connector::new(&bad_sentinel),
            Err(ConnectError::InvalidUrl(_))
        ));
    }

    #[test]
    fn insecure_tls_is_refused() {
        for config in [
            RedisConfig::default().url("rediss://redis.example/#insecure"),
            RedisConfig::default().sentinel("mymaster", ["rediss://s1:26379/#insecure"]),
        ] {
            assert!(matches!(
                Connector::new(&config),
                Err(ConnectError::Unsupported(_))
            ));
        }
    }

    /// redis-rs's `ClientConfig::builder()` needs a process default provider when
    /// rustls has two: a TLS connector installs ring if there is none.
    #[test]
    fn a_tls_connector_leaves_a_default_crypto_provider() {
        Connector::new(&RedisConfig::default().url("rediss://redis.example/")).unwrap();
        assert!(CryptoProvider::get_default().is_some());
    }

    #[test]
    fn the_master_is_the_one_most_sentinels_name() {
        let at = |port: u16| ("10.0.0.1".to_owned(), port);
        assert_eq!(majority(&[at(1), at(2), at(1)]), Some(&at(1)));
        assert_eq!(majority(&[at(2)]), Some(&at(2)));
        // A tie, or no address named by more than half: no master this time.
        assert_eq!(majority(&[at(1), at(2)]), None);
        assert_eq!(majority(&[at(1), at(2), at(3)]), None);
        assert_eq!(majority(&[]), None);
    }

    /// A TLS server on 127.0.0.1 whose certificate, of a new CA, names `names`; the
    /// CA's certificate (PEM) and the port.
    async fn tls_server(names: &[&str]) -> (String, u16) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let key = KeyPair::generate().unwrap();
        let certificate = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certificate.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                // Held open until the client has seen the handshake's end.
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        drop(stream);
                    }
                });
            }
        });
        (ca.pem(), port)
    }

    /// Our own pub/sub connection to `host:port` over TLS, trusting `root`.
    async fn subscribe_over_tls(host: &str, port: u16, root: String) -> io::Result<()> {
        let config = RedisConfig::default()
            .url(format!("rediss://{host}:{port}/"))
            .root_certificates(root);
        let node = Connector::new(&config).unwrap().node(host, port);
        let subscribing = tokio::time::timeout(Duration::from_secs(5), node.subscriber());
        subscribing
            .await
            .expect("a TLS handshake within 5 s")
            .map(drop)
    }

    #[tokio::test]
    async fn our_subscriber_checks_the_servers_certificate() {
        let (root, port) = tls_server(&["localhost", "127.0.0.1"]).await;
        subscribe_over_tls("127.0.0.1", port, root).await.unwrap();

        let (_, port) = tls_server(&["localhost", "127.0.0.1"]).await;
        let (other_root, _) = tls_server(&["localhost"]).await;
        let error = subscribe_over_tls("127.0.0.1", port, other_root).await;
        // (Another CA of the same name: its signature does not verify.)
        let why = format!("{error:?}");
        assert!(why.contains("InvalidCertificate(BadSignature)"), "{why}");

        // A certificate for the name only: reached by that name, not by the address.
        let (root, port) = tls_server(&["localhost"]).await;
        subscribe_over_tls("localhost", port, root.clone())
            .await
            .unwrap();
        let error = subscribe_over_tls("127.0.0.1", port, root).await;
        let why = format!("{error:?}");
        assert!(why.contains("InvalidCertificate(NotValidForName"), "{why}");
    }

    #[test]
    fn each_sentinel_keeps_its_own_scheme() {
        let config = RedisConfig::default()
            .url("rediss://redis/")
            .sentinel("mymaster", ["redis://s1:26379/", "rediss://s2:26379/"]);
        let connector = Connector::new(&config).unwrap();
        let (_, sentinels) = connector.sentinel.as_ref().unwrap();
        let tls: Vec<bool> = sentinels.iter().map(|node| is_tls(&node.info)).collect();
        assert_eq!(tls, [false, true]);
        // A TLS Sentinel alone is reason enough for the roots.
        let config = RedisConfig::default()
            .sentinel("mymaster", ["rediss://s1:26379/"])
            .root_certificates("x");
        assert!(matches!(
            Connector::new(&config),
            Err(ConnectError::InvalidCertificates(_))
        ));
    }

    #[test]
    fn a_cluster_node_has_the_first_nodes_scheme_and_credentials() {
        let nodes = ["rediss://:secret@10.0.0.1:7000/", "rediss://10.0.0.2:7000/"];
        let config = RedisConfig::default().cluster(nodes);
        let node = Connector::new(&config).unwrap().node("10.0.0.3", 7001);
        assert!(is_tls(&node.info) && node.tls.is_some());
        assert_eq!(node.info.redis_settings().password(), Some("secret"));
        let none = RedisConfig::default().cluster(Vec::<String>::new());
        assert!(matches!(
            Connector::new(&none),
            Err(ConnectError::Unsupported(_))
        ));
    }

    #[test]
    fn a_node_has_the_urls_scheme_and_credentials() {
        let config = RedisConfig::default().url("rediss://:secret@redis.example:6380/3");
        let node = Connector::new(&config).unwrap().node("10.0.0.7", 7000);
        assert!(matches!(
            node.info.addr(),
            ConnectionAddr::TcpTls { host, port: 7000, .. } if host == "10.0.0.7"
        ));
        assert_eq!(node.info.redis_settings().password(), Some("secret"));
        assert_eq!(node.info.redis_settings().db(), 3);
    }
}
