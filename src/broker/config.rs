//! `[cluster]`: which broker the node shares its channels through, and every bound of the
//! bridge. Off unless `redis` is set. `docs/cluster.md` has one row per field.

use super::redis::url::RedisUrl;
use serde::Deserialize;

/// The `[cluster]` table of the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Redis server, `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`; none: clustering is off
    /// (the default).
    pub redis: Option<String>,
    /// This node's name in the broker (connection names; presence later); none: hostname and
    /// process id (`web-1-4711`). 1 to 64 characters of `[A-Za-z0-9_.:-]`.
    pub node: Option<String>,
    /// Prefix of every key and broker channel, so several clusters can share one Redis.
    /// 1 to 64 characters of `[A-Za-z0-9_.:-]`.
    pub prefix: String,
    /// Most messages one channel keeps in the broker, whatever its namespace asks; also the
    /// most a recovery replays. Memory: in Redis, this many payloads per channel with history.
    pub history_size_max: u32,
    /// Life of a channel's sequence and history in Redis after its last publish, in seconds
    /// (refreshed by every publish). When it passes, the channel is forgotten and its next
    /// publish starts a new epoch.
    pub key_ttl_s: u64,
    /// Commands the queue from the shards to the bridge holds. Overflow: the command is refused
    /// (`queue_overflows`). Memory: ≈100 bytes each plus the payloads queued.
    pub queue_capacity: usize,
    /// Payload and name bytes the queue holds (publishes and user sends queued while Redis is
    /// slow). Overflow: the command is refused as for a full queue (`queue_overflows`); an
    /// empty queue always takes one. Memory: this much, beside `queue_capacity` × ≈100 bytes.
    pub queue_bytes_max: usize,
    /// Requests the bridge has sent and not yet seen answered (pipelined publishes, history
    /// reads). At the bound it stops taking commands from the queue until answers arrive.
    pub in_flight_max: usize,
    /// Largest reply or message read from Redis, and most bytes waiting to be written per
    /// connection (the bridge stops taking commands past it). A reply above it is a protocol
    /// error: the connection is dropped and made again. A history read returns at most half of
    /// it (more is answered "not recoverable"). Memory: up to twice this per connection.
    pub buffer_bytes_max: usize,
    /// Channels plus patterns the bridge keeps subscribed. Overflow: `SubscribeRefused`,
    /// counted (`subscribe_refusals`). Memory: ≈100 bytes plus the name each.
    pub channels_max: usize,
    /// Time a connection, a request or a ping may go unanswered before the broker counts as
    /// lost (pings are sent after half of it without traffic).
    pub timeout_ms: u64,
    /// First delay before reconnecting; doubled per failed attempt, with jitter.
    pub reconnect_min_ms: u64,
    /// Longest delay between reconnection attempts.
    pub reconnect_max_ms: u64,
    /// Life of this node's presence entries in the broker without renewal: the bridge renews
    /// its lease every third of it, so a node that dies (`kill -9`, a lost host) leaves no
    /// users in any channel's presence once this has passed (the next sweep or read removes
    /// them, with their leave news). Memory: none beyond the entries.
    pub presence_lease_ms: u64,
    /// This node's number in connection ids (0-255), unique in the cluster; none: derived
    /// from the node's name (FNV-1a mod 256). Two live nodes with one number are reported at
    /// connect (a log line and `bridge_node_id_conflicts`): give each node its own.
    pub node_id: Option<u8>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: None,
            node: None,
            prefix: "ringcast".to_string(),
            history_size_max: 1000,
            key_ttl_s: 86_400,
            queue_capacity: 65_536,
            queue_bytes_max: 64 << 20,
            in_flight_max: 4096,
            buffer_bytes_max: 32 << 20,
            channels_max: 1_000_000,
            timeout_ms: 5_000,
            reconnect_min_ms: 50,
            reconnect_max_ms: 2_000,
            presence_lease_ms: 15_000,
            node_id: None,
        }
    }
}

/// Whether `text` is 1 to 64 characters of `[A-Za-z0-9_.:-]` (no glob characters, no spaces).
fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

impl ClusterConfig {
    /// Whether clustering is on.
    pub fn enabled(&self) -> bool {
        self.redis.is_some()
    }

    /// Checks every field; each error names its key.
    pub fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Some(Err(e)) = self.redis.as_deref().map(RedisUrl::parse) {
            errors.push(format!("cluster.redis: {e}"));
        }
        if self.node.as_deref().is_some_and(|n| !is_name(n)) {
            errors.push("cluster.node must be 1 to 64 characters of [A-Za-z0-9_.:-]".to_string());
        }
        if !is_name(&self.prefix) {
            errors.push("cluster.prefix must be 1 to 64 characters of [A-Za-z0-9_.:-]".to_string());
        }
        if self.history_size_max > 1_000_000 {
            errors.push("cluster.history_size_max must be at most 1000000".to_string());
        }
        if self.key_ttl_s == 0 {
            errors.push("cluster.key_ttl_s must be above 0".to_string());
        }
        if self.queue_capacity == 0 || self.in_flight_max == 0 || self.channels_max == 0 {
            errors.push(
                "cluster.queue_capacity, cluster.in_flight_max and cluster.channels_max must be \
                 above 0"
                    .to_string(),
            );
        }
        if self.queue_bytes_max < 1 << 20 {
            errors.push("cluster.queue_bytes_max must be at least 1048576".to_string());
        }
        if self.buffer_bytes_max < 64 * 1024 {
            errors.push("cluster.buffer_bytes_max must be at least 65536".to_string());
        }
        if self.timeout_ms < 100 {
            errors.push("cluster.timeout_ms must be at least 100".to_string());
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            errors.push(
                "cluster.reconnect_min_ms must be above 0 and at most cluster.reconnect_max_ms"
                    .to_string(),
            );
        }
        if self.presence_lease_ms < 300 {
            errors.push("cluster.presence_lease_ms must be at least 300".to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// This node's number in connection ids: `node_id`, or derived from the node's name.
    pub fn node_id(&self) -> u8 {
        if let Some(id) = self.node_id {
            return id;
        }
        let mut hash: u32 = 0x811c_9dc5;
        for b in self.node_name().bytes() {
            hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        (hash % 256) as u8
    }

    /// The node's name: `node`, or the hostname and the process id.
    pub fn node_name(&self) -> String {
        if let Some(node) = &self.node {
            return node.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            .take(40)
            .collect();
        let host = if host.is_empty() { "node" } else { &host };
        format!("{host}-{}", std::process::id())
    }
}

/// Most `[[redis_input]]` entries.
pub const REDIS_INPUTS_MAX: usize = 64;
/// Longest literal prefix of a `[[redis_input]]` pattern, in bytes.
pub const INPUT_PREFIX_BYTES_MAX: usize = 200;

/// What a `[[redis_input]]` entry delivers to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InputTarget {
    /// The suffix is a connection id: the payload goes to that connection as it is.
    Conn,
    /// The suffix is a user id: the payload goes to each of the user's connections.
    User,
    /// The suffix (or `channel` with `{}` replaced by it) is a ringcast channel: the payload is
    /// published there.
    Channel,
}

/// One `[[redis_input]]` entry: broker channels applications `PUBLISH` to, mapped onto a
/// ringcast target (docs/cluster.md, "Redis input").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisInput {
    /// A Redis glob of the form `LITERAL*` (one `*`, at the end, no other glob character),
    /// e.g. `ws:fid:*`; what the `*` matched is the suffix.
    pub pattern: String,
    /// What the suffix names.
    pub to: InputTarget,
    /// With `to = "channel"`: the ringcast channel, `{}` standing for the suffix (e.g.
    /// `news:{}`); none: the suffix itself.
    pub channel: Option<String>,
}

impl RedisInput {
    /// The pattern's literal part (what precedes the `*`).
    pub fn prefix(&self) -> &str {
        self.pattern.strip_suffix('*').unwrap_or(&self.pattern)
    }

    /// Checks the entry; the error names it.
    pub fn validate(&self) -> Result<(), String> {
        let name = format!("redis_input {:?}", self.pattern);
        let prefix = self.prefix();
        if !self.pattern.ends_with('*')
            || prefix.is_empty()
            || prefix.len() > INPUT_PREFIX_BYTES_MAX
            || prefix.bytes().any(|b| {
                matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') || b.is_ascii_control() || b == b' '
            })
        {
            return Err(format!(
                "{name}: the pattern must be 1 to {INPUT_PREFIX_BYTES_MAX} literal bytes followed \
                 by one `*` (e.g. \"ws:fid:*\")"
            ));
        }
        match (&self.channel, self.to) {
            (Some(_), InputTarget::Conn | InputTarget::User) => {
                Err(format!("{name}: `channel` is only for to = \"channel\""))
            }
            (Some(template), InputTarget::Channel) if template.matches("{}").count() > 1 => {
                Err(format!("{name}: `channel` may hold `{{}}` once"))
            }
            _ => Ok(()),
        }
    }

    /// The ringcast channel a suffix maps to (`to = "channel"`), unvalidated.
    pub fn channel_for(&self, suffix: &str) -> String {
        match &self.channel {
            Some(template) => template.replacen("{}", suffix, 1),
            None => suffix.to_string(),
        }
    }
}

/// Checks the `[[redis_input]]` list against `[cluster]`.
pub fn validate_inputs(inputs: &[RedisInput], cluster: &ClusterConfig) -> Result<(), String> {
    if inputs.is_empty() {
        return Ok(());
    }
    if !cluster.enabled() {
        return Err("redis_input needs [cluster] redis to be set".to_string());
    }
    if inputs.len() > REDIS_INPUTS_MAX {
        return Err(format!(
            "at most {REDIS_INPUTS_MAX} [[redis_input]] entries"
        ));
    }
    for (i, input) in inputs.iter().enumerate() {
        input.validate()?;
        if inputs[..i].iter().any(|o| o.pattern == input.pattern) {
            return Err(format!("redis_input {:?} appears twice", input.pattern));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_and_valid() {
        let c = ClusterConfig::default();
        assert!(!c.enabled());
        assert_eq!(c.validate(), Ok(()));
        let node = c.node_name();
        assert!(
            node.ends_with(&format!("-{}", std::process::id())),
            "{node}"
        );
        assert!(is_name(&node), "{node}");
    }

    #[test]
    fn redis_inputs_are_validated() {
        let on = ClusterConfig {
            redis: Some("redis://127.0.0.1".to_string()),
            ..ClusterConfig::default()
        };
        let input = |pattern: &str, to, channel: Option<&str>| RedisInput {
            pattern: pattern.to_string(),
            to,
            channel: channel.map(str::to_string),
        };
        let good = input("ws:fid:*", InputTarget::Conn, None);
        assert_eq!(good.prefix(), "ws:fid:");
        assert_eq!(validate_inputs(std::slice::from_ref(&good), &on), Ok(()));
        assert!(validate_inputs(std::slice::from_ref(&good), &ClusterConfig::default()).is_err());
        for bad in ["ws:fid:", "*", "ws:*:x*", "ws:?*", "a b*"] {
            let e = validate_inputs(&[input(bad, InputTarget::User, None)], &on).unwrap_err();
            assert!(e.contains("pattern"), "{bad}: {e}");
        }
        let t = input("in:*", InputTarget::Channel, Some("news:{}"));
        assert_eq!(t.channel_for("x"), "news:x");
        assert!(
            input("in:*", InputTarget::Conn, Some("a"))
                .validate()
                .is_err()
        );
        assert!(
            validate_inputs(&[good.clone(), good], &on).is_err(),
            "twice"
        );
    }

    #[test]
    fn errors_name_their_key() {
        let c = ClusterConfig {
            redis: Some("http://x".to_string()),
            prefix: "a b".to_string(),
            node: Some(String::new()),
            key_ttl_s: 0,
            reconnect_min_ms: 10,
            reconnect_max_ms: 5,
            ..ClusterConfig::default()
        };
        let e = c.validate().unwrap_err();
        for key in [
            "cluster.redis",
            "cluster.prefix",
            "cluster.node",
            "cluster.key_ttl_s",
            "cluster.reconnect_min_ms",
        ] {
            assert!(e.contains(key), "{key} in {e}");
        }
    }
}
