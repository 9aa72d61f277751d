//! Why a broker could not be made.

use std::error::Error;

/// The cause, from the Redis client: reachable through [`Error::source`], without
/// making the client's types part of this crate's API.
type Cause = Box<dyn Error + Send + Sync + 'static>;

/// Why [`RedisBroker::new`](crate::RedisBroker::new) (a URL or certificates it cannot
/// use) or [`RedisBroker::connect`](crate::RedisBroker::connect) (that too, or Redis
/// out of reach) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not one the Redis client understands.
    #[error("invalid redis url")]
    InvalidUrl(#[source] Cause),
    /// [`RedisConfig::root_certificates`](crate::RedisConfig::root_certificates) holds
    /// no certificate, or one that cannot be used.
    #[error("invalid root certificates for redis: {0}")]
    InvalidCertificates(String),
    /// Redis could not be reached, or refused the connection (authentication, a
    /// subscription refused), or its TLS certificate did not verify, or no Sentinel
    /// named a master.
    #[error("could not connect to redis")]
    Connect(#[source] Cause),
    /// The configuration asks for something this build cannot do (a deployment or a
    /// TLS setting it does not support).
    #[error("unsupported redis configuration: {0}")]
    Unsupported(String),
}
