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
            in_flight_max: 4096,
            buffer_bytes_max: 32 << 20,
            channels_max: 1_000_000,
            timeout_ms: 5_000,
            reconnect_min_ms: 50,
            reconnect_max_ms: 2_000,
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
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
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
