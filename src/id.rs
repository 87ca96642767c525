//! Connection ids: an integer made of node, shard index, slab slot and generation, like an fd
//! that is never reused by mistake. It stays below 2^53 so JavaScript numbers and PHP floats
//! hold it exactly (a browser hands it to its backend, which addresses the connection with it).
//!
//! The node (`[cluster] node_id`, 0 without a cluster) makes ids unique across the nodes of a
//! cluster, so any node's control socket can address any connection: a node sends what is
//! meant for another node's connection through the broker (docs/cluster.md, "Connection ids
//! across nodes").

/// Bits for the node (up to 256 nodes in a cluster).
pub const NODE_BITS: u32 = 8;
/// Bits for the shard index (up to 64 shards).
pub const SHARD_BITS: u32 = 6;
/// Bits for the slab slot (up to 2,097,151 connections per shard).
pub const SLOT_BITS: u32 = 21;
/// Bits for the generation: a shard's accept counter, so a slot's id comes back only after
/// 2^18 accepts on its shard and then only if the same slot is taken again, long after any
/// completion of the old connection is gone.
pub const GEN_BITS: u32 = 18;

const _: () = assert!(NODE_BITS + SHARD_BITS + SLOT_BITS + GEN_BITS == 53);

/// A connection id, unique across nodes, shards and over time (within 2^18 accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// Packs the parts on node 0; each must fit its width.
    pub fn new(shard: usize, slot: usize, generation: u32) -> ConnId {
        ConnId::at(0, shard, slot, generation)
    }

    /// Packs the parts; each must fit its width.
    pub fn at(node: u8, shard: usize, slot: usize, generation: u32) -> ConnId {
        const _: () = assert!(NODE_BITS == u8::BITS);
        assert!(shard < 1 << SHARD_BITS);
        assert!(slot < 1 << SLOT_BITS);
        assert!(generation < 1 << GEN_BITS);
        ConnId(
            (u64::from(node) << (SHARD_BITS + SLOT_BITS + GEN_BITS))
                | ((shard as u64) << (SLOT_BITS + GEN_BITS))
                | ((slot as u64) << GEN_BITS)
                | u64::from(generation),
        )
    }

    /// Parses an id from the network or the control socket; `None` if it has bits above 2^53.
    pub fn from_u64(raw: u64) -> Option<ConnId> {
        (raw < 1 << (NODE_BITS + SHARD_BITS + SLOT_BITS + GEN_BITS)).then_some(ConnId(raw))
    }

    /// The node that holds the connection.
    pub fn node(self) -> u8 {
        (self.0 >> (SHARD_BITS + SLOT_BITS + GEN_BITS)) as u8
    }

    /// The integer form (what clients and backends see).
    pub fn get(self) -> u64 {
        self.0
    }

    /// The owning shard.
    pub fn shard(self) -> usize {
        ((self.0 >> (SLOT_BITS + GEN_BITS)) & ((1 << SHARD_BITS) - 1)) as usize
    }

    /// The slab slot in the owning shard.
    pub fn slot(self) -> usize {
        ((self.0 >> GEN_BITS) & ((1 << SLOT_BITS) - 1)) as usize
    }

    /// The generation of the slot when the connection was accepted.
    pub fn generation(self) -> u32 {
        (self.0 & ((1 << GEN_BITS) - 1)) as u32
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bound() {
        let id = ConnId::at(255, 63, (1 << SLOT_BITS) - 1, (1 << GEN_BITS) - 1);
        assert_eq!(id.node(), 255);
        assert_eq!(id.shard(), 63);
        assert_eq!(id.slot(), (1 << SLOT_BITS) - 1);
        assert_eq!(id.generation(), (1 << GEN_BITS) - 1);
        assert!(
            id.get() < 1 << 53,
            "ids must stay exact in a JavaScript number"
        );
        let small = ConnId::at(9, 3, 17, 5);
        assert_eq!(
            (
                small.node(),
                small.shard(),
                small.slot(),
                small.generation()
            ),
            (9, 3, 17, 5)
        );
        assert_eq!(ConnId::new(3, 17, 5).node(), 0);
        assert_eq!(ConnId::from_u64(small.get()), Some(small));
        assert_eq!(ConnId::from_u64(1 << 53), None);
    }

    #[test]
    #[should_panic]
    fn slot_overflow_is_a_bug() {
        let _ = ConnId::new(0, 1 << SLOT_BITS, 0);
    }
}
