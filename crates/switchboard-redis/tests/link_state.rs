//! The link state a hub's metrics read (`Broker::metrics`, served as
//! `switchboard_broker_up`) follows a Redis of the test's own that stops and comes
//! back.

mod common;

use common::{OwnRedis, within};
use std::time::Duration;
use switchboard::hub::{Hub, HubConfig};
use switchboard_redis::{RedisBroker, RedisConfig};

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
    let mut redis = OwnRedis::start().await;
    let config = RedisConfig::default()
        .url(redis.url())
        .max_backoff(Duration::from_millis(50));
    let broker = RedisBroker::connect(config).await.unwrap();
    let hub = Hub::with_broker(HubConfig::default(), broker);
    until(&hub, true).await;
    assert!(switchboard::metrics::encode(&hub).contains("switchboard_broker_up 1\n"));

    redis.kill();
    until(&hub, false).await;
    assert!(switchboard::metrics::encode(&hub).contains("switchboard_broker_up 0\n"));

    redis.restart().await;
    until(&hub, true).await;
    assert!(hub.broker_metrics().is_some_and(|m| m.reconnects >= 1));
}
