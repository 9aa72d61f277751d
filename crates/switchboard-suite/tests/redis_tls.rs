//! Redis over TLS (`rediss://`) with a private CA: hubs deliver to each other's
//! clients through a TLS-only `redis-server`; a broker given another root never
//! connects, and says why.

mod redis_hubs;

use redis_hubs::{member, serve};
use std::{
    error::Error,
    sync::{Arc, Mutex},
    time::Duration,
};
use switchboard::hub::HubConfig;
use switchboard_redis::{ConnectError, RedisBroker, RedisConfig};
use switchboard_suite::servers::{
    redis::until_subscribers,
    redis_tls::{Ca, TlsRedis},
};
use switchboard_suite::support::{until, within};

fn config(redis: &TlsRedis) -> RedisConfig {
    RedisConfig::default()
        .url(redis.url())
        .root_certificates(redis.root_certificate())
        .max_backoff(Duration::from_millis(200))
}

/// Every cause of `error`, for a check of what it says.
fn causes(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_deliver_to_each_others_clients_over_tls() {
    let redis = TlsRedis::start().await;
    let (a, a_stats) = serve(
        RedisBroker::connect(config(&redis)).await.unwrap(),
        HubConfig::default(),
    )
    .await;
    let (b, b_stats) = serve(
        RedisBroker::connect(config(&redis)).await.unwrap(),
        HubConfig::default(),
    )
    .await;
    until("both hubs ready", || a.hub.is_ready() && b.hub.is_ready()).await;
    let (on_a, on_b) = (member(&a, "r").await, member(&b, "r").await);
    let mut conn = within("a TLS connection", redis.connection())
        .await
        .expect("the test trusts the server's CA");
    until_subscribers(&mut conn, &config(&redis).channel_room("r"), 2).await;

    a.hub.to("r").send_text("from a");
    b.hub.to("r").send_text("from b");
    let both = || vec!["from a".to_owned(), "from b".to_owned()];
    let sorted = |texts: &std::sync::Mutex<Vec<String>>| {
        let mut texts = texts.lock().unwrap().clone();
        texts.sort();
        texts
    };
    until("both clients got both", || {
        sorted(&on_a) == both() && sorted(&on_b) == both()
    })
    .await;
    assert_eq!(a_stats.malformed() + b_stats.malformed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_another_root_fails_at_once_and_says_why() {
    let redis = TlsRedis::start().await;
    let wrong = config(&redis).root_certificates(Ca::new().certificate());
    let started = std::time::Instant::now();
    let error = within("connect to refuse", RedisBroker::connect(wrong))
        .await
        .expect_err("a server whose CA is not trusted");
    // At once: a refused certificate is not retried.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(error, ConnectError::Connect(_)), "{error:?}");
    let why = causes(&error);
    assert!(why.contains("certificate"), "{why}");
}

/// What the hub logs, as text: a writer for `tracing_subscriber::fmt`.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// One thread: the hub's tasks log to this test's subscriber (a thread's default).
#[tokio::test(flavor = "current_thread")]
async fn a_broker_with_another_root_never_becomes_ready_and_logs_why() {
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let log = log.clone();
            move || log.clone()
        })
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let redis = TlsRedis::start().await;
    let wrong = config(&redis).root_certificates(Ca::new().certificate());
    let (right, _) = serve(
        RedisBroker::new(config(&redis)).unwrap(),
        HubConfig::default(),
    )
    .await;
    let (hub, hub_stats) = serve(RedisBroker::new(wrong).unwrap(), HubConfig::default()).await;
    // The trusting hub connects meanwhile: the other had the time to, and more.
    until("the trusting hub ready", || right.hub.is_ready()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!hub.hub.is_ready());
    assert_eq!(hub_stats.reconnects(), 0);
    let log = log.text();
    let why = log.lines().find(|line| line.contains("Redis unreachable"));
    let why = why.unwrap_or_else(|| panic!("no warning in {log}"));
    assert!(why.contains("invalid peer certificate"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_url_with_root_certificates_or_bad_pem_is_refused() {
    let plain = RedisConfig::default().root_certificates(Ca::new().certificate());
    assert!(matches!(
        RedisBroker::new(plain),
        Err(ConnectError::Unsupported(_))
    ));
    let garbage = RedisConfig::default()
        .url("rediss://127.0.0.1:1/")
        .root_certificates("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
    assert!(matches!(
        RedisBroker::new(garbage),
        Err(ConnectError::InvalidCertificates(_))
    ));
}
