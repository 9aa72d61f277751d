//! The engines the suite runs on, one module each, named as [`crate::every_engine!`]
//! takes them.

pub mod memory;

use switchboard_broker::Broker;

/// The broker of a hub in a child process, from the arguments its parent's
/// [`crate::Engine::child_args`] gave.
pub fn broker_from_args(args: &[String]) -> Box<dyn Broker> {
    panic!("no engine for child arguments {args:?}")
}
