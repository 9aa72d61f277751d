//! A `redis-server` of one test that speaks TLS only, with a certificate of a private
//! CA made for the test (rcgen): clients trust it only with that CA's certificate as
//! their root.

use super::{
    free_port,
    process::{Process, TempDir},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

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
    /// `port`, with a certificate of this CA whose files go to `dir`; to its
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
        let port = free_port();
        let mut args = ca.server_args(&dir, port);
        args.extend(["--save", "", "--appendonly", "no"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = Process::start("redis-server", &args, port).await;
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
}
