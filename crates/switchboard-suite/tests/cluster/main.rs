//! The cluster's guarantees on every engine: presence on several hubs (lists agree,
//! each change arrives once, a dead hub's entries leave), cluster queries with a
//! stopped hub, losses counted where the engine can fail, and bounded publish
//! queues where the engine queues publishes.

mod loss;
mod presence;
mod queries;
mod queues;
