//! Redis Cluster: which shard a channel or a key lives on, and the map of the shards.
//!
//! A name's slot is the CRC16 (XMODEM) of its hash tag (what is between its first `{`
//! and the first `}` after it, when that is not empty) or of the whole name, modulo
//! 16,384; each slot belongs to one master. The map is asked of any node that answers
//! (`CLUSTER SLOTS`), again after every failure or move: the link then reconnects to
//! the masters it names.

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult, Value};
use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

/// Slots in a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// How long one node may take to answer for the map before the next is asked.
const MAP_TIMEOUT: Duration = Duration::from_secs(1);

/// The slot of a channel or key, as Redis computes it.
pub(crate) fn slot(name: &str) -> u16 {
    crc16(hash_tag(name.as_bytes())) % SLOTS
}

/// The part of `name` Redis hashes: its hash tag, if it has a non-empty one.
fn hash_tag(name: &[u8]) -> &[u8] {
    let Some(open) = name.iter().position(|&byte| byte == b'{') else {
        return name;
    };
    match name[open + 1..].iter().position(|&byte| byte == b'}') {
        Some(len) if len > 0 => &name[open + 1..open + 1 + len],
        _ => name,
    }
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), Redis Cluster's key hash.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
    }
    crc
}

/// Which master serves each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotMap {
    /// The masters, as `(host, port)`, in the order of their first slot.
    masters: Vec<(String, u16)>,
    /// Per slot, the index of its master in `masters` (`None`: no master serves it).
    owners: Vec<Option<usize>>,
}

impl SlotMap {
    /// Asks the seeds in turn (then gives up) for the cluster's map.
    pub(crate) async fn fetch(seeds: &[ConnectionInfo]) -> RedisResult<Self> {
        let mut last = None;
        for seed in seeds {
            match tokio::time::timeout(MAP_TIMEOUT, Self::fetch_from(seed)).await {
                Ok(Ok(map)) => return Ok(map),
                Ok(Err(error)) => last = Some(error),
                Err(_) => last = Some(unreachable("a cluster node did not answer in time")),
            }
        }
        Err(last.unwrap_or_else(|| unreachable("no cluster node is configured")))
    }

    async fn fetch_from(seed: &ConnectionInfo) -> RedisResult<Self> {
        let client = redis::Client::open(seed.clone())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await?;
        let fallback_host = match seed.addr() {
            ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.as_str(),
            _ => "127.0.0.1",
        };
        Self::parse(reply, fallback_host)
    }

    /// The map in a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …], replicas…], …]`;
    /// an empty host (Redis does not know how it is reached) is the one asked.
    fn parse(reply: Value, asked: &str) -> RedisResult<Self> {
        let Value::Array(ranges) = reply else {
            return Err(malformed("CLUSTER SLOTS is not an array"));
        };
        let mut map = Self {
            masters: Vec::new(),
            owners: vec![None; usize::from(SLOTS)],
        };
        for range in ranges {
            let Value::Array(range) = range else {
                return Err(malformed("a slot range is not an array"));
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (range.first(), range.get(1), range.get(2))
            else {
                return Err(malformed("a slot range is not [start, end, master, …]"));
            };
            let (Some(Value::BulkString(host)), Some(Value::Int(port))) =
                (master.first(), master.get(1))
            else {
                return Err(malformed("a master is not [host, port, …]"));
            };
            let host = match std::str::from_utf8(host) {
                Ok("") | Ok("?") => asked.to_owned(),
                Ok(host) => host.to_owned(),
                Err(_) => return Err(malformed("a host that is not UTF-8")),
            };
            let port = u16::try_from(*port).map_err(|_| malformed("a port out of range"))?;
            let slots = usize::try_from(*start)
                .ok()
                .zip(usize::try_from(*end).ok())
                .filter(|&(start, end)| start <= end && end < usize::from(SLOTS))
                .ok_or_else(|| malformed("a slot range out of range"))?;
            let master = (host, port);
            let index = match map.masters.iter().position(|known| *known == master) {
                Some(index) => index,
                None => {
                    map.masters.push(master);
                    map.masters.len() - 1
                }
            };
            map.owners[slots.0..=slots.1].fill(Some(index));
        }
        if map.owners.iter().any(Option::is_none) {
            return Err(malformed(
                "some slots have no master (the cluster is not ok)",
            ));
        }
        Ok(map)
    }

    /// The masters, each `(host, port)`, by index.
    pub(crate) fn masters(&self) -> &[(String, u16)] {
        &self.masters
    }

    /// The index (in [`SlotMap::masters`]) of the master that serves `name`.
    pub(crate) fn master_of(&self, name: &str) -> usize {
        // Every slot has a master: `parse` refuses a map with holes.
        self.owners[usize::from(slot(name))].unwrap_or(0)
    }
}

/// Where a broker's connections go: one Redis, or the masters of a cluster.
#[derive(Debug, Clone)]
pub(crate) enum Servers {
    /// One Redis (or a proxy): everything on one connection of each kind.
    Single(redis::Client),
    /// A Redis Cluster, found from `seeds`; `map` is the latest map the link fetched,
    /// shared with the reads, which go to the shard of their stream.
    Cluster {
        seeds: Arc<[ConnectionInfo]>,
        map: Arc<Mutex<Option<Arc<SlotMap>>>>,
    },
}

impl Servers {
    /// The map of the cluster, fetched again (`None` for a single Redis), and kept
    /// for the reads.
    pub(crate) async fn fetch_map(&self) -> RedisResult<Option<Arc<SlotMap>>> {
        let Self::Cluster { seeds, map } = self else {
            return Ok(None);
        };
        let fetched = Arc::new(SlotMap::fetch(seeds).await?);
        *map.lock().unwrap_or_else(PoisonError::into_inner) = Some(fetched.clone());
        Ok(Some(fetched))
    }

    /// A client for master `index` of `map`, or the single Redis's.
    pub(crate) fn client(&self, map: Option<&SlotMap>, index: usize) -> RedisResult<redis::Client> {
        match (self, map) {
            (Self::Single(client), _) => Ok(client.clone()),
            (Self::Cluster { .. }, Some(map)) => {
                let (host, port) = &map.masters()[index];
                self.client_at(host, *port)
            }
            (Self::Cluster { .. }, None) => Err(unreachable("the cluster's map is not known yet")),
        }
    }

    /// A client for the node at `host:port`, with the seeds' scheme and credentials
    /// (the single Redis's, on a single Redis).
    pub(crate) fn client_at(&self, host: &str, port: u16) -> RedisResult<redis::Client> {
        match self {
            Self::Single(client) => Ok(client.clone()),
            Self::Cluster { seeds, .. } => redis::Client::open(node_info(&seeds[0], host, port)),
        }
    }

    /// Where `key` is served: a name for the node (empty for a single Redis), and a
    /// client for it; an error while no map of the cluster is known.
    pub(crate) fn node_of(&self, key: &str) -> RedisResult<(String, redis::Client)> {
        match self {
            Self::Single(client) => Ok((String::new(), client.clone())),
            Self::Cluster { map, .. } => {
                let map = map.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let map = map.ok_or_else(|| unreachable("the cluster's map is not known yet"))?;
                let index = map.master_of(key);
                let (host, port) = &map.masters()[index];
                Ok((format!("{host}:{port}"), self.client(Some(&map), index)?))
            }
        }
    }
}

/// The connection to another node of the cluster, with `seed`'s scheme (TLS or not),
/// credentials and settings.
pub(crate) fn node_info(seed: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match seed.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    seed.clone().set_addr(addr)
}

/// The nodes' URLs as connections; an error for the first the client does not understand.
pub(crate) fn seeds(nodes: &[String]) -> RedisResult<Vec<ConnectionInfo>> {
    nodes
        .iter()
        .map(|url| url.as_str().into_connection_info())
        .collect()
}

fn malformed(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected CLUSTER SLOTS reply",
        what.to_owned(),
    ))
}

fn unreachable(why: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_s() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("bar"), 5061);
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
        assert_eq!(slot(""), 0);
    }

    #[test]
    fn a_rooms_channel_hashes_where_its_stream_keys_do() {
        let config = crate::RedisConfig::default().cluster(["redis://127.0.0.1:7000/"]);
        for room in ["lobby", "{x}", "a}b", "}", "{", "{}", "a{b}c", "", "}{"] {
            let channel = config.channel_room(room);
            for key in config.stream_keys(room) {
                assert_eq!(slot(&key), slot(&channel), "{room:?}: {key} and {channel}");
            }
        }
        // Rooms are spread over the slots, not all on the prefix's.
        assert_ne!(
            slot(&config.channel_room("a")),
            slot(&config.channel_room("b"))
        );
    }

    #[test]
    fn a_map_is_read_from_cluster_slots() {
        let node = |host: &str, port| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |start, end, master| {
            Value::Array(vec![
                Value::Int(start),
                Value::Int(end),
                master,
                node("r", 1),
            ])
        };
        let reply = Value::Array(vec![
            range(0, 5460, node("a", 7000)),
            range(5461, 10922, node("", 7001)),
            range(10923, 16383, node("a", 7000)),
        ]);
        let map = SlotMap::parse(reply, "seed").unwrap();
        assert_eq!(
            map.masters(),
            [("a".to_owned(), 7000), ("seed".to_owned(), 7001)]
        );
        assert_eq!(map.master_of("bar"), 0);
        assert_eq!(map.master_of("{x}"), map.master_of("x"));
        let holes = Value::Array(vec![range(0, 5460, node("a", 7000))]);
        assert!(SlotMap::parse(holes, "seed").is_err());
        for bad in [
            Value::Nil,
            Value::Array(vec![Value::Nil]),
            Value::Array(vec![range(5, 4, node("a", 1))]),
            Value::Array(vec![range(0, 16384, node("a", 1))]),
            Value::Array(vec![range(0, 16383, node("a", 70000))]),
        ] {
            assert!(SlotMap::parse(bad.clone(), "seed").is_err(), "{bad:?}");
        }
    }
}
