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
    /// [`engines::broker_from_args`]: the engine's name first, then what reaches
    /// this engine value's backplane (its servers' addresses, its prefix), so that
    /// the child joins this test's hubs and no other's. Called once per child hub
    /// ([`support::ChildHub::start`]). `None` where [`Engine::CROSSES_PROCESSES`] is
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
    ///
    /// How the engine finds the hub's link: on its server, by what the broker tells
    /// the server about it (Redis lists the subscriber connection under the name
    /// the broker gives it, `CLIENT SETNAME switchboard-sub-<node>`, and the engine
    /// kills that client with `CLIENT KILL ID`); or through the brokers it made
    /// itself (NATS keeps each one's `LinkHandle`, and forces the one of `node` to
    /// reconnect: a hub of this process only).
    fn blip(&self, node: NodeId) -> impl Future<Output = ()> + Send;

    /// Stops the engine's servers, as a crash would (no goodbye to their clients),
    /// until [`Engine::restart`].
    fn stop(&mut self) -> impl Future<Output = ()> + Send;

    /// Starts the servers again after [`Engine::stop`], on the same addresses, and
    /// returns once they serve: **empty**, as a server without persistence comes
    /// back (no stream, no message, no subscription of before). An engine whose
    /// server persists (NATS JetStream with `-sd`, say) wipes its storage before
    /// starting it again. The tests of a restart count on it: a stream's history is
    /// gone, and comes back in a new epoch.
    fn restart(&mut self) -> impl Future<Output = ()> + Send;
}

/// Instantiates each generic test `name::<E>()` once per engine, as
/// `engine::name`: `every_engine!(memory, redis; name, other)`. A test that does not
/// apply to an engine (a blip in memory) is not instantiated for it, rather than
/// skipped: tests for fewer engines go in a module of their own, whose tests are then
/// `module::engine::name`.
///
/// The suite's tests name a capability rather than engines, so that the engines
/// of each are listed once, here:
///
/// - `all`: every engine;
/// - `failing`: the engines whose link can fail ([`Engine::CAN_FAIL`]: blips, a
///   stopped or restarted server) and whose hubs can be processes of their own
///   ([`Engine::CROSSES_PROCESSES`]: a SIGKILLed hub);
/// - `queued`: the engines that queue publishes for their link
///   ([`Engine::broker_with_queue`] bounds that queue).
///
/// ```text
/// every_engine!(all; name, other);
/// mod failing {
///     use super::*;
///     every_engine!(failing; after_a_restart);
/// }
/// ```
#[macro_export]
macro_rules! every_engine {
    (all; $($test:ident),+ $(,)?) => {
        $crate::every_engine!(memory, redis, redis_cluster, nats; $($test),+);
    };
    (failing; $($test:ident),+ $(,)?) => {
        $crate::every_engine!(redis, redis_cluster, nats; $($test),+);
    };
    (queued; $($test:ident),+ $(,)?) => {
        $crate::every_engine!(redis, redis_cluster, nats; $($test),+);
    };
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
