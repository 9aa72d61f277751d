//! What `RedisBroker::connect` says when it cannot connect: its own error, with the
//! Redis client's as the cause.

use std::error::Error;
use switchboard_redis::{ConnectError, RedisBroker, RedisConfig};

#[tokio::test]
async fn a_url_that_is_not_redis_is_an_invalid_url() {
    let error = RedisBroker::connect(RedisConfig::default().url("http://127.0.0.1/"))
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::InvalidUrl(_)), "{error:?}");
    assert_eq!(error.to_string(), "invalid redis url");
    assert!(error.source().is_some(), "the client's error is the cause");
}

#[tokio::test]
async fn an_unreachable_redis_is_a_connect_error_with_its_cause() {
    // Port 1 (tcpmux) is closed on any machine this runs on: refused at once.
    let error = RedisBroker::connect(RedisConfig::default().url("redis://127.0.0.1:1/"))
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Connect(_)), "{error:?}");
    assert_eq!(error.to_string(), "could not connect to redis");
    let cause = error.source().expect("the client's error is the cause");
    assert!(!cause.to_string().is_empty());
}
