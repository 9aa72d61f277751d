//! A `redis-server` of one test that speaks TLS only, with a certificate of a private
//! CA made for the test (rcgen): clients trust it only with that CA's certificate as
//! their root.

use super::{
    free_port,
    process::{Process, TempDir},
    redis::redis_server_args,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use redis::{RedisResult, aio::MultiplexedConnection};

/// A private certificate authority of one test.
#[derive(Debug)]
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    /// A new CA, known to nobody.
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "switchboard test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("a CA certificate");
        Self { issuer }
    }

    /// Its certificate (PEM): the root a client must trust.
    pub fn certificate(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1`, and its key (PEM).
    pub fn server_certificate(&self) -> (String, String) {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let params = CertificateParams::new(names).expect("server parameters");
        let key = KeyPair::generate().expect("a server key");
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("a server certificate");
        (certificate.pem(), key.serialize_pem())
    }
}

impl Ca {
    /// The arguments that make a `redis-server` (a Sentinel too) speak TLS only, on
    /// `port` (after the suite's usual ones, whose plain port they close), with a
    /// certificate of this CA whose files go to `dir`; to its
    /// replicas and masters too (`tls-replication`). Clients need no certificate of
    /// their own (`tls-auth-clients no`).
    pub fn server_args(&self, dir: &TempDir, port: u16) -> Vec<String> {
        let (certificate, key) = self.server_certificate();
        let name = |kind: &str| format!("{port}-{kind}.pem");
        [
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            dir.write(&name("certificate"), certificate),
            "--tls-key-file".to_owned(),
            dir.write(&name("key"), key),
            "--tls-ca-cert-file".to_owned(),
            dir.write(&name("ca"), self.certificate()),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
            "--tls-replication".to_owned(),
            "yes".to_owned(),
        ]
        .into()
    }
}

impl Default for Ca {
    fn default() -> Self {
        Self::new()
    }
}

/// A `redis-server` with TLS on its port (no plain TCP port), without persistence.
#[derive(Debug)]
pub struct TlsRedis {
    port: u16,
    ca: Ca,
    _process: Process,
    _dir: TempDir,
}

impl TlsRedis {
    /// Starts it on a free port, with a certificate of a new CA, and returns once it
    /// listens.
    pub async fn start() -> Self {
        let ca = Ca::new();
        let dir = TempDir::new("redis-tls");
        let (process, [port]) = Process::start_on_free_ports(
            "redis-server",
            || [free_port()],
            |[port]| {
                [
                    redis_server_args(port, dir.path()),
                    ca.server_args(&dir, port),
                ]
                .concat()
            },
        )
        .await;
        Self {
            port,
            ca,
            _process: process,
            _dir: dir,
        }
    }

    /// `rediss://127.0.0.1:<port>/`: the certificate names the address.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }

    /// The certificate (PEM) of the CA that signed the server's.
    pub fn root_certificate(&self) -> String {
        self.ca.certificate()
    }

    /// A test's own connection to it, trusting its CA.
    pub async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        connection(&self.url(), Some(self.root_certificate())).await
    }
}

/// A connection to the server at `url`, trusting `root` (PEM) alone if given.
pub async fn connection(url: &str, root: Option<String>) -> RedisResult<MultiplexedConnection> {
    let client = match root {
        Some(root) => {
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root.into_bytes()),
            };
            redis::Client::build_with_tls(url, certificates)?
        }
        None => redis::Client::open(url)?,
    };
    client.get_multiplexed_async_connection().await
}
