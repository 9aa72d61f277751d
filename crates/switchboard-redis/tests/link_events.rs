//! The link's events, as a `tracing` subscriber sees them, while a Redis server of the
//! test's own (on a free port) is stopped and started again: one warning when the link
//! goes down, however many attempts the outage takes, and one `info` when it is back,
//! with what was lost meanwhile; and one warning with the count of what a receiving hub
//! missed in an outage of its subscription, not one per envelope.

mod common;

use common::{OwnRedis, config, subscriber_of, unique_prefix, until_ready};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use switchboard::{
    Message,
    hub::{Broker, Envelope, Hub, HubConfig, Inbox, NodeId, Target},
};
use switchboard_redis::{RedisBroker, RedisConfig};
use tracing::{
    Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{Layer, layer::Context, prelude::*};

#[test]
fn a_link_outage_is_one_warning_down_and_one_info_up() {
    let events = Events::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut redis = OwnRedis::start().await;
        let config = RedisConfig::default()
            .url(redis.url())
            .max_backoff(Duration::from_millis(100));
        let broker = RedisBroker::connect(config).await.unwrap();
        let stats = broker.stats();
        let hub = Hub::with_broker(HubConfig::default(), broker);
        events.wait("hub attached to Redis").await;

        redis.kill();
        events.wait("lost the link to Redis; reconnecting").await;
        // Publishes with the link down are lost, and attempts to reconnect fail.
        for _ in 0..3 {
            hub.broadcast("during the outage");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        redis.restart().await;
        let restored = events.wait("link to Redis restored").await;
        assert_eq!(restored.level, Level::INFO);
        assert_eq!(restored.field("lost"), Some(stats.lost().to_string()));
        assert!(stats.lost() >= 1, "{}", stats.lost());
    });
    let down: Vec<_> = events.named("lost the link to Redis; reconnecting");
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(down[0].level, Level::WARN);
    let retries = events.named("Redis still unreachable").len();
    assert!(
        retries >= 1,
        "the outage took no retry: the test shows nothing"
    );
    let warnings = events
        .all()
        .into_iter()
        .filter(|e| e.level <= Level::WARN)
        .count();
    assert_eq!(warnings, 1, "{:?}", events.all());
}

const MISSED: &str = "envelopes from other hubs never arrived (link outage or slow reader)";

#[test]
fn what_a_hub_missed_in_an_outage_is_one_warning_with_its_count() {
    let events = Events::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let redis = OwnRedis::start().await;
        let prefix = unique_prefix("missed-events");
        let a = RedisBroker::new(config(&prefix).url(redis.url())).unwrap();
        let a_node = NodeId::random();
        a.start(Inbox::new(a_node, |_| true));
        let b = RedisBroker::new(config(&prefix).url(redis.url())).unwrap();
        let b_stats = b.stats();
        let b_node = NodeId::random();
        b.start(Inbox::new(b_node, |_| true));
        b.subscribe("r");
        until_ready("a", true, || a.is_ready()).await;
        until_ready("b", true, || b.is_ready()).await;
        common::subscribers_at(&redis.url(), &format!("{prefix}:room:r"), 1).await;
        let publish = || {
            a.publish(Envelope {
                origin: a_node,
                target: Target::Room("r".into()),
                except: None,
                message: Message::text("x"),
                position: None,
            });
        };
        publish();
        let killed = subscriber_of(&redis, b_node).await;
        for i in 0..400 {
            publish();
            if i == 50 {
                let kill = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(&killed)
                    .clone();
                let _: u64 = redis.query(&kill).await;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        until_ready("b", true, || b.is_ready()).await;
        publish();
        let line = events.wait(MISSED).await;
        assert!(b_stats.missed() > 1, "{}", b_stats.missed());
        assert_eq!(line.field("missed"), Some(b_stats.missed().to_string()));
    });
    assert_eq!(events.named(MISSED).len(), 1, "{:?}", events.all());
}

/// One event: its level, message and fields as text.
#[derive(Debug, Clone)]
struct Captured {
    level: Level,
    fields: Vec<(&'static str, String)>,
}

impl Captured {
    fn field(&self, name: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }
}

impl Visit for Captured {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.fields.push((field.name(), format!("{value:?}")));
    }
}

/// A layer that keeps every event.
#[derive(Debug, Default, Clone)]
struct Events(Arc<Mutex<Vec<Captured>>>);

impl Events {
    fn all(&self) -> Vec<Captured> {
        self.0.lock().unwrap().clone()
    }

    fn named(&self, message: &str) -> Vec<Captured> {
        let all = self.all().into_iter();
        all.filter(|e| e.field("message").as_deref() == Some(message))
            .collect()
    }

    async fn wait(&self, message: &str) -> Captured {
        let found = async {
            loop {
                if let Some(event) = self.named(message).pop() {
                    return event;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), found)
            .await
            .unwrap_or_else(|_| panic!("no event {message:?} in {:?}", self.all()))
    }
}

impl<S: Subscriber> Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut captured = Captured {
            level: *event.metadata().level(),
            fields: Vec::new(),
        };
        event.record(&mut captured);
        self.0.lock().unwrap().push(captured);
    }
}
