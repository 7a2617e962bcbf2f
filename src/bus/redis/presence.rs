//! The shared presence record on Redis: a hash per call, `callpay:presence:{call_id}`, field =
//! node id, value = JSON `{expires_ms, n, participants}`. Each node writes only its own field.
//!
//! No node's clock is trusted: both scripts below read Redis's own clock (`TIME`), so an entry
//! expires when Redis says so, and a node whose clock runs fast or slow neither deletes live
//! entries nor keeps dead ones. Each write carries the node's write number `n`, taken before
//! the participants are read: a write older than the entry already stored (a renewal that read
//! the room just before a leave was written) is refused, so a renewal can never bring back a
//! participant who just left. A leave is stored as an empty entry that expires like any other.
//! Reading removes expired entries in the same script, atomically.

use super::super::{BusError, NodePresence, Presence, PresenceEntry};
use super::{Link, REDIS_TIMEOUT};
use callpay_protocol::Participant;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn presence_key(call_id: &str) -> String {
    format!("callpay:presence:{call_id}")
}

/// KEYS[1] the call's hash; ARGV node, ttl (ms), write number, participants (JSON), key ttl
/// (ms). Answers 1 if written, 0 if a newer write of this node is already there.
const PUT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local ok, entry = pcall(cjson.decode, old)
  if ok and type(entry) == 'table' and tonumber(entry['n'] or 0) > tonumber(ARGV[3]) then
    return 0
  end
end
local expires = string.format('%d', now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], ARGV[1], '{"expires_ms":' .. expires .. ',"n":' .. ARGV[3] .. ',"participants":' .. ARGV[4] .. '}')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"#;

/// KEYS[1] the call's hash. Removes the entries Redis's clock says have expired (and any it
/// cannot read) and answers the rest as [node, entry, node, entry, …].
const READ: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local ok, entry = pcall(cjson.decode, all[i + 1])
  if ok and type(entry) == 'table' and tonumber(entry['expires_ms'] or 0) > now then
    live[#live + 1] = all[i]
    live[#live + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return live
"#;

/// This node's handle on the record.
pub(super) struct PresenceRecord {
    conn: Link,
    node: String,
    /// This node's write numbers (a node id is per process, so they only grow for its field).
    writes: AtomicU64,
    /// The scripts' SHA1s as Redis answered `SCRIPT LOAD` (PUT, READ); loaded on first use and
    /// again whenever Redis has forgotten them (a restart).
    hashes: Mutex<Option<[String; 2]>>,
}

/// Which script.
#[derive(Clone, Copy)]
enum Script {
    Put = 0,
    Read = 1,
}

impl PresenceRecord {
    pub(super) fn new(conn: Link, node: String) -> Self {
        Self { conn, node, writes: AtomicU64::new(0), hashes: Mutex::new(None) }
    }

    /// A number for a write whose participants are about to be read: see the module's doc.
    pub(super) fn next_write(&self) -> u64 {
        self.writes.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Writes this node's participants for each call (empty: it has nobody there now), valid
    /// for `ttl` by Redis's clock unless written again. `number` is from
    /// [`PresenceRecord::next_write`], taken before the participants were read.
    pub(super) async fn put(
        &self,
        calls: &[(String, Vec<Participant>)],
        ttl: Duration,
        number: u64,
    ) -> Result<(), BusError> {
        if calls.is_empty() {
            return Ok(());
        }
        let ttl_ms = ttl.as_millis().max(1) as u64;
        // The key outlives its entries: a call's record goes once no node has written it for
        // three expiries.
        let key_ttl = ttl_ms * 3;
        let mut args = Vec::with_capacity(calls.len());
        for (call_id, participants) in calls {
            let list = serde_json::to_string(participants).map_err(|e| BusError::Unavailable(e.to_string()))?;
            args.push((
                presence_key(call_id),
                vec![self.node.clone(), ttl_ms.to_string(), number.to_string(), list, key_ttl.to_string()],
            ));
        }
        self.run(Script::Put, &args).await.map(drop)
    }

    /// Other nodes' unexpired entries for each call, in the order asked.
    pub(super) async fn read(&self, call_ids: &[String]) -> Result<Vec<Presence>, BusError> {
        if call_ids.is_empty() {
            return Ok(Vec::new());
        }
        let args: Vec<(String, Vec<String>)> = call_ids.iter().map(|c| (presence_key(c), Vec::new())).collect();
        let replies = self.run(Script::Read, &args).await?;
        replies
            .iter()
            .map(|reply| {
                let flat: Vec<String> =
                    redis::from_redis_value_ref(reply).map_err(|e| BusError::Unavailable(e.to_string()))?;
                let mut nodes = Presence::new();
                for pair in flat.chunks_exact(2) {
                    let (node, value) = (&pair[0], &pair[1]);
                    if *node == self.node {
                        continue;
                    }
                    // An empty entry (a leave that has not expired yet) is kept: its number says
                    // which of the node's joins and leaves it already shows.
                    if let Ok(entry) = serde_json::from_str::<PresenceEntry>(value) {
                        nodes.insert(node.clone(), NodePresence { write: entry.n, participants: entry.participants });
                    }
                }
                Ok(nodes)
            })
            .collect()
    }

    /// Runs `script` once per (key, arguments), loading the scripts first if this node has not
    /// yet, or if Redis no longer has them (a fresh or restarted server, a new cluster master).
    async fn run(&self, script: Script, calls: &[(String, Vec<String>)]) -> Result<Vec<redis::Value>, BusError> {
        let unavailable = |e: redis::RedisError| BusError::Unavailable(e.to_string());
        let known = self.hashes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let hashes = match known {
            Some(h) => h,
            None => self.load().await.map_err(unavailable)?,
        };
        let cmds = |hash: &str| -> Vec<redis::Cmd> {
            calls
                .iter()
                .map(|(key, args)| redis::cmd("EVALSHA").arg(hash).arg(1).arg(key).arg(args).to_owned())
                .collect()
        };
        match self.run_once(cmds(&hashes[script as usize])).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let hashes = self.load().await.map_err(unavailable)?;
                self.run_once(cmds(&hashes[script as usize])).await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }

    /// Loads both scripts (on every master of a cluster) and remembers their hashes.
    async fn load(&self) -> redis::RedisResult<[String; 2]> {
        let mut hashes = [String::new(), String::new()];
        for (i, code) in [PUT, READ].into_iter().enumerate() {
            let reply = self.run_once(vec![redis::cmd("SCRIPT").arg("LOAD").arg(code).to_owned()]).await?;
            hashes[i] = redis::from_redis_value_ref(reply.first().unwrap_or(&redis::Value::Nil))?;
        }
        *self.hashes.lock().unwrap_or_else(|p| p.into_inner()) = Some(hashes.clone());
        Ok(hashes)
    }

    async fn run_once(&self, cmds: Vec<redis::Cmd>) -> redis::RedisResult<Vec<redis::Value>> {
        match tokio::time::timeout(REDIS_TIMEOUT, self.conn.run(cmds)).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "presence call timed out"))),
        }
    }
}
