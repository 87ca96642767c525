//! A hashed timing wheel for per-connection deadlines (handshake, heartbeat, close handshake).
//!
//! Each key (a slab slot) has at most one deadline. Links live in a side table indexed by key, so
//! insert and remove are O(1) and the wheel allocates nothing per timer. Time is an argument in
//! ticks; the wheel never reads the clock. A deadline further away than one revolution stays in
//! its bucket and is skipped until its tick comes round.

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    deadline: u32,
    bucket: u32,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
    deadline: 0,
    bucket: NIL,
};

/// The wheel: `buckets` heads plus one link per key.
#[derive(Debug)]
pub struct Wheel {
    heads: Vec<u32>,
    links: Vec<Link>,
    /// Last tick processed by `advance`.
    now: u32,
    armed: usize,
}

impl Wheel {
    /// A wheel with `buckets` buckets (a power of two) starting at tick `now`.
    pub fn new(buckets: usize, now: u32) -> Wheel {
        assert!(buckets.is_power_of_two());
        Wheel {
            heads: vec![NIL; buckets],
            links: Vec::new(),
            now,
            armed: 0,
        }
    }

    /// Number of armed deadlines.
    pub fn len(&self) -> usize {
        self.armed
    }

    /// Whether no deadline is armed.
    pub fn is_empty(&self) -> bool {
        self.armed == 0
    }

    /// Bytes held by the side table (for the memory budget).
    pub fn heap_bytes(&self) -> usize {
        self.heads.capacity() * 4 + self.links.capacity() * std::mem::size_of::<Link>()
    }

    /// Reserves links for keys below `keys` so later inserts do not allocate.
    pub fn reserve_keys(&mut self, keys: usize) {
        if self.links.len() < keys {
            self.links.resize(keys, UNLINKED);
        }
    }

    /// Arms (or re-arms) `key` to fire at tick `deadline` (a past tick fires on the next advance).
    pub fn insert(&mut self, key: usize, deadline: u32) {
        self.remove(key);
        if key >= self.links.len() {
            self.links.resize(key + 1, UNLINKED);
        }
        // A deadline at or before `now` goes to the next tick's bucket so it fires next advance.
        let due = if deadline.wrapping_sub(self.now) as i32 <= 0 {
            self.now.wrapping_add(1)
        } else {
            deadline
        };
        let bucket = due as usize & (self.heads.len() - 1);
        let head = self.heads[bucket];
        self.links[key] = Link {
            prev: NIL,
            next: head,
            deadline: due,
            bucket: bucket as u32,
        };
        if head != NIL {
            self.links[head as usize].prev = key as u32;
        }
        self.heads[bucket] = key as u32;
        self.armed += 1;
    }

    /// Disarms `key` (no effect if it is not armed).
    pub fn remove(&mut self, key: usize) {
        let Some(link) = self.links.get(key).copied() else {
            return;
        };
        if link.bucket == NIL {
            return;
        }
        if link.prev == NIL {
            self.heads[link.bucket as usize] = link.next;
        } else {
            self.links[link.prev as usize].next = link.next;
        }
        if link.next != NIL {
            self.links[link.next as usize].prev = link.prev;
        }
        self.links[key] = UNLINKED;
        self.armed -= 1;
    }

    /// Whether `key` is armed.
    pub fn is_armed(&self, key: usize) -> bool {
        self.links.get(key).is_some_and(|l| l.bucket != NIL)
    }

    /// Moves time to `now` and appends every key whose deadline passed to `fired` (disarmed).
    pub fn advance(&mut self, now: u32, fired: &mut Vec<usize>) {
        let elapsed = now.wrapping_sub(self.now);
        if elapsed as i32 <= 0 {
            return;
        }
        // Walking more than one revolution visits every bucket once; that is enough.
        let steps = (elapsed as usize).min(self.heads.len());
        let first = if (elapsed as usize) > self.heads.len() {
            now.wrapping_sub(self.heads.len() as u32 - 1)
        } else {
            self.now.wrapping_add(1)
        };
        for i in 0..steps {
            let tick = first.wrapping_add(i as u32);
            let bucket = tick as usize & (self.heads.len() - 1);
            let mut key = self.heads[bucket];
            while key != NIL {
                let link = self.links[key as usize];
                if link.deadline.wrapping_sub(now) as i32 <= 0 {
                    self.remove(key as usize);
                    fired.push(key as usize);
                }
                key = link.next;
            }
        }
        self.now = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = Wheel::new(8, 0);
        let mut fired = Vec::new();
        w.insert(3, 5);
        w.insert(4, 20); // beyond one revolution
        w.advance(4, &mut fired);
        assert!(fired.is_empty());
        w.advance(5, &mut fired);
        assert_eq!(fired, vec![3]);
        fired.clear();
        w.advance(13, &mut fired);
        assert!(
            fired.is_empty(),
            "a far deadline must not fire when its bucket first comes round"
        );
        w.advance(20, &mut fired);
        assert_eq!(fired, vec![4]);
        assert!(w.is_empty());
    }

    #[test]
    fn remove_and_rearm() {
        let mut w = Wheel::new(4, 100);
        let mut fired = Vec::new();
        for k in 0..10 {
            w.insert(k, 102);
        }
        w.remove(5);
        w.insert(6, 150);
        assert_eq!(w.len(), 10 - 1);
        w.advance(102, &mut fired);
        fired.sort();
        assert_eq!(fired, vec![0, 1, 2, 3, 4, 7, 8, 9]);
        assert!(w.is_armed(6));
        assert!(!w.is_armed(5));
        fired.clear();
        w.advance(1000, &mut fired);
        assert_eq!(fired, vec![6]);
    }

    #[test]
    fn past_deadline_fires_next_advance() {
        let mut w = Wheel::new(16, 50);
        let mut fired = Vec::new();
        w.insert(1, 10);
        w.advance(51, &mut fired);
        assert_eq!(fired, vec![1]);
    }

    #[test]
    fn wraps_around_u32() {
        let mut w = Wheel::new(16, u32::MAX - 2);
        let mut fired = Vec::new();
        w.insert(0, 3);
        w.advance(2, &mut fired);
        assert!(fired.is_empty());
        w.advance(3, &mut fired);
        assert_eq!(fired, vec![0]);
    }
}
