//! Idle memory: the server's resident memory before and after `conns` connections have
//! completed their handshake and gone quiet.

use super::{Common, Opts, Output, net};
use mio::{Events, Poll};
use std::time::{Duration, Instant};

/// Connections opened (and kept) before the first reading, so that one-time costs (the
/// first task, lazily built tables, the allocator's first arenas) are not charged to the
/// measured connections.
const WARM: usize = 100;

pub(super) fn run(common: &mut Common, opts: &Opts) -> Result<Output, String> {
    let conns: usize = opts.required("conns")?;
    let path: String = opts.get("path", "/room".to_owned())?;
    // How long the connections stay quiet before the second reading.
    let quiet = Duration::from_millis(opts.get("settle-ms", 1500)?);
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let warm = net::connect_all(
        &mut poll,
        common.addr,
        &path,
        WARM,
        &mut common.sources,
        common.deadline,
    )?;
    settle(&mut poll, quiet / 2);
    let rss_before = crate::sys::rss_bytes(common.server_pid).map_err(|e| e.to_string())?;
    // A second poll: the tokens of the measured connections start again at 0.
    let mut poll_measured = Poll::new().map_err(|e| e.to_string())?;
    let measured = net::connect_all(
        &mut poll_measured,
        common.addr,
        &path,
        conns,
        &mut common.sources,
        common.deadline,
    )?;
    settle(&mut poll_measured, quiet);
    let rss_after = crate::sys::rss_bytes(common.server_pid).map_err(|e| e.to_string())?;
    drop((warm, measured));
    Ok(Output::Idle {
        conns,
        rss_before,
        rss_after,
    })
}

/// Waits, ignoring whatever the connections receive (nothing, from a quiet server).
fn settle(poll: &mut Poll, time: Duration) {
    let end = Instant::now() + time;
    let mut events = Events::with_capacity(1024);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if left.is_zero() || poll.poll(&mut events, Some(left)).is_err() {
            break;
        }
    }
}
