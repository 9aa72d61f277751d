//! Redis Cluster: which shard a channel or a key lives on, and the map of the shards.
//!
//! A name's slot is the CRC16 (XMODEM) of its hash tag (what is between its first `{`
//! and the first `}` after it, when that is not empty) or of the whole name, modulo
//! 16,384; each slot belongs to one master. The map is asked of every node known
//! (`CLUSTER SLOTS`: the seeds and the nodes of the last map, at once) whenever a
//! shard fails or a slot moves: the link then follows the masters it names.

use crate::{
    ConnectError, Deployment, RedisConfig,
    connect::{self, Connector},
};
use futures_util::future::join_all;
use redis::{
    Cmd, ConnectionAddr, IntoConnectionInfo, RedisError, RedisResult, Value,
    aio::MultiplexedConnection,
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use switchboard_broker::lock;

/// Slots in a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// How long one node may take to answer for the map: the nodes are asked at once, and
/// a silent one (frozen, blackholed) must not hold the answer of the others long.
const MAP_TIMEOUT: Duration = Duration::from_secs(1);

/// The first pause before a command Redis answered `TRYAGAIN` (a multi-key command
/// on a slot mid-move) or `CLUSTERDOWN` (a failover under way) is sent again; doubled
/// at each attempt. Short: a slot's move or a failover ends within moments, and a
/// publish waits no longer than a few such pauses before it counts as lost.
const TRANSIENT_PAUSE: Duration = Duration::from_millis(50);

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
    /// Every node the map names, masters and replicas: asked for the next map.
    nodes: Vec<(String, u16)>,
}

impl SlotMap {
    /// Asks every node in `nodes` at once (each within [`MAP_TIMEOUT`]) for the
    /// cluster's map, and takes the one more than half of those that answered give.
    ///
    /// One node's answer is not trusted alone while others answer: a node cut off
    /// from the others, or one that has not heard of a failover or a slot's move yet,
    /// gives a stale map, and a hub that followed it would subscribe where no
    /// publisher sends. Asking all at once also keeps a dead seed from costing its
    /// timeout before the next is asked.
    ///
    /// The majority is of the nodes that answered, not of the nodes known: a cluster
    /// of one node, or one whose other nodes are down or unreachable from here, still
    /// has a map (what the nodes that can be reached say). Without a majority (a tie
    /// while a failover spreads) the fetch fails, and the link asks again after a wait.
    async fn fetch(connector: &Connector, nodes: &[(String, u16)]) -> RedisResult<Self> {
        let answers = join_all(nodes.iter().map(|(host, port)| async move {
            let node = connector.node(host, *port);
            let answer = tokio::time::timeout(MAP_TIMEOUT, Self::fetch_from(&node, host)).await;
            answer.unwrap_or_else(|_| Err(connect::failed("a cluster node did not answer in time")))
        }))
        .await;
        Self::vote(answers)
    }

    /// The map more than half of the `answers` that are maps give, its slots' owners
    /// compared only: the nodes' lists of replicas differ without either being wrong
    /// (a node leaves out a replica it sees failing, orders them its own way), and
    /// the winner asks the replicas any of its voters named for the next map.
    fn vote(answers: impl IntoIterator<Item = RedisResult<Self>>) -> RedisResult<Self> {
        let mut maps: Vec<(Self, usize)> = Vec::new();
        let mut answered = 0;
        let mut last_error = None;
        for answer in answers {
            let map = match answer {
                Ok(map) => map,
                Err(error) => {
                    last_error = Some(error);
                    continue;
                }
            };
            answered += 1;
            match maps.iter_mut().find(|(known, _)| known.same_owners(&map)) {
                Some((known, votes)) => {
                    *votes += 1;
                    for node in map.nodes {
                        if !known.nodes.contains(&node) {
                            known.nodes.push(node);
                        }
                    }
                }
                None => maps.push((map, 1)),
            }
        }
        if let Some(index) = maps.iter().position(|(_, votes)| 2 * votes > answered) {
            return Ok(maps.swap_remove(index).0);
        }
        if answered > 0 {
            return Err(connect::failed(
                "the cluster's nodes do not agree on its map (no majority)",
            ));
        }
        Err(last_error.unwrap_or_else(|| connect::failed("no cluster node is known")))
    }

    /// Whether both maps give every slot the same master.
    fn same_owners(&self, other: &Self) -> bool {
        // `parse` numbers the masters in the order of their first slot: the same
        // owners give the same numbers, whatever order the ranges came in.
        self.masters == other.masters && self.owners == other.owners
    }

    async fn fetch_from(node: &connect::Node, host: &str) -> RedisResult<Self> {
        let mut conn = node.publisher().await?;
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await?;
        Self::parse(reply, host)
    }

    /// The map in a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …], replicas…], …]`;
    /// see [`endpoint`] for the hosts Redis does not give.
    fn parse(reply: Value, asked: &str) -> RedisResult<Self> {
        let Value::Array(ranges) = reply else {
            return Err(malformed("CLUSTER SLOTS is not an array"));
        };
        let mut map = Self {
            masters: Vec::new(),
            owners: vec![None; usize::from(SLOTS)],
            nodes: Vec::new(),
        };
        for range in ranges {
            let Value::Array(range) = range else {
                return Err(malformed("a slot range is not an array"));
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(master)) =
                (range.first(), range.get(1), range.get(2))
            else {
                return Err(malformed("a slot range is not [start, end, master, …]"));
            };
            let master = endpoint(master, asked)?;
            let slots = usize::try_from(*start)
                .ok()
                .zip(usize::try_from(*end).ok())
                .filter(|&(start, end)| start <= end && end < usize::from(SLOTS))
                .ok_or_else(|| malformed("a slot range out of range"))?;
            let index = match map.masters.iter().position(|known| *known == master) {
                Some(index) => index,
                None => {
                    map.masters.push(master);
                    map.masters.len() - 1
                }
            };
            map.owners[slots.0..=slots.1].fill(Some(index));
            for node in range.get(2..).unwrap_or_default() {
                // A replica is only asked for the next map: one it cannot name is
                // not worth refusing the map for.
                if let Ok(node) = endpoint(node, asked) {
                    if !map.nodes.contains(&node) {
                        map.nodes.push(node);
                    }
                }
            }
        }
        if map.owners.iter().any(Option::is_none) {
            return Err(malformed(
                "some slots have no master (the cluster is not ok)",
            ));
        }
        map.number_masters_by_slot();
        Ok(map)
    }

    /// Numbers the masters in the order of their first slot: Redis before 7 lists
    /// the ranges per node, in an order of its own.
    fn number_masters_by_slot(&mut self) {
        let mut renumbered: Vec<Option<usize>> = vec![None; self.masters.len()];
        let mut masters = Vec::with_capacity(self.masters.len());
        for owner in self.owners.iter_mut().flatten() {
            let old = *owner;
            *owner = *renumbered[old].get_or_insert_with(|| {
                masters.push(self.masters[old].clone());
                masters.len() - 1
            });
        }
        self.masters = masters;
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

    /// The master that serves `name`, as `(host, port)`.
    pub(crate) fn owner_of(&self, name: &str) -> &(String, u16) {
        &self.masters[self.master_of(name)]
    }
}

/// A node of a `CLUSTER SLOTS` range, `[host, port, …]`.
///
/// A nil host (`cluster-preferred-endpoint-type unknown-endpoint`: the nodes are
/// behind an address Redis does not know) and an empty one (a node that does not
/// know its own address yet, in a cluster of one) mean the host `asked`, as Redis's
/// documentation of `CLUSTER SLOTS` says. `?` means Redis knows no endpoint for the
/// node (hostnames preferred, none set): an error, not a guess that would be some
/// other node's address.
fn endpoint(node: &Value, asked: &str) -> RedisResult<(String, u16)> {
    let Value::Array(node) = node else {
        return Err(malformed("a node is not [host, port, …]"));
    };
    let (Some(host), Some(Value::Int(port))) = (node.first(), node.get(1)) else {
        return Err(malformed("a node is not [host, port, …]"));
    };
    let host = match host {
        Value::Nil => asked.to_owned(),
        Value::BulkString(host) => match std::str::from_utf8(host) {
            Ok("") => asked.to_owned(),
            Ok("?") => return Err(malformed("a node whose endpoint Redis does not know (`?`)")),
            Ok(host) => host.to_owned(),
            Err(_) => return Err(malformed("a host that is not UTF-8")),
        },
        _ => return Err(malformed("a host that is not a string")),
    };
    let port = u16::try_from(*port).map_err(|_| malformed("a port out of range"))?;
    Ok((host, port))
}

/// Where a Redis Cluster sent a command: `MOVED <slot> <host>:<port>` (the slot is
/// served there now) or `ASK …` (the slot is moving there: the command goes there
/// once, after `ASKING`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Redirect {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `ASK` rather than `MOVED`.
    pub(crate) asking: bool,
}

impl Redirect {
    /// The redirection in `error`, if it is one.
    pub(crate) fn of(error: &RedisError) -> Option<Self> {
        let (address, _slot) = error.redirect_node()?;
        // The host an IPv6 address perhaps (colons, no brackets).
        let (host, port) = address.rsplit_once(':')?;
        Some(Self {
            host: host.to_owned(),
            port: port.parse().ok()?,
            asking: error.code() == Some("ASK"),
        })
    }

    /// `host:port`.
    pub(crate) fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub(crate) fn node(&self, connector: &Connector) -> connect::Node {
        connector.node(&self.host, self.port)
    }
}

/// Whether Redis answered with an error that passes by itself: `TRYAGAIN` (a
/// multi-key command on a slot whose keys are mid-move), `CLUSTERDOWN` (the cluster
/// lost a master and has not failed over yet).
pub(crate) fn is_transient(error: &RedisError) -> bool {
    matches!(error.code(), Some("TRYAGAIN" | "CLUSTERDOWN"))
}

/// The pause before attempt `attempt` (1 for the second) of a command that met
/// [`is_transient`].
pub(crate) fn transient_pause(attempt: u32) -> Duration {
    TRANSIENT_PAUSE.saturating_mul(1 << attempt.saturating_sub(1).min(8))
}

/// Runs `cmd`, after `ASKING` when `asking` (Redis takes the command there only then).
pub(crate) async fn query_asking(
    conn: &mut MultiplexedConnection,
    cmd: Cmd,
    asking: bool,
) -> RedisResult<Value> {
    if !asking {
        return cmd.query_async(conn).await;
    }
    let mut pipe = redis::pipe();
    pipe.cmd("ASKING").ignore().add_command(cmd);
    let mut replies: Vec<Value> = pipe.query_async(conn).await?;
    Ok(replies.pop().unwrap_or(Value::Nil))
}

/// Where a broker's connections go: to the node its [`Connector`] names (one Redis,
/// or the master the Sentinels name), or to the masters of a Redis Cluster.
#[derive(Debug, Clone)]
pub(crate) struct Servers {
    connector: Connector,
    /// `None` but on a Redis Cluster.
    cluster: Option<Cluster>,
}

/// A Redis Cluster, found from `seeds`; `map` is the latest map the link fetched,
/// shared with the reads, which go to the shard of their stream.
#[derive(Debug, Clone)]
struct Cluster {
    seeds: Arc<[(String, u16)]>,
    map: Arc<Mutex<Option<Arc<SlotMap>>>>,
}

impl Servers {
    /// The servers of `config`'s deployment; an error for a URL the client does not
    /// understand, and what is not supported.
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, ConnectError> {
        let connector = Connector::new(config)?;
        let cluster = match &config.deployment {
            Deployment::Cluster { nodes } => Some(Cluster {
                seeds: seeds(nodes)?.into(),
                map: Arc::default(),
            }),
            _ => None,
        };
        // A prefix with braces would give the rooms' channels and stream keys other
        // hash tags, and so perhaps other shards than the script's.
        if cluster.is_some() && config.prefix.contains(['{', '}']) {
            let why = "a prefix with `{` or `}` on a Redis Cluster".to_owned();
            return Err(ConnectError::Unsupported(why));
        }
        Ok(Self { connector, cluster })
    }

    /// Whether the servers are a Redis Cluster's masters.
    pub(crate) fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// The map of the cluster, fetched again (`None` but on a Redis Cluster), and
    /// kept for the reads.
    pub(crate) async fn fetch_map(&self) -> RedisResult<Option<Arc<SlotMap>>> {
        let Some(Cluster { seeds, map }) = &self.cluster else {
            return Ok(None);
        };
        let mut known = seeds.to_vec();
        if let Some(last) = lock(map).as_ref() {
            let learned = last.masters.iter().chain(&last.nodes);
            for node in learned {
                if !known.contains(node) {
                    known.push(node.clone());
                }
            }
        }
        let fetched = Arc::new(SlotMap::fetch(&self.connector, &known).await?);
        *lock(map) = Some(fetched.clone());
        Ok(Some(fetched))
    }

    /// The master that serves `key`, as `(host, port)` (`None` off a cluster: the
    /// [`Connector`]'s primary); an error while no map of the cluster is known.
    pub(crate) fn owner_of(&self, key: &str) -> RedisResult<Option<(String, u16)>> {
        if self.cluster.is_none() {
            return Ok(None);
        }
        let map = self
            .map()
            .ok_or_else(|| connect::failed("the cluster's map is not known yet"))?;
        Ok(Some(map.owner_of(key).clone()))
    }

    /// The masters of the latest map (`None` off a cluster or while no map is known).
    pub(crate) fn masters(&self) -> Option<Vec<(String, u16)>> {
        self.map().map(|map| map.masters.clone())
    }

    fn map(&self) -> Option<Arc<SlotMap>> {
        let cluster = self.cluster.as_ref()?;
        lock(&cluster.map).clone()
    }
}

#[cfg(test)]
impl Servers {
    /// Keeps a map whose slots `masters` share, as a fetch that got it would.
    pub(crate) fn keep_masters(&self, masters: &[(&str, u16)]) {
        let masters: Vec<(String, u16)> = masters
            .iter()
            .map(|(host, port)| ((*host).to_owned(), *port))
            .collect();
        let owners = (0..usize::from(SLOTS))
            .map(|slot| Some(slot * masters.len() / usize::from(SLOTS)))
            .collect();
        let map = SlotMap {
            nodes: masters.clone(),
            masters,
            owners,
        };
        let cluster = self.cluster.as_ref().expect("a cluster's servers");
        *lock(&cluster.map) = Some(Arc::new(map));
    }
}

/// The nodes' addresses; an error for a URL the client does not understand. Their
/// scheme and credentials are the first's, which the [`Connector`] keeps.
fn seeds(nodes: &[String]) -> Result<Vec<(String, u16)>, ConnectError> {
    nodes
        .iter()
        .map(|url| {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|error| ConnectError::InvalidUrl(Box::new(error)))?;
            // A cluster has database 0 only (`SELECT` is refused there).
            if info.redis_settings().db() != 0 {
                let why = format!("a database other than 0 in a cluster node's URL ({url})");
                return Err(ConnectError::Unsupported(why));
            }
            match info.addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    Ok((host.clone(), *port))
                }
                other => Err(ConnectError::Unsupported(format!(
                    "a cluster node at {other}: nodes are reached over TCP"
                ))),
            }
        })
        .collect()
}

fn malformed(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected CLUSTER SLOTS reply",
        what.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_with_a_database_is_refused() {
        let config = RedisConfig::default().cluster(["redis://127.0.0.1:7000/1"]);
        assert!(matches!(
            Servers::new(&config),
            Err(ConnectError::Unsupported(_))
        ));
        let config = RedisConfig::default().cluster(["redis://127.0.0.1:7000/0"]);
        assert!(Servers::new(&config).is_ok());
    }

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

    /// A slot range: its first and last slot, and its nodes (master first).
    type Range<'a> = (i64, i64, &'a [(&'a str, i64)]);

    /// A `CLUSTER SLOTS` reply of `ranges`.
    fn slots_reply(ranges: &[Range<'_>]) -> Value {
        let node = |(host, port): &(&str, i64)| {
            let host = match *host {
                "nil" => Value::Nil,
                host => Value::BulkString(host.as_bytes().to_vec()),
            };
            Value::Array(vec![
                host,
                Value::Int(*port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |(start, end, nodes): &Range<'_>| {
            let head = [Value::Int(*start), Value::Int(*end)];
            Value::Array(head.into_iter().chain(nodes.iter().map(node)).collect())
        };
        Value::Array(ranges.iter().map(range).collect())
    }

    fn map_of(ranges: &[Range<'_>]) -> RedisResult<SlotMap> {
        SlotMap::parse(slots_reply(ranges), "asked")
    }

    #[test]
    fn the_map_more_than_half_the_answers_give_wins() {
        let current = || {
            map_of(&[
                (0, 8191, &[("a", 1), ("ra", 1)]),
                (8192, 16383, &[("b", 1), ("rb", 1), ("rb", 2)]),
            ])
        };
        // Another honest node: a replica it sees failing left out, the ranges in
        // the order Redis before 7 gives them.
        let honest = map_of(&[
            (8192, 16383, &[("b", 1), ("rb", 2)]),
            (0, 8191, &[("a", 1)]),
        ]);
        // A master that has not heard that `b` took its slots.
        let stale = || map_of(&[(0, 16383, &[("a", 1), ("ra", 1)])]);
        let won = SlotMap::vote([stale(), current(), honest]).unwrap();
        assert_eq!(won.masters(), current().unwrap().masters());
        assert_eq!(won.owners, current().unwrap().owners);
        // The replicas named by any voter are asked next time.
        assert!(won.nodes.contains(&("rb".to_owned(), 2)));
        // One against one is no majority; nor is one against one and a silent node.
        assert!(SlotMap::vote([stale(), current()]).is_err());
        let down = || Err(connect::failed("down"));
        assert!(SlotMap::vote([stale(), current(), down()]).is_err());
        // The answers decide, not the nodes known: one answer alone is the map (a
        // cluster of one, or the only node reachable from here).
        let alone = SlotMap::vote([down(), stale(), down()]).unwrap();
        assert_eq!(alone.masters(), [("a".to_owned(), 1)]);
        assert!(SlotMap::vote([down(), down()]).is_err());
        assert!(SlotMap::vote([]).is_err());
    }

    #[test]
    fn an_unknown_endpoint_is_not_taken_for_the_node_asked() {
        // `?`: hostnames preferred, none set. The master cannot be reached.
        assert!(map_of(&[(0, 16383, &[("?", 7000)])]).is_err());
        // A replica that cannot is only not asked.
        let map = map_of(&[(0, 16383, &[("a", 7000), ("?", 7001)])]).unwrap();
        assert_eq!(map.nodes, [("a".to_owned(), 7000)]);
        // Nil (unknown-endpoint) and empty: where the map was asked.
        for here in ["nil", ""] {
            let map = map_of(&[(0, 16383, &[(here, 7000)])]).unwrap();
            assert_eq!(map.masters(), [("asked".to_owned(), 7000)]);
        }
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
        let nodes =
            [("a", 7000), ("r", 1), ("seed", 7001)].map(|(host, port)| (host.to_owned(), port));
        assert_eq!(map.nodes, nodes);
        // Redis 7's `cluster-preferred-endpoint-type unknown-endpoint`: a nil host.
        let nil = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            Value::Array(vec![Value::Nil, Value::Int(7002)]),
        ])]);
        let map = SlotMap::parse(nil, "seed").unwrap();
        assert_eq!(map.masters(), [("seed".to_owned(), 7002)]);
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
