//! What the bridge keeps in Redis, under the configured prefix (several clusters can share
//! one Redis), and the two Lua scripts that touch it.
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
