//! The suite's own check: every engine starts, and a broker of each reaches the others.

use switchboard_suite::Engine;

async fn brokers_start<E: Engine>() {
    let engine = E::start().await;
    let _brokers = [engine.broker(), engine.broker()];
}

switchboard_suite::every_engine!(memory, redis, redis_cluster, nats; brokers_start);
