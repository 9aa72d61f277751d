//! Redis down when the hub starts: `RedisBroker::new` needs only a valid URL; the hub
//! serves its own members and is not ready, then connects when Redis comes up, and
//! envelopes flow between hubs.

mod common;

use common::{
    OwnRedis, client, config, http_get, node_with, read_until_ends, serve_hub, unique_prefix,
    until_ready, within,
};
use switchboard_redis::{ConnectError, RedisBroker, RedisConfig};

#[tokio::test]
async fn a_hub_starts_without_redis_and_joins_the_others_when_it_comes_up() {
    let mut redis = OwnRedis::reserve();
    let prefix = unique_prefix("start-down");
    let broker = RedisBroker::new(config(&prefix).url(redis.url())).unwrap();
    let mut a = serve_hub(broker).await;
    let (_c1, ws1) = client(&mut a, "/chat/r").await;
    let (_c2, ws2) = client(&mut a, "/chat/r").await;
    assert!(!a.hub.is_ready());
    assert_eq!(http_get(a.addr, "/ready").await.0, 503);
    let local = read_until_ends(ws2, 1);
    a.hub.to("r").send_text("local");
    a.hub.to("r").send_text("end");
    assert_eq!(within("the local member", local).await.unwrap(), ["local"]);

    redis.restart().await;
    until_ready("a", true, || a.hub.is_ready()).await;
    assert_eq!(http_get(a.addr, "/ready").await.0, 200);
    let b = node_with(&prefix, config(&prefix).url(redis.url())).await;
    common::subscribers_at(&redis.url(), &format!("{prefix}:room:r"), 1).await;
    let reader = read_until_ends(ws1, 2);
    b.hub.to("r").send_text("from b");
    b.hub.to("r").send_text("end");
    let got = within("a's member", reader).await.unwrap();
    assert_eq!(got, ["local", "from b"]);
}

#[tokio::test]
async fn new_refuses_only_a_bad_url_and_connect_still_needs_redis() {
    let bad = RedisBroker::new(RedisConfig::default().url("http://nowhere"));
    assert!(matches!(bad, Err(ConnectError::InvalidUrl(_))));
    let down = OwnRedis::reserve();
    let refused = RedisBroker::connect(RedisConfig::default().url(down.url())).await;
    assert!(matches!(refused, Err(ConnectError::Connect(_))));
}
