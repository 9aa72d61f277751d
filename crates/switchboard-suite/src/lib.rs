//! One test suite for every engine behind [`Broker`]: the cluster's guarantees
//! (presence on several hubs, dead-hub cleanup, cluster queries with a stopped hub,
//! counted losses, bounded queues) and the streams' (gapless recovery across hubs and
//! across a broker blip) are written once, generic over [`Engine`], and run on each
//! engine that they apply to ([`every_engine!`]).
//!
//! Each test starts the servers of its own engine on free ports ([`Engine::start`])
//! and stops them when it ends, so that tests may kill, pause and restart them, and
//! run in parallel.

use std::future::Future;
use switchboard_broker::{Broker, NodeId};

pub mod engines;
pub mod load;
pub mod servers;
pub mod support;

/// A backplane the suite runs on: its servers, started for one test, and brokers for
/// the hubs of that test.
pub trait Engine: Sized + Send + Sync + 'static {
    /// The engine's name in test names and messages: `memory`, `redis`,
    /// `redis_cluster`, `nats`.
    const NAME: &'static str;

    /// Whether a hub in another process can join this backplane ([`Engine::child_args`]):
    /// not in memory.
    const CROSSES_PROCESSES: bool;

    /// Whether the link between a hub and the engine can fail ([`Engine::blip`],
    /// [`Engine::stop`]): not in memory.
    const CAN_FAIL: bool;

    /// Starts this engine's servers for one test, on free ports, and returns once they
    /// serve. Dropping the engine stops them.
    fn start() -> impl Future<Output = Self> + Send;

    /// A broker for one more hub on this backplane (every broker of one engine value
    /// reaches the others), connecting in the background if it must.
    fn broker(&self) -> Box<dyn Broker>;

    /// A broker like [`Engine::broker`]'s whose queue of publishes waiting for the
    /// engine holds at most `max_pending_publishes` (0 taken as 1): past it, a publish
    /// is dropped and counted as lost. Where publishing does not wait in a queue (in
    /// memory), the same as [`Engine::broker`].
    fn broker_with_queue(&self, max_pending_publishes: usize) -> Box<dyn Broker>;

    /// What a hub in a child process needs to make its broker with
    /// [`engines::broker_from_args`]; `None` where [`Engine::CROSSES_PROCESSES`] is
    /// `false`.
    fn child_args(&self) -> Option<Vec<String>>;

    /// Returns once the engine has `hubs` hubs subscribed to `room`: a hub's join
    /// subscribes in the background, and what is published before reaches no one
    /// there. Panics when that does not happen in time.
    fn subscribed(&self, room: &str, hubs: usize) -> impl Future<Output = ()> + Send;

    /// Cuts the link of the hub `node` to the engine, as a network blip would (its
    /// subscriptions gone, what other hubs publish meanwhile lost to it), and returns
    /// once it is cut; the hub reconnects by itself. The other hubs' links stay up, so
    /// that what they publish meanwhile is what the cut hub misses: an engine that
    /// can only cut every link at once makes the tests that count what was missed
    /// show nothing. Does nothing where [`Engine::CAN_FAIL`] is `false`.
    fn blip(&self, node: NodeId) -> impl Future<Output = ()> + Send;

    /// Stops the engine's servers, as a crash would, until [`Engine::restart`]; what
    /// they stored may be lost.
    fn stop(&mut self) -> impl Future<Output = ()> + Send;

    /// Starts the servers again after [`Engine::stop`], on the same addresses, and
    /// returns once they serve.
    fn restart(&mut self) -> impl Future<Output = ()> + Send;
}

/// Instantiates each generic test `name::<E>()` once per engine, as
/// `engine::name`: `every_engine!(memory, redis; name, other)`. A test that does not
/// apply to an engine (a blip in memory) is not instantiated for it, rather than
/// skipped: tests for fewer engines go in a module of their own, whose tests are then
/// `module::engine::name`.
///
/// ```ignore
/// every_engine!(memory, redis; name, other);
/// mod failing {
///     use super::*;
///     every_engine!(redis; after_a_restart);
/// }
/// ```
#[macro_export]
macro_rules! every_engine {
    ($($engine:ident),+ ; $($test:ident),+ $(,)?) => {
        $crate::every_engine!(@tests [$($test),+] $($engine),+);
    };
    (@tests $tests:tt $($engine:ident),+) => {
        $( $crate::every_engine!(@engine $engine $tests); )+
    };
    (@engine $engine:ident [$($test:ident),+]) => {
        mod $engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test::<$crate::engines::$engine::Engine>().await;
                }
            )+
        }
    };
}
