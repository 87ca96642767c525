//! Per-shard pub/sub state, pure data: channel names and their owner, the local subscriber
//! index, the owner's per-channel sequence, history, and presence by user.
//!
//! Each channel has one owner shard (`owner_of`), which assigns offsets, so each channel has one
//! total order. A shard with local subscribers keeps a `Local` entry; it registers its interest
//! with the owner when its first subscriber arrives and withdraws it when its last one leaves.
//! Nothing here imports io_uring, libc or std::net, or reads the clock.

use crate::wire::ErrorCode;

pub mod history;
pub mod local;
pub mod owner;
pub mod presence;

/// Why a channel operation was refused; each has a stable wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// Empty, too long, or a character outside `[A-Za-z0-9_.:@/-]`.
    BadName,
    /// The connection has `channels_per_conn_max` subscriptions already.
    TooManySubscriptions,
    /// The shard has `channels_per_shard_max` channels already.
    TooManyChannels,
    /// The connection is already subscribed.
    AlreadySubscribed,
    /// The connection is not subscribed.
    NotSubscribed,
}

impl ChannelError {
    /// The stable error code sent to clients and backends.
    pub fn code(self) -> ErrorCode {
        match self {
            ChannelError::BadName => ErrorCode::BadChannel,
            ChannelError::TooManySubscriptions => ErrorCode::LimitExceeded,
            ChannelError::TooManyChannels => ErrorCode::LimitExceeded,
            ChannelError::AlreadySubscribed => ErrorCode::AlreadySubscribed,
            ChannelError::NotSubscribed => ErrorCode::NotSubscribed,
        }
    }

    /// A one-line explanation; `name_bytes_max` is the configured `channel_name_bytes_max`.
    pub fn message(self, name_bytes_max: usize) -> String {
        match self {
            ChannelError::BadName => {
                format!("channel names are 1 to {name_bytes_max} characters of [A-Za-z0-9_.:@/-]")
            }
            ChannelError::TooManySubscriptions => {
                "too many subscriptions on this connection".to_string()
            }
            ChannelError::TooManyChannels => "too many channels on this shard".to_string(),
            ChannelError::AlreadySubscribed => "already subscribed to this channel".to_string(),
            ChannelError::NotSubscribed => "not subscribed to this channel".to_string(),
        }
    }
}

/// Checks a channel name: 1..=`max_bytes` bytes of `[A-Za-z0-9_.:@/-]`. Names never need JSON
/// escaping, so envelopes can be written without an encoder.
pub fn validate_name(name: &str, max_bytes: usize) -> Result<(), ChannelError> {
    let ok = !name.is_empty()
        && name.len() <= max_bytes
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'/' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(ChannelError::BadName)
    }
}

/// The namespace of a channel: the part before the first `:` (empty when there is none).
pub fn namespace_of(name: &str) -> &str {
    name.split_once(':').map_or("", |(ns, _)| ns)
}

/// The owner shard of a channel: FNV-1a of the name, modulo the shard count. Stable across
/// runs and processes, so every shard computes the same owner without talking.
pub fn owner_of(name: &str, shards: usize) -> usize {
    assert!(shards > 0);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_name("chat:room-1/a@b.c_d", 128), Ok(()));
        assert_eq!(validate_name("", 128), Err(ChannelError::BadName));
        assert_eq!(validate_name("a b", 128), Err(ChannelError::BadName));
        assert_eq!(validate_name("\"x", 128), Err(ChannelError::BadName));
        assert_eq!(validate_name("ü", 128), Err(ChannelError::BadName));
        assert_eq!(
            validate_name(&"a".repeat(129), 128),
            Err(ChannelError::BadName)
        );
        assert_eq!(namespace_of("chat:room"), "chat");
        assert_eq!(namespace_of("a:b:c"), "a");
        assert_eq!(namespace_of("news"), "");
    }

    #[test]
    fn owners_spread_and_are_stable() {
        let mut counts = [0usize; 4];
        for i in 0..1000 {
            counts[owner_of(&format!("room{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 150), "{counts:?}");
        assert_eq!(owner_of("news", 4), owner_of("news", 4));
        assert_eq!(owner_of("anything", 1), 0);
    }
}
