//! Connection ids: an integer made of shard index, slab slot and generation, like an fd that is
//! never reused by mistake. It stays below 2^53 so JavaScript numbers and PHP floats hold it
//! exactly (a browser hands it to its backend, which addresses the connection with it).

/// Bits for the shard index (up to 256 shards).
pub const SHARD_BITS: u32 = 8;
/// Bits for the slab slot (up to 16,777,216 connections per shard).
pub const SLOT_BITS: u32 = 24;
/// Bits for the generation: a slot reused 2^21 times wraps, long after any completion or
/// backend reference to the old connection is gone.
pub const GEN_BITS: u32 = 21;

const _: () = assert!(SHARD_BITS + SLOT_BITS + GEN_BITS == 53);

/// A connection id, unique across shards and over time (within 2^21 reuses of a slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// Packs the parts; each must fit its width.
    pub fn new(shard: usize, slot: usize, generation: u32) -> ConnId {
        assert!(shard < 1 << SHARD_BITS);
        assert!(slot < 1 << SLOT_BITS);
        assert!(generation < 1 << GEN_BITS);
        ConnId(
            ((shard as u64) << (SLOT_BITS + GEN_BITS))
                | ((slot as u64) << GEN_BITS)
                | u64::from(generation),
        )
    }

    /// Parses an id from the network or the control socket; `None` if it has bits above 2^53.
    pub fn from_u64(raw: u64) -> Option<ConnId> {
        (raw < 1 << (SHARD_BITS + SLOT_BITS + GEN_BITS)).then_some(ConnId(raw))
    }

    /// The integer form (what clients and backends see).
    pub fn get(self) -> u64 {
        self.0
    }

    /// The owning shard.
    pub fn shard(self) -> usize {
        (self.0 >> (SLOT_BITS + GEN_BITS)) as usize
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
        let id = ConnId::new(255, (1 << SLOT_BITS) - 1, (1 << GEN_BITS) - 1);
        assert_eq!(id.shard(), 255);
        assert_eq!(id.slot(), (1 << SLOT_BITS) - 1);
        assert_eq!(id.generation(), (1 << GEN_BITS) - 1);
        assert!(
            id.get() < 1 << 53,
            "ids must stay exact in a JavaScript number"
        );
        let small = ConnId::new(3, 17, 5);
        assert_eq!(
            (small.shard(), small.slot(), small.generation()),
            (3, 17, 5)
        );
        assert_eq!(ConnId::from_u64(small.get()), Some(small));
        assert_eq!(ConnId::from_u64(1 << 53), None);
    }

    #[test]
    #[should_panic]
    fn slot_overflow_is_a_bug() {
        let _ = ConnId::new(0, 1 << SLOT_BITS, 0);
    }
}
