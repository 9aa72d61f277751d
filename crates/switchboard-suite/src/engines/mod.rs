//! The engines the suite runs on, one module each, named as [`crate::every_engine!`]
//! takes them.

pub mod memory;
pub mod nats;
pub mod redis;
pub mod redis_cluster;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use switchboard_broker::Broker;

/// A prefix (of channels, subjects, keys) no other engine value of this process,
/// nor of another, has: two tests never share a backplane by accident, whatever
/// server they are pointed at. One token, as NATS takes it.
pub(crate) fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Relaxed);
    format!("suite-{}-{n}", std::process::id())
}

/// The broker of a hub in a child process, from the arguments its parent's
/// [`crate::Engine::child_args`] gave: the engine's name, then what it needs.
pub fn broker_from_args(args: &[String]) -> Box<dyn Broker> {
    match args {
        [engine, url, prefix] if engine == redis::ARG => redis::broker(url, prefix),
        [engine, url, prefix] if engine == nats::ARG => nats::child_broker(url, prefix),
        [engine, prefix, nodes @ ..] if engine == redis_cluster::ARG => {
            redis_cluster::broker(nodes, prefix)
        }
        _ => panic!("no engine for child arguments {args:?}"),
    }
}
