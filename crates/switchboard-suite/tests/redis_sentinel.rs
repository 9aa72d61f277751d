//! Redis Sentinel: hubs find the master through the Sentinels, and follow a failover
//! (the master SIGKILLed while a hub publishes, or `SENTINEL FAILOVER` with the old
//! master alive and demoted): they reconnect to the new master and deliver again,
//! losses counted, and a room with history stays gapless for a client that stays.

mod redis_hubs;

use redis_hubs::{Traffic, count, framed_history, member, serve};
use std::time::Duration;
use switchboard::hub::HubConfig;
use switchboard_redis::{RedisBroker, RedisConfig};
use switchboard_suite::servers::{
    redis::{RedisServer, until_subscribers},
    sentinel::{SERVICE, Sentinels},
};
use switchboard_suite::support::{until, within};

const HISTORY: &str = "h";

fn config(sentinels: &Sentinels) -> RedisConfig {
    RedisConfig::default()
        .sentinel(SERVICE, sentinels.sentinel_urls())
        .max_backoff(Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_follow_the_failover_of_a_killed_master() {
    let mut sentinels = Sentinels::start().await;
    let hub_config = || framed_history(HISTORY);
    let (a, a_stats) = serve(RedisBroker::new(config(&sentinels)).unwrap(), hub_config()).await;
    let (b, b_stats) = serve(RedisBroker::new(config(&sentinels)).unwrap(), hub_config()).await;
    until("both hubs ready", || a.hub.is_ready() && b.hub.is_ready()).await;
    let traffic = Traffic::new(&a, &b, "r", HISTORY).await;
    let old = sentinels.master().await;
    let mut master = sentinels.connection(old).await.unwrap();
    until_subscribers(&mut master, &config(&sentinels).channel_room("r"), 1).await;
    until_subscribers(&mut master, &config(&sentinels).channel_room(HISTORY), 1).await;

    let failover = async {
        sentinels.kill(old);
        let new = within("the failover", sentinels.until_failed_over(old)).await;
        let mut master = sentinels.connection(new).await.unwrap();
        until_subscribers(&mut master, &config(&sentinels).channel_room("r"), 1).await;
    };
    traffic.through(failover, &a_stats, &b_stats).await;
}

/// `SENTINEL FAILOVER` with the old master alive: the Sentinels demote it and close
/// its clients' connections; the hubs reconnect to the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_master_does_not_keep_the_hubs() {
    let sentinels = Sentinels::start().await;
    let (a, _) = serve(
        RedisBroker::connect(config(&sentinels)).await.unwrap(),
        HubConfig::default(),
    )
    .await;
    let (b, _) = serve(
        RedisBroker::connect(config(&sentinels)).await.unwrap(),
        HubConfig::default(),
    )
    .await;
    let live = member(&b, "r").await;
    let old = sentinels.master().await;
    let room = &config(&sentinels).channel_room("r");
    until_subscribers(&mut sentinels.connection(old).await.unwrap(), room, 1).await;

    sentinels.failover().await;
    let new = within("the failover", sentinels.until_failed_over(old)).await;
    // Both hubs on the new master, none left on the old one, alive as a replica.
    let all = "switchboard:all";
    until_subscribers(&mut sentinels.connection(new).await.unwrap(), all, 2).await;
    until_subscribers(&mut sentinels.connection(new).await.unwrap(), room, 1).await;
    until_subscribers(&mut sentinels.connection(old).await.unwrap(), all, 0).await;
    until("both hubs ready", || a.hub.is_ready() && b.hub.is_ready()).await;
    a.hub.to("r").send_text("after the failover");
    until("delivery through the new master", || {
        live.lock()
            .unwrap()
            .iter()
            .any(|text| text == "after the failover")
    })
    .await;
}

/// A master turned into a replica behind the Sentinels' back (`REPLICAOF`), which
/// keeps its clients connected (a Sentinel's failover would close them): the hub
/// finds it no longer the master (its role, asked every second) and leaves it,
/// rather than publish where no other hub may listen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_leaves_a_master_demoted_under_it() {
    let sentinels = Sentinels::start().await;
    let (a, _) = serve(
        RedisBroker::connect(config(&sentinels)).await.unwrap(),
        HubConfig::default(),
    )
    .await;
    until("the hub ready", || a.hub.is_ready()).await;
    let [old, replica] = sentinels.servers();
    let all = "switchboard:all";
    until_subscribers(&mut sentinels.connection(old).await.unwrap(), all, 1).await;

    let mut promoted = sentinels.connection(replica).await.unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut promoted)
        .await
        .unwrap();
    let command = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(replica)
        .clone();
    let _: () = command
        .query_async(&mut sentinels.connection(old).await.unwrap())
        .await
        .unwrap();
    until("the hub off the demoted master", || !a.hub.is_ready()).await;
    until_subscribers(&mut sentinels.connection(old).await.unwrap(), all, 0).await;
}

/// Over TLS, Sentinels included, with a private CA: the hubs find the master, deliver,
/// and follow a `SENTINEL FAILOVER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_find_the_master_through_sentinels_over_tls() {
    let sentinels = Sentinels::start_tls().await;
    let root = sentinels.root_certificate().expect("a TLS deployment");
    // The master's host and port come from the Sentinels; the URL gives the scheme.
    let config = || {
        config(&sentinels)
            .url("rediss://127.0.0.1/")
            .root_certificates(root.clone())
    };
    let (a, _) = serve(
        RedisBroker::connect(config()).await.unwrap(),
        HubConfig::default(),
    )
    .await;
    let (b, _) = serve(
        RedisBroker::connect(config()).await.unwrap(),
        HubConfig::default(),
    )
    .await;
    let live = member(&b, "r").await;
    let old = sentinels.master().await;
    let room = &config().channel_room("r");
    until_subscribers(&mut sentinels.connection(old).await.unwrap(), room, 1).await;
    a.hub.to("r").send_text("before");
    until("delivery over TLS", || count(&live) == 1).await;

    sentinels.failover().await;
    let new = within("the failover", sentinels.until_failed_over(old)).await;
    until_subscribers(&mut sentinels.connection(new).await.unwrap(), room, 1).await;
    until("both hubs ready", || a.hub.is_ready() && b.hub.is_ready()).await;
    a.hub.to("r").send_text("after");
    until("delivery after the failover", || count(&live) == 2).await;
    assert_eq!(*live.lock().unwrap(), ["before", "after"]);
}

/// `RedisBroker::connect` fails, and says why, when no Sentinel answers or none knows
/// the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_says_why_no_master_was_found() {
    let sentinels = Sentinels::start().await;
    let unknown = config(&sentinels).sentinel("nosuchmaster", sentinels.sentinel_urls());
    let error = within("connect to fail", RedisBroker::connect(unknown))
        .await
        .expect_err("no such service");
    let why = std::error::Error::source(&error).map(ToString::to_string);
    assert!(
        why.as_deref()
            .is_some_and(|why| why.contains("knows no master of that name")),
        "{why:?}"
    );

    let nobody = format!(
        "redis://127.0.0.1:{}/",
        switchboard_suite::servers::free_port()
    );
    let silent = config(&sentinels).sentinel(SERVICE, [nobody.clone()]);
    let error = within("connect to fail", RedisBroker::connect(silent))
        .await
        .expect_err("no Sentinel");
    let why = std::error::Error::source(&error).map(ToString::to_string);
    let port = nobody
        .trim_start_matches("redis://127.0.0.1:")
        .trim_end_matches('/');
    assert!(
        why.as_deref().is_some_and(|why| why.contains(port)),
        "{why:?}"
    );
}

/// A Sentinel that names the master at `port` whatever it is asked: a stale Sentinel,
/// or one on the wrong side of a split, which a real one cannot be made to be. Its
/// URL. Other commands (redis-rs's `CLIENT SETINFO`) get `+OK`.
async fn lying_sentinel(port: u16) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(answer_lies(tcp, port));
        }
    });
    url
}

async fn answer_lies(tcp: tokio::net::TcpStream, port: u16) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = tcp.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    loop {
        // A command: `*<n>`, then n bulk strings `$<len>` and the bytes.
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let count: usize = line.trim_start_matches('*').trim().parse().unwrap_or(0);
        let mut words = Vec::new();
        for _ in 0..count {
            line.clear();
            read.read_line(&mut line).await?;
            let len: usize = line.trim_start_matches('$').trim().parse().unwrap_or(0);
            let mut word = vec![0; len + 2];
            read.read_exact(&mut word).await?;
            words.push(String::from_utf8_lossy(&word[..len]).to_lowercase());
        }
        let reply = if words.first().is_some_and(|word| word == "sentinel") {
            let port = port.to_string();
            format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{port}\r\n", port.len())
        } else {
            "+OK\r\n".to_owned()
        };
        write.write_all(reply.as_bytes()).await?;
    }
}

/// A Sentinel that names another master (a Redis that is a master, of nothing) is
/// outvoted by the others, though asked first: both hubs on the true master. With
/// one Sentinel against one, no master is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_naming_another_master_is_outvoted() {
    let sentinels = Sentinels::start().await;
    let other = RedisServer::start().await;
    let liar = lying_sentinel(other.port()).await;
    let mut urls = vec![liar.clone()];
    urls.extend(sentinels.sentinel_urls());
    let with_liar = || config(&sentinels).sentinel(SERVICE, urls.clone());
    let (a, _) = serve(
        RedisBroker::connect(with_liar()).await.unwrap(),
        HubConfig::default(),
    )
    .await;
    let (b, _) = serve(
        RedisBroker::connect(with_liar()).await.unwrap(),
        HubConfig::default(),
    )
    .await;
    until("both hubs ready", || a.hub.is_ready() && b.hub.is_ready()).await;
    let all = "switchboard:all";
    let master = sentinels.master().await;
    until_subscribers(&mut sentinels.connection(master).await.unwrap(), all, 2).await;
    assert_eq!(other.subscribers(all).await, 0);

    let split = config(&sentinels).sentinel(SERVICE, [liar, sentinels.sentinel_urls().remove(0)]);
    let error = within("connect to fail", RedisBroker::connect(split))
        .await
        .expect_err("no majority");
    let why = std::error::Error::source(&error).map(ToString::to_string);
    assert!(
        why.as_deref()
            .is_some_and(|why| why.contains("do not agree")),
        "{why:?}"
    );
}
