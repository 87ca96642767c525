//! What the bridge keeps in Redis, under the configured prefix (several clusters can share
//! one Redis), and the Lua scripts that touch it.
//!
//! Per ringcast channel `NAME`:
//!
//! | key or channel | type | holds |
//! |---|---|---|
//! | `PREFIX:ch:NAME` | hash | `seq`: the last offset; `epoch`: this incarnation's epoch |
//! | `PREFIX:hist:NAME` | stream | the kept messages, entry id `0-OFFSET`, field `p`: payload |
//! | `PREFIX:msg:NAME` | pub/sub channel | each message as [`super::message`] encodes it |
//!
//! Per user `USER` held by some node: the pub/sub channel `PREFIX:usr:USER`, on which any node
//! `PUBLISH`es what is sent to the user (`send_user`, `disconnect_user`), subscribed by every
//! node holding connections of the user. Nothing is stored for users.
//!
//! Per channel with presence (docs/cluster.md, "Presence across nodes"): `PREFIX:pn:NAME`
//! (hash: node instance → its connections and anonymous ones), `PREFIX:pd:NAME` (hash: user →
//! nodes holding it), `PREFIX:pl:NAME` (sorted set: the users, for pages in byte order),
//! `PREFIX:pu:LEN:NAME:INSTANCE` (hash per node: user → its connections and `info`), each
//! with a TTL of ten leases refreshed while a node is in the channel; per node instance the
//! lease `PREFIX:live:INSTANCE`.
//!
//! Why a stream for history: entry ids are the offsets, so "everything after N" is one
//! `XRANGE` from `0-(N+1)` and a gap shows as a missing id; `XADD ... MAXLEN` trims in the same
//! command. A list would need the offset stored beside each payload and an index computed from
//! its first entry. Trimming is exact (`MAXLEN N`, not `MAXLEN ~ N`): the namespace's
//! `history_size` is a promise to recovering clients, as it is on one node, and the `~` form
//! keeps up to a whole stream node more (100 entries by default), which for small histories
//! means no bound at all.
//!
//! Both keys have a TTL refreshed by each publish. When the hash is gone (TTL, eviction, or a
//! Redis restart without persistence), the next publish creates it with a new epoch and drops
//! any old history, so a stream only ever holds entries of its hash's epoch. Epochs are the
//! Redis clock in microseconds when the hash was created: they differ from any earlier epoch of
//! the channel unless that clock went back, and stay below 2^53.

/// The publish script: one atomic step that sequences, keeps and publishes.
///
/// KEYS: the hash, the stream. ARGV: broker channel, payload, messages to keep (0: none),
/// history TTL (ms), hash TTL (ms). Returns `{offset, epoch}` (epoch as a decimal string).
pub const PUBLISH: &str = r#"-- ringcast publish, message format 1
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  local t = redis.call('TIME')
  epoch = t[1] .. string.sub('00000' .. t[2], -6)
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local keep = tonumber(ARGV[3])
if keep > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', keep, string.format('0-%d', seq), 'p', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', ARGV[1], struct.pack('>BI8I8', 1, seq, tonumber(epoch)) .. ARGV[2])
return {seq, epoch}
"#;

/// The position script: the channel's position, starting its epoch (with no message yet) when
/// the channel has none, so that subscribers learn the epoch their first messages will carry and
/// can recover from it. The old history of an expired channel goes, as in the publish script.
///
/// KEYS: the hash, the stream. ARGV: hash TTL (ms). Returns `{offset, epoch}` (epoch as a
/// decimal string).
pub const POSITION: &str = r#"-- ringcast position
local h = redis.call('HMGET', KEYS[1], 'seq', 'epoch')
local epoch = h[2]
if not epoch then
  local t = redis.call('TIME')
  epoch = t[1] .. string.sub('00000' .. t[2], -6)
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {tonumber(h[1] or '0'), epoch}
"#;

/// The history script: the position and, when every message after `since` is kept in the
/// same epoch (and within the bounds), those messages, read atomically with the position.
///
/// KEYS: the hash, the stream. ARGV: since offset, since epoch, most messages, most payload
/// bytes. Returns `{offset, epoch, 1, payload...}` (payloads of offsets since+1 ..= offset)
/// or `{offset, epoch, 0}` (not recoverable).
pub const HISTORY: &str = r#"-- ringcast history
local h = redis.call('HMGET', KEYS[1], 'seq', 'epoch')
local seq = tonumber(h[1] or '0')
local epoch = h[2] or '0'
local since = tonumber(ARGV[1])
if epoch ~= ARGV[2] or since > seq or seq - since > tonumber(ARGV[3]) then
  return {seq, epoch, 0}
end
local out = {seq, epoch, 1}
if since == seq then
  return out
end
local entries = redis.call('XRANGE', KEYS[2], string.format('0-%d', since + 1), '+',
  'COUNT', seq - since)
if #entries ~= seq - since then
  return {seq, epoch, 0}
end
local bytes, budget = 0, tonumber(ARGV[4])
for i, e in ipairs(entries) do
  if e[1] ~= string.format('0-%d', since + i) then
    return {seq, epoch, 0}
  end
  bytes = bytes + #e[2][2]
  if bytes > budget then
    return {seq, epoch, 0}
  end
  out[#out + 1] = e[2][2]
end
return out
"#;

/// What the presence scripts share: their keys and arguments, and the functions that keep the
/// node counts per user (`pd`), the users in byte order (`pl`) and the news in step, and that
/// remove the entries of nodes whose lease is gone (`sweep`).
///
/// KEYS: the channel's nodes hash (`pn`: instance → "CONNS ANON"), its users hash (`pd`:
/// user → nodes holding it), its ordered users (`pl`, a sorted set, all scores 0), this
/// node's users (`mine`: user → "CONNS\nINFO"). ARGV: the channel's pub/sub channel, the
/// prefix of every node's users key, the prefix of lease keys, this node's instance, the
/// keys' TTL (ms), news (`1`/`0`), then per script.
macro_rules! presence_lua {
    ($body:literal) => {
        concat!(
            r#"-- ringcast presence
local pn, pd, pl, mine = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local msg, pu_prefix, live_prefix, me = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, news = ARGV[5], ARGV[6] == '1'
local function info_of(v)
  local i = string.find(v, '\n', 1, true)
  if i then return string.sub(v, i + 1) end
  return ''
end
local function conns_of(v)
  local i = string.find(v, '\n', 1, true)
  if not i then return 0 end
  return tonumber(string.sub(v, 1, i - 1)) or 0
end
local function said(kind, user, info)
  if news then redis.call('PUBLISH', msg, '\2' .. kind .. user .. '\0' .. info) end
end
local function joined(user, info)
  if redis.call('HINCRBY', pd, user, 1) == 1 then
    redis.call('ZADD', pl, 0, user)
    said('J', user, info)
  end
end
local function left(user, info)
  if redis.call('HINCRBY', pd, user, -1) <= 0 then
    redis.call('HDEL', pd, user)
    redis.call('ZREM', pl, user)
    said('L', user, info)
  end
end
local function sweep()
  for _, node in ipairs(redis.call('HKEYS', pn)) do
    if node ~= me and redis.call('EXISTS', live_prefix .. node) == 0 then
      local key = pu_prefix .. node
      local entries = redis.call('HGETALL', key)
      for i = 1, #entries, 2 do left(entries[i], info_of(entries[i + 1])) end
      redis.call('DEL', key)
      redis.call('HDEL', pn, node)
    end
  end
end
local function touch()
  for _, k in ipairs({pn, pd, pl, mine}) do redis.call('PEXPIRE', k, ttl) end
end
local function totals(conns, anon)
  if conns == '0' then redis.call('HDEL', pn, me) else redis.call('HSET', pn, me, conns .. ' ' .. anon) end
end
"#,
            $body
        )
    };
}

/// One change of this node's presence in a channel. ARGV after the shared ones: the node's
/// connections in the channel, of them anonymous, the lease (ms), then the user (empty: an
/// anonymous connection), its connections here, its `info` (empty: keep the one it has).
pub const PRESENCE_SET: &str = presence_lua!(
    r#"redis.call('SET', live_prefix .. me, '1', 'PX', ARGV[9])
sweep()
totals(ARGV[7], ARGV[8])
local user = ARGV[10]
if user ~= '' then
  local old = redis.call('HGET', mine, user)
  if tonumber(ARGV[11]) > 0 then
    local info = ARGV[12]
    if info == '' and old then info = info_of(old) end
    redis.call('HSET', mine, user, ARGV[11] .. '\n' .. info)
    if not old then joined(user, info) end
  elseif old then
    redis.call('HDEL', mine, user)
    left(user, info_of(old))
  end
end
touch()
return 1
"#
);

/// All of this node's presence in a channel, after a reconnect (the broker may have lost it,
/// or kept entries the node no longer has). ARGV after the shared ones: the node's
/// connections, of them anonymous, the lease (ms), then pairs of user and "CONNS\nINFO".
pub const PRESENCE_REPLACE: &str = presence_lua!(
    r#"redis.call('SET', live_prefix .. me, '1', 'PX', ARGV[9])
sweep()
local want = {}
for i = 10, #ARGV, 2 do want[ARGV[i]] = true end
local have = redis.call('HGETALL', mine)
for i = 1, #have, 2 do
  if not want[have[i]] then
    redis.call('HDEL', mine, have[i])
    left(have[i], info_of(have[i + 1]))
  end
end
for i = 10, #ARGV, 2 do
  local old = redis.call('HGET', mine, ARGV[i])
  redis.call('HSET', mine, ARGV[i], ARGV[i + 1])
  if not old then joined(ARGV[i], info_of(ARGV[i + 1])) end
end
totals(ARGV[7], ARGV[8])
touch()
return 1
"#
);

/// The lease's periodic work for a channel this node is in: dead nodes' entries removed, this
/// node's keys' TTL refreshed. No ARGV beyond the shared ones.
pub const PRESENCE_SWEEP: &str = presence_lua!(
    r#"sweep()
touch()
return 1
"#
);

/// A channel's presence on the live nodes (dead nodes' entries are removed first). ARGV after
/// the shared ones: `s` (counts) or `p` (a page), the user the page starts after (empty: the
/// first), the page's size. Returns `{users, conns, anonymous}`, for a page then `more` (0/1)
/// and per user `user, conns, info`.
pub const PRESENCE_READ: &str = presence_lua!(
    r#"sweep()
local conns, anon = 0, 0
local nodes = redis.call('HKEYS', pn)
for _, v in ipairs(redis.call('HVALS', pn)) do
  local sp = string.find(v, ' ', 1, true)
  if sp then
    conns = conns + (tonumber(string.sub(v, 1, sp - 1)) or 0)
    anon = anon + (tonumber(string.sub(v, sp + 1)) or 0)
  end
end
local out = {redis.call('HLEN', pd), conns, anon}
if ARGV[7] == 'p' then
  local lo = '-'
  if ARGV[8] ~= '' then lo = '(' .. ARGV[8] end
  local limit = tonumber(ARGV[9])
  local users = redis.call('ZRANGEBYLEX', pl, lo, '+', 'LIMIT', 0, limit + 1)
  if #users > limit then out[4] = 1 else out[4] = 0 end
  for i = 1, math.min(#users, limit) do
    local total, info = 0, ''
    for _, node in ipairs(nodes) do
      local v = redis.call('HGET', pu_prefix .. node, users[i])
      if v then
        total = total + conns_of(v)
        if info == '' then info = info_of(v) end
      end
    end
    out[#out + 1] = users[i]
    out[#out + 1] = total
    out[#out + 1] = info
  end
end
return out
"#
);

/// The history tail script: the position and the newest kept messages, for a `history`
/// request without `since`, read atomically with the position.
///
/// KEYS: the hash, the stream. ARGV: most messages, most payload bytes. Returns `{offset,
/// epoch, truncated (0/1), offset1, payload1, ...}`, oldest first: the newest messages that
/// fit both bounds (`truncated` 1 when older kept ones were left out for the bytes).
pub const HISTORY_TAIL: &str = r#"-- ringcast history tail
local h = redis.call('HMGET', KEYS[1], 'seq', 'epoch')
local out = {tonumber(h[1] or '0'), h[2] or '0', 0}
if not h[2] then
  return out
end
local entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', tonumber(ARGV[1]))
local bytes, budget, last = 0, tonumber(ARGV[2]), #entries
for i, e in ipairs(entries) do
  bytes = bytes + #e[2][2]
  if bytes > budget then
    out[3] = 1
    last = i - 1
    break
  end
end
for i = last, 1, -1 do
  local id = entries[i][1]
  out[#out + 1] = tonumber(string.sub(id, string.find(id, '-', 1, true) + 1))
  out[#out + 1] = entries[i][2][2]
end
return out
"#;

/// A script and its SHA-1 (what `EVALSHA` names it by).
#[derive(Debug, Clone)]
pub struct Script {
    /// The Lua text.
    pub text: &'static str,
    /// Its SHA-1, lowercase hex.
    pub sha: String,
}

impl Script {
    /// The script with its digest.
    pub fn new(text: &'static str) -> Script {
        Script {
            text,
            sha: sha1_smol::Sha1::from(text).digest().to_string(),
        }
    }
}

/// The key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix` (validated by the config).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    fn name(&self, kind: &str, channel: &str) -> Vec<u8> {
        format!("{}:{kind}:{channel}", self.prefix).into_bytes()
    }

    /// The channel's hash (`seq`, `epoch`).
    pub fn hash(&self, channel: &str) -> Vec<u8> {
        self.name("ch", channel)
    }

    /// The channel's history stream.
    pub fn history(&self, channel: &str) -> Vec<u8> {
        self.name("hist", channel)
    }

    /// The channel's pub/sub channel.
    pub fn pubsub(&self, channel: &str) -> Vec<u8> {
        self.name("msg", channel)
    }

    /// The pub/sub channel of what is sent to a user (`UserSend`).
    pub fn user(&self, user: &str) -> Vec<u8> {
        self.name("usr", user)
    }

    /// The user a user pub/sub channel name belongs to, if it is one of ours.
    pub fn user_of<'a>(&self, pubsub: &'a [u8]) -> Option<&'a str> {
        let rest = pubsub.strip_prefix(self.prefix.as_bytes())?;
        let name = rest.strip_prefix(b":usr:")?;
        std::str::from_utf8(name).ok()
    }

    /// The channel's presence keys: nodes (`pn`), users' node counts (`pd`), users in order
    /// (`pl`), and the prefix of each node's users key (the instance follows; the channel's
    /// length comes first so that no channel and instance pair names another's key).
    pub fn presence(&self, channel: &str) -> [Vec<u8>; 4] {
        [
            self.name("pn", channel),
            self.name("pd", channel),
            self.name("pl", channel),
            format!("{}:pu:{}:{channel}:", self.prefix, channel.len()).into_bytes(),
        ]
    }

    /// The broker's boot mark: set once by the first node to reach a Redis, so a node that
    /// finds another mark than the one it saw knows the data went (presence is rewritten
    /// without news then).
    pub fn boot(&self) -> Vec<u8> {
        format!("{}:boot", self.prefix).into_bytes()
    }

    /// The pub/sub channel of what other nodes send node `node`'s connections.
    pub fn node(&self, node: u8) -> Vec<u8> {
        format!("{}:node:{node}", self.prefix).into_bytes()
    }

    /// The key naming the instance that holds node number `node` (a lease).
    pub fn node_id(&self, node: u8) -> Vec<u8> {
        format!("{}:nid:{node}", self.prefix).into_bytes()
    }

    /// The prefix of the nodes' lease keys (the instance follows).
    pub fn live_prefix(&self) -> Vec<u8> {
        format!("{}:live:", self.prefix).into_bytes()
    }

    /// The ringcast channel a pub/sub channel name belongs to, if it is one of ours.
    pub fn channel_of<'a>(&self, pubsub: &'a [u8]) -> Option<&'a str> {
        let rest = pubsub.strip_prefix(self.prefix.as_bytes())?;
        let name = rest.strip_prefix(b":msg:")?;
        std::str::from_utf8(name).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("rc1");
        assert_eq!(k.hash("chat:a"), b"rc1:ch:chat:a");
        assert_eq!(k.history("chat:a"), b"rc1:hist:chat:a");
        assert_eq!(k.pubsub("chat:a"), b"rc1:msg:chat:a");
        assert_eq!(k.channel_of(b"rc1:msg:chat:a"), Some("chat:a"));
        assert_eq!(k.channel_of(b"rc2:msg:chat:a"), None);
        assert_eq!(k.channel_of(b"rc1:ch:chat:a"), None);
        assert_eq!(k.user("alice"), b"rc1:usr:alice");
        assert_eq!(k.user_of(b"rc1:usr:alice"), Some("alice"));
        assert_eq!(k.user_of(b"rc1:msg:alice"), None);
        assert_eq!(k.channel_of(b"rc1:usr:alice"), None);
        assert_eq!(Script::new("return 1").sha.len(), 40);
    }
}
