//! Broadcast fan-out, and the slow consumer.
//!
//! `subs` subscribers and one publisher connect to `/room`. The publisher sends binary
//! messages whose payload starts with a sequence number and the send time (nanoseconds
//! on the generator's clock, little-endian); the server sends each to every other member.
//! A message is delivered when every subscriber has it; its latency is publish to last
//! receiver.

use super::{
    BroadcastCase, Common, Latency, Meter, Opts, Output, Round, Timing,
    net::{self, FrameReader, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG},
    new_histogram,
};
use hdrhistogram::Histogram;
use mio::{Events, Poll, net::TcpStream};
use std::{
    io::{self, Read, Write},
    time::{Duration, Instant},
};

/// Messages tracked at once (more than any window or backlog the scenarios reach).
const RING: usize = 1 << 14;

/// While synchronising, a message is republished once nothing has arrived for this long:
/// the previous one has reached every subscriber in the room, but not all are in yet (a
/// client has its 101 a moment before the server has put it in the room). Waiting for
/// quiet, rather than republishing on a clock, keeps a slow fan-out to 10,000 from
/// burying the measurement under stale messages.
const SYNC_QUIET: Duration = Duration::from_millis(100);

/// The slow consumer's socket receive buffer.
const SLOW_RECV_BUFFER: usize = 4096;

/// How long without a message delivered to every subscriber before a run is declared
/// stuck.
const STALL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    seq: u64,
    received: u32,
    done: bool,
}

/// The room as the generator sees it.
struct Room {
    epoch: Instant,
    subs: Vec<Sub>,
    /// Subscribers that must receive a message for it to be delivered.
    needed: u32,
    publisher: TcpStream,
    /// The frame being published and how much of it is written.
    out: Vec<u8>,
    out_written: usize,
    payload: Vec<u8>,
    next_seq: u64,
    /// Messages before this one were published before every subscriber had joined.
    first_counted: u64,
    ring: Vec<Slot>,
    completed: u64,
    /// Deliveries of counted messages.
    deliveries: u64,
    latency: Histogram<u64>,
    scratch: Vec<u8>,
}

struct Sub {
    stream: TcpStream,
    reader: FrameReader,
    /// Stopped reading (the slow consumer): its events are ignored.
    stalled: bool,
}

impl Room {
    fn connect(
        common: &mut Common,
        subs: usize,
        stalled: usize,
        size: usize,
        poll: &mut Poll,
        first_recv_buffer: Option<usize>,
    ) -> Result<Self, String> {
        if size < 16 {
            return Err("--size must be at least 16 (sequence number and timestamp)".into());
        }
        let mut established = net::connect_all_with(
            poll,
            common.addr,
            "/room",
            subs + 1,
            &mut common.sources,
            common.deadline,
            first_recv_buffer,
        )?;
        let publisher = established.pop().ok_or("no publisher connection")?.stream;
        let mut members = Vec::with_capacity(subs);
        for (i, conn) in established.into_iter().enumerate() {
            let mut reader = FrameReader::default();
            reader.feed(&conn.extra, |_, _| {})?;
            members.push(Sub {
                stream: conn.stream,
                reader,
                stalled: i < stalled,
            });
        }
        let payload = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        Ok(Self {
            epoch: Instant::now(),
            subs: members,
            needed: (subs - stalled) as u32,
            publisher,
            out: Vec::with_capacity(size + 16),
            out_written: 0,
            payload,
            next_seq: 0,
            first_counted: u64::MAX,
            ring: vec![Slot::default(); RING],
            completed: 0,
            deliveries: 0,
            latency: new_histogram()?,
            scratch: vec![0; 64 << 10],
        })
    }

    /// Publishes `size`-byte payloads from now on.
    fn resize(&mut self, size: usize) -> Result<(), String> {
        if size < 16 {
            return Err("sizes must be at least 16 (sequence number and timestamp)".into());
        }
        self.payload = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        Ok(())
    }

    /// Waits until every counted message has reached every subscriber.
    fn drain(
        &mut self,
        poll: &mut Poll,
        events: &mut Events,
        deadline: Instant,
    ) -> Result<(), String> {
        let all = self.completed + self.in_flight();
        self.run_window(poll, events, 0, |room| Ok(room.completed < all), deadline)
    }

    fn in_flight(&self) -> u64 {
        self.next_seq.saturating_sub(self.first_counted) - self.completed
    }

    /// Publishes the next message, if the previous ones are fully written.
    fn publish(&mut self) -> Result<bool, String> {
        Ok(self.publish_burst(1)? == 1)
    }

    /// Publishes up to `count` messages with one write, if the previous ones are fully
    /// written; returns how many. A client with several messages ready writes them
    /// together, so the server can read them together: sent one write at a time, the
    /// server reads whatever fraction has arrived when it wakes, and the split, not the
    /// server, would set how it batches.
    fn publish_burst(&mut self, count: u64) -> Result<u64, String> {
        if self.out_written < self.out.len() {
            return Ok(0);
        }
        self.out.clear();
        self.out_written = 0;
        for _ in 0..count {
            self.queue_next();
        }
        self.flush_publisher()?;
        Ok(count)
    }

    /// Appends the next message, stamped with its sequence number and the time.
    fn queue_next(&mut self) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let now = self.epoch.elapsed().as_nanos() as u64;
        if let Some(head) = self.payload.get_mut(..16) {
            head[..8].copy_from_slice(&seq.to_le_bytes());
            head[8..].copy_from_slice(&now.to_le_bytes());
        }
        if let Some(slot) = self.ring.get_mut(seq as usize % RING) {
            *slot = Slot {
                seq,
                received: 0,
                done: false,
            };
        }
        net::push_client_frame(&mut self.out, OP_BINARY, &self.payload);
    }

    fn flush_publisher(&mut self) -> Result<(), String> {
        while self.out_written < self.out.len() {
            match self
                .publisher
                .write(self.out.get(self.out_written..).unwrap_or_default())
            {
                Ok(n) => self.out_written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("publisher write: {e}")),
            }
        }
        Ok(())
    }

    /// Handles readiness of connection `token` (the publisher is `subs.len()`).
    fn handle(&mut self, token: usize) -> Result<(), String> {
        if token == self.subs.len() {
            self.flush_publisher()?;
            return self.drain_publisher();
        }
        let Some(sub) = self.subs.get_mut(token) else {
            return Ok(());
        };
        if sub.stalled {
            return Ok(());
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut pings = Vec::new();
        loop {
            let n = match sub.stream.read(&mut self.scratch) {
                Ok(0) => return Err("server closed a subscriber".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("subscriber read: {e}")),
            };
            let (ring, completed, deliveries, latency, needed, first) = (
                &mut self.ring,
                &mut self.completed,
                &mut self.deliveries,
                &mut self.latency,
                self.needed,
                self.first_counted,
            );
            let mut failure = None;
            sub.reader.feed(
                self.scratch.get(..n).unwrap_or_default(),
                |opcode, kept| match opcode {
                    OP_BINARY => {
                        let (Some(seq), Some(sent)) = (read_u64(kept, 0), read_u64(kept, 8)) else {
                            failure = Some("short broadcast payload".to_owned());
                            return;
                        };
                        if seq < first {
                            return;
                        }
                        *deliveries += 1;
                        let Some(slot) = ring.get_mut(seq as usize % RING) else {
                            return;
                        };
                        if slot.seq != seq || slot.done {
                            return;
                        }
                        slot.received += 1;
                        if slot.received >= needed {
                            slot.done = true;
                            *completed += 1;
                            let micros = now.saturating_sub(sent) / 1000;
                            let _ = latency.record(micros.max(1));
                        }
                    }
                    OP_PING => pings.push(net::client_frame(OP_PONG, kept)),
                    OP_CLOSE => failure = Some("server closed a subscriber".to_owned()),
                    _ => {}
                },
            )?;
            if let Some(failure) = failure {
                return Err(failure);
            }
            if n < self.scratch.len() {
                break;
            }
        }
        for pong in pings {
            net::write_control(&mut sub.stream, &pong).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The publisher receives nothing but the occasional keepalive ping.
    fn drain_publisher(&mut self) -> Result<(), String> {
        let mut buf = [0u8; 256];
        loop {
            match self.publisher.read(&mut buf) {
                Ok(0) => return Err("server closed the publisher".into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(format!("publisher read: {e}")),
            }
        }
    }

    /// Republishes until one message reaches every subscriber: from then on, every
    /// subscriber is in the room, and messages are counted.
    fn synchronise(
        &mut self,
        poll: &mut Poll,
        events: &mut Events,
        deadline: Instant,
    ) -> Result<(), String> {
        // Counting from 0 while synchronising: any message can complete.
        self.first_counted = 0;
        let mut last_arrival = (Instant::now() - SYNC_QUIET, self.deliveries);
        while self.completed == 0 {
            let now = Instant::now();
            if now > deadline {
                return Err("not every subscriber joined the room".into());
            }
            if self.deliveries != last_arrival.1 {
                last_arrival = (now, self.deliveries);
            } else if now - last_arrival.0 >= SYNC_QUIET {
                self.publish()?;
                last_arrival = (now, self.deliveries);
            }
            poll.poll(events, Some(Duration::from_millis(5)))
                .map_err(|e| e.to_string())?;
            for event in events.iter() {
                self.handle(event.token().0)?;
            }
        }
        self.first_counted = self.next_seq;
        self.completed = 0;
        self.latency.reset();
        Ok(())
    }

    /// Keeps `window` messages in flight until `until` (or the meter's rounds end).
    fn run_window(
        &mut self,
        poll: &mut Poll,
        events: &mut Events,
        window: u64,
        mut keep_going: impl FnMut(&mut Self) -> Result<bool, String>,
        deadline: Instant,
    ) -> Result<(), String> {
        let mut last_progress = (Instant::now(), self.completed);
        loop {
            let free = window.saturating_sub(self.in_flight());
            if free > 0 {
                self.publish_burst(free)?;
            }
            if !keep_going(self)? {
                return Ok(());
            }
            let now = Instant::now();
            if now > deadline {
                return Err("deadline passed".into());
            }
            if self.completed != last_progress.1 {
                last_progress = (now, self.completed);
            } else if now - last_progress.0 > STALL {
                return Err(format!(
                    "stalled: {} messages in flight, none delivered to all for {STALL:?}",
                    self.in_flight()
                ));
            }
            poll.poll(events, Some(Duration::from_millis(20)))
                .map_err(|e| e.to_string())?;
            for event in events.iter() {
                self.handle(event.token().0)?;
            }
        }
    }
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

pub(super) fn run(common: &mut Common, opts: &Opts, timing: Timing) -> Result<Output, String> {
    let subs: usize = opts.required("subs")?;
    let sizes: Vec<usize> = opts
        .required::<String>("sizes")?
        .split(',')
        .map(|s| s.parse().map_err(|_| format!("--sizes: cannot parse {s}")))
        .collect::<Result<_, _>>()?;
    let window: u64 = opts.get("window", 8)?;
    let latency_time = Duration::from_millis(opts.get("latency-ms", 1000)?);
    let min_samples: u64 = opts.get("latency-samples", 100)?;

    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(1024);
    let first = sizes.first().copied().ok_or("--sizes is empty")?;
    let mut room = Room::connect(common, subs, 0, first, &mut poll, None)?;
    room.synchronise(&mut poll, &mut events, common.deadline)?;
    let mut cases = Vec::new();
    for size in sizes {
        room.resize(size)?;
        // Throughput: `window` messages in flight, deliveries counted per round.
        let mut meter = Meter::start(common.server_pid, timing);
        let mut measuring = false;
        room.latency.reset();
        room.run_window(
            &mut poll,
            &mut events,
            window.max(1),
            |room| {
                meter.count = room.deliveries;
                if !measuring && meter.measuring() {
                    measuring = true;
                    room.latency.reset();
                }
                Ok(!meter.tick()?)
            },
            common.deadline,
        )?;
        let rounds = meter.into_rounds();
        let loaded_latency = Latency::from_histogram(&room.latency);
        room.drain(&mut poll, &mut events, common.deadline)?;

        // Latency: one message in flight.
        room.latency.reset();
        let start = Instant::now();
        room.run_window(
            &mut poll,
            &mut events,
            1,
            |room| {
                let elapsed = start.elapsed();
                Ok(elapsed < latency_time
                    || (room.latency.len() < min_samples && elapsed < latency_time * 4))
            },
            common.deadline,
        )?;
        let latency = Latency::from_histogram(&room.latency);
        room.drain(&mut poll, &mut events, common.deadline)?;
        cases.push(BroadcastCase {
            size,
            rounds,
            latency,
            loaded_latency,
        });
    }
    Ok(Output::Broadcast { cases })
}

/// A room of `subs` receivers, one of which stops reading after its handshake; the
/// publisher sends `rate` messages a second for `secs` seconds (open loop: the same load
/// for every server, whatever it does with the stalled client), and the server's RSS is
/// sampled every second.
pub(super) fn run_slow(common: &mut Common, opts: &Opts) -> Result<Output, String> {
    let subs: usize = opts.required("subs")?;
    let size: usize = opts.required("size")?;
    let rate: f64 = opts.required("rate")?;
    let secs: f64 = opts.required("secs")?;

    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(1024);
    // Subscriber 0 is the slow one. It must be in the room before synchronising
    // completes, so it reads until then (only its later messages pile up). Its small
    // receive buffer keeps the kernel from absorbing megabytes on its behalf, so what
    // piles up does so in the server, where the scenario looks.
    let mut room = Room::connect(common, subs, 0, size, &mut poll, Some(SLOW_RECV_BUFFER))?;
    room.synchronise(&mut poll, &mut events, common.deadline)?;
    if let Some(slow) = room.subs.first_mut() {
        slow.stalled = true;
    }
    room.needed = (subs - 1) as u32;

    let pid = common.server_pid;
    let start = Instant::now();
    let cpu_before = crate::sys::cpu_time(pid).map_err(|e| e.to_string())?;
    let own_before = crate::sys::own_cpu_time().unwrap_or_default();
    let deliveries_before = room.deliveries;
    let period = Duration::from_secs_f64(1.0 / rate);
    let end = start + Duration::from_secs_f64(secs);
    let mut next_publish = start;
    let mut next_sample = start;
    let mut rss = Vec::new();
    let mut published = 0u64;
    loop {
        let now = Instant::now();
        if now >= next_sample {
            let bytes = crate::sys::rss_bytes(pid).map_err(|e| e.to_string())?;
            rss.push(((now - start).as_secs_f64(), bytes));
            next_sample += Duration::from_secs(1);
        }
        if now >= end {
            break;
        }
        if now > common.deadline {
            return Err("deadline passed".into());
        }
        // Open loop: publish what is due (a blocked publisher socket delays it).
        while Instant::now() >= next_publish && next_publish < end {
            if !room.publish()? {
                break;
            }
            published += 1;
            next_publish += period;
        }
        let wake = next_publish.min(next_sample).min(end);
        let timeout = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(20));
        poll.poll(&mut events, Some(timeout))
            .map_err(|e| e.to_string())?;
        for event in events.iter() {
            room.handle(event.token().0)?;
        }
    }
    // Let the last messages arrive (up to a second), then count what never did.
    let grace = Instant::now() + Duration::from_secs(1);
    while room.completed < published && Instant::now() < grace {
        poll.poll(&mut events, Some(Duration::from_millis(20)))
            .map_err(|e| e.to_string())?;
        for event in events.iter() {
            room.handle(event.token().0)?;
        }
    }
    let elapsed = start.elapsed();
    let round = Round {
        secs: elapsed.as_secs_f64(),
        count: room.deliveries - deliveries_before,
        server_cpu: (crate::sys::cpu_time(pid).map_err(|e| e.to_string())? - cpu_before)
            .as_secs_f64(),
        generator_cpu: (crate::sys::own_cpu_time().unwrap_or_default() - own_before).as_secs_f64(),
    };
    Ok(Output::Slow {
        latency: Latency::from_histogram(&room.latency),
        rss,
        published,
        incomplete: published.saturating_sub(room.completed),
        round,
    })
}
