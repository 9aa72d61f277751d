//! The cluster's guarantees on every engine: presence on several hubs (lists agree,
//! each change arrives once, a dead hub's entries leave), cluster queries with a
//! stopped hub, and losses counted where the engine can fail.

mod loss;
mod presence;
mod queries;
mod queues;
