//! Who is in a channel, deduplicated by user: kept by the channel's owner shard from the
//! join/leave deltas every shard sends for its subscribers (one per connection).
//!
//! Owns: per channel, the users (ordered, for paging) with their connection counts and `info`,
//! and the anonymous connection count. Pure data: no engine, no clock.
//! Invariants: a user is listed exactly while it has at least one connection in the channel;
//! `conns` is the sum of every user's count plus `anonymous`; an empty channel holds nothing
//! (the caller drops it), so presence never outlives its connections.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A user in a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user's connections subscribed to the channel (≥ 1).
    pub conns: u32,
    /// The `info` of the user's most recent joining connection (raw JSON).
    pub info: Option<Arc<str>>,
}

/// One channel's presence.
#[derive(Debug, Default)]
pub struct ChannelPresence {
    users: BTreeMap<Arc<str>, Member>,
    anonymous: u64,
    conns: u64,
}

impl ChannelPresence {
    /// A connection of `user` (or an anonymous one) joined; true when it is the user's first.
    pub fn join(&mut self, user: Option<&Arc<str>>, info: Option<Arc<str>>) -> bool {
        self.conns += 1;
        let Some(user) = user else {
            self.anonymous += 1;
            return false;
        };
        match self.users.get_mut(user) {
            Some(member) => {
                member.conns += 1;
                if info.is_some() {
                    member.info = info;
                }
                false
            }
            None => {
                self.users.insert(user.clone(), Member { conns: 1, info });
                true
            }
        }
    }

    /// A connection left; the member when it was the user's last (for the leave news).
    pub fn leave(&mut self, user: Option<&str>) -> Option<Member> {
        let Some(user) = user else {
            // A leave without a join cannot happen (a connection's deltas travel in order on
            // one ring); saturating keeps a bug from wrapping the count.
            debug_assert!(self.anonymous > 0);
            self.anonymous = self.anonymous.saturating_sub(1);
            self.conns = self.conns.saturating_sub(1);
            return None;
        };
        let member = self.users.get_mut(user)?;
        self.conns = self.conns.saturating_sub(1);
        member.conns -= 1;
        if member.conns == 0 {
            return self.users.remove(user);
        }
        None
    }

    /// Distinct users.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Connections (users' and anonymous).
    pub fn conns(&self) -> u64 {
        self.conns
    }

    /// Anonymous connections.
    pub fn anonymous(&self) -> u64 {
        self.anonymous
    }

    /// Whether nobody is in the channel.
    pub fn is_empty(&self) -> bool {
        self.conns == 0
    }

    /// The member `user`, if it is in the channel.
    pub fn member(&self, user: &str) -> Option<(&Arc<str>, &Member)> {
        self.users.get_key_value(user)
    }

    /// Users after `after`, in order, at most `limit`.
    pub fn page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Iterator<Item = (&Arc<str>, &Member)> {
        use std::ops::Bound;
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        self.users
            .range::<str, _>((lower, Bound::Unbounded))
            .take(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_tabs_are_one_user() {
        let mut p = ChannelPresence::default();
        let alice: Arc<str> = Arc::from("alice");
        assert!(p.join(Some(&alice), Some(Arc::from("{\"n\":1}"))));
        assert!(!p.join(Some(&alice), None), "a second tab is not a join");
        assert!(!p.join(None, None));
        assert_eq!((p.users(), p.conns(), p.anonymous()), (1, 3, 1));
        assert_eq!(p.leave(Some("alice")), None, "one tab left, alice stays");
        let last = p.leave(Some("alice")).expect("the last tab is a leave");
        assert_eq!(last.info.as_deref(), Some("{\"n\":1}"));
        assert_eq!(p.leave(None), None);
        assert!(p.is_empty());
        assert_eq!(p.users(), 0);
    }

    #[test]
    fn pages_by_name() {
        let mut p = ChannelPresence::default();
        for u in ["b", "a", "c"] {
            p.join(Some(&Arc::from(u)), None);
        }
        let page: Vec<&str> = p.page(Some("a"), 5).map(|(u, _)| &**u).collect();
        assert_eq!(page, ["b", "c"]);
        let first: Vec<&str> = p.page(None, 1).map(|(u, _)| &**u).collect();
        assert_eq!(first, ["a"]);
    }

    #[test]
    fn leave_of_unknown_user_is_ignored() {
        let mut p = ChannelPresence::default();
        assert_eq!(p.leave(Some("ghost")), None);
        assert!(p.is_empty());
    }
}
