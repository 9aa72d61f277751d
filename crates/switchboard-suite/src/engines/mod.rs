//! The engines the suite runs on, one module each, named as [`crate::every_engine!`]
//! takes them.

pub mod memory;
pub mod nats;
pub mod redis;
pub mod redis_cluster;

use switchboard_broker::Broker;

/// The broker of a hub in a child process, from the arguments its parent's
/// [`crate::Engine::child_args`] gave: the engine's name, then what it needs.
pub fn broker_from_args(args: &[String]) -> Box<dyn Broker> {
    match args {
        [engine, url] if engine == redis::ARG => redis::broker(url),
        [engine, url] if engine == nats::ARG => nats::child_broker(url),
        [engine, nodes @ ..] if engine == redis_cluster::ARG => redis_cluster::broker(nodes),
        _ => panic!("no engine for child arguments {args:?}"),
    }
}
