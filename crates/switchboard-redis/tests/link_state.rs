//! The link state a hub's metrics read (`Broker::metrics`, served as
//! `switchboard_broker_up`) follows a Redis of the test's own that stops and comes
//! back.

mod common;

use common::within;
use std::{
    net::TcpListener as StdListener,
    process::{Child, Command, Stdio},
    time::Duration,
};
use switchboard::hub::{Hub, HubConfig};
use switchboard_redis::{RedisBroker, RedisConfig};

/// A `redis-server` on `port`, without persistence, killed when dropped.
struct Redis(Child);

impl Redis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        Self(child)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn until(hub: &Hub, connected: bool) {
    let what = format!("the link to be {}", if connected { "up" } else { "down" });
    within(&what, async {
        while hub.broker_metrics().map(|m| m.connected) != Some(connected) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_link_state_follows_redis_down_and_up() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let redis = Redis::start(port);
    let broker = within("redis-server to accept", async {
        loop {
            let config = RedisConfig::default()
                .url(&url)
                .max_backoff(Duration::from_millis(50));
            match RedisBroker::connect(config).await {
                Ok(broker) => return broker,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let hub = Hub::with_broker(HubConfig::default(), broker);
    until(&hub, true).await;
    assert!(switchboard::metrics::encode(&hub).contains("switchboard_broker_up 1\n"));

    drop(redis);
    until(&hub, false).await;
    assert!(switchboard::metrics::encode(&hub).contains("switchboard_broker_up 0\n"));

    let _redis = Redis::start(port);
    until(&hub, true).await;
    assert!(hub.broker_metrics().is_some_and(|m| m.reconnects >= 1));
}
