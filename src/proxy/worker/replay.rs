//! What happens to a request whose GTM link was lost: sent again on the
//! next link, or answered with an `E` because it may already have been
//! carried out. Pure: a request in, a rule out; no sockets, no clock.
//!
//! A request that was never written to a link (held while the GTM was
//! down, or queued behind the frame that broke the link) is always sent
//! when a link is ready. A request that was written and not answered may
//! have been executed by the GTM before the link broke. The rule for it
//! depends on its message type:
//!
//! | message type(s) | rule | why |
//! |---|---|---|
//! | grouped `TXN_BEGIN_GETGXID_MULTI` (18), `TXN_COMMIT_MULTI` (24), `TXN_ROLLBACK_MULTI` (32), `SNAPSHOT_GET_MULTI` (40) built by the proxy | replay | a begin twice leaves one more transaction under the backend's identifier, ended by its disconnect (and by the old link's close on a GTM that survived); a commit or rollback the GTM no longer knows is reported done by vetting (GXID at or below the replay floor); a snapshot reads only |
//! | `TXN_BEGIN` (14), `TXN_BEGIN_GETGXID` (16), `TXN_BEGIN_GETGXID_MULTI` (18), `TXN_BEGIN_GETGXID_AUTOVACUUM` (61), `TXN_GET_GID_DATA` (34) forwarded | replay | begins, as above |
//! | `TXN_ROLLBACK` (30), `TXN_ROLLBACK_MULTI` (32) forwarded | replay | ending a transaction twice ends it once; the second answer may say "unknown GXID" |
//! | `REGISTER_SESSION` (6), `REPORT_XMIN` (7), `NODE_LIST` (9), `TXN_GET_GXID` (35), `TXN_GET_NEXT_GXID` (37), `TXN_GXID_LIST` (38), `SNAPSHOT_GET` (39), `SNAPSHOT_GET_MULTI` (40), `SNAPSHOT_GXID_GET` (41), `SEQUENCE_GET_CURRENT` (44), `SEQUENCE_LIST` (58) | replay | read only, or the same state set twice |
//! | `TXN_START_PREPARED` (20), `TXN_COMMIT` (22), `TXN_COMMIT_MULTI` (24) forwarded, `TXN_COMMIT_PREPARED` (26), `TXN_PREPARE` (28) | `E` | a commit or prepare that succeeded would be reported failed, or a prepared transaction started twice |
//! | `SEQUENCE_INIT` (42), `SEQUENCE_GET_NEXT` (45), `SEQUENCE_SET_VAL` (48), `SEQUENCE_RESET` (50), `SEQUENCE_CLOSE` (52), `SEQUENCE_RENAME` (54), `SEQUENCE_ALTER` (56) | `E` | a sequence would advance twice for one `nextval`, or a create / drop / rename fail after it succeeded |
//! | `NODE_REGISTER` (2), `NODE_UNREGISTER` (4), `BARRIER` (65), any other type | `E` | a change whose repetition is not harmless; unknown types are treated the same way |
//!
//! The `E` reads "outcome unknown after GTM failover": the backend (and its
//! user) must check, as after any lost connection to a server.
//!
//! Replays are bounded: a request whose link is lost more than
//! [`MAX_REPLAYS`] times while it is in flight is answered with an `E`
//! instead of being sent again, so a request whose answer itself breaks the
//! link (too long, or too slow for `upstream_timeout`) cannot drive the
//! proxy into a reconnect loop.

use crate::codec::MsgType;
use crate::proxy::batch::Pending;

/// Times a written request is sent again after lost links, at most.
pub const MAX_REPLAYS: u32 = 3;

/// What to do with a written, unanswered request after a lost link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Send it again on the next link.
    Replay,
    /// Answer `E`: it may have been carried out.
    OutcomeUnknown,
}

/// The message for a request that is not sent again.
pub const OUTCOME_UNKNOWN: &str = "outcome unknown after GTM failover";

/// The rule for the request(s) of one owed frame.
pub fn rule(p: &Pending) -> Rule {
    match p {
        Pending::Begin(_) | Pending::Commit(_) | Pending::Rollback(_) | Pending::Snapshot(_) => Rule::Replay,
        Pending::Forward(f) => rule_for(f.msg_type),
    }
}

/// The rule for a forwarded request of type `t`.
pub fn rule_for(t: MsgType) -> Rule {
    match t {
        MsgType::TXN_BEGIN
        | MsgType::TXN_BEGIN_GETGXID
        | MsgType::TXN_BEGIN_GETGXID_MULTI
        | MsgType::TXN_BEGIN_GETGXID_AUTOVACUUM
        | MsgType::TXN_GET_GID_DATA
        | MsgType::TXN_ROLLBACK
        | MsgType::TXN_ROLLBACK_MULTI
        | MsgType::REGISTER_SESSION
        | MsgType::REPORT_XMIN
        | MsgType::NODE_LIST
        | MsgType::TXN_GET_GXID
        | MsgType::TXN_GET_NEXT_GXID
        | MsgType::TXN_GXID_LIST
        | MsgType::SNAPSHOT_GET
        | MsgType::SNAPSHOT_GET_MULTI
        | MsgType::SNAPSHOT_GXID_GET
        | MsgType::SEQUENCE_GET_CURRENT
        | MsgType::SEQUENCE_LIST => Rule::Replay,
        _ => Rule::OutcomeUnknown,
    }
}

/// Counts how often each request was in flight on a lost link.
#[derive(Debug)]
pub struct ReplayCounts<K: std::hash::Hash + Eq> {
    counts: std::collections::HashMap<K, u32>,
}

impl<K: std::hash::Hash + Eq> Default for ReplayCounts<K> {
    fn default() -> Self {
        ReplayCounts { counts: Default::default() }
    }
}

impl<K: std::hash::Hash + Eq + Copy> ReplayCounts<K> {
    /// The request of `k` was in flight on a lost link: true while it may
    /// still be sent again.
    pub fn lost_once_more(&mut self, k: K) -> bool {
        let n = self.counts.entry(k).or_insert(0);
        *n += 1;
        *n <= MAX_REPLAYS
    }

    /// The request of `k` is settled.
    pub fn settled(&mut self, k: K) {
        self.counts.remove(&k);
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::batch::{Forward, Route};
    use bytes::Bytes;

    fn fwd(t: MsgType) -> Pending {
        Pending::Forward(Forward { route: Route { conn: 1, gen: 1 }, msg_type: t, payload: Bytes::new(), ends: [0; 2] })
    }

    #[test]
    fn grouped_requests_are_replayed() {
        let r = Route { conn: 1, gen: 1 };
        assert_eq!(rule(&Pending::Commit(vec![(r, 5)])), Rule::Replay);
        assert_eq!(rule(&Pending::Rollback(vec![(r, 5)])), Rule::Replay);
        assert_eq!(rule(&Pending::Snapshot(vec![(r, 5)])), Rule::Replay);
        assert_eq!(rule(&Pending::Begin(vec![])), Rule::Replay);
    }

    #[test]
    fn requests_that_may_have_executed_are_not_replayed() {
        for t in [
            MsgType::TXN_START_PREPARED,
            MsgType::TXN_COMMIT,
            MsgType::TXN_COMMIT_MULTI,
            MsgType::TXN_COMMIT_PREPARED,
            MsgType::TXN_PREPARE,
            MsgType::SEQUENCE_INIT,
            MsgType::SEQUENCE_GET_NEXT,
            MsgType::SEQUENCE_SET_VAL,
            MsgType::SEQUENCE_RESET,
            MsgType::SEQUENCE_CLOSE,
            MsgType::SEQUENCE_RENAME,
            MsgType::SEQUENCE_ALTER,
            MsgType::NODE_REGISTER,
            MsgType::NODE_UNREGISTER,
            MsgType::BARRIER,
            MsgType(99),
        ] {
            assert_eq!(rule(&fwd(t)), Rule::OutcomeUnknown, "{t}");
        }
    }

    #[test]
    fn reads_and_begins_are_replayed() {
        for t in [
            MsgType::TXN_BEGIN,
            MsgType::TXN_BEGIN_GETGXID_MULTI,
            MsgType::TXN_BEGIN_GETGXID_AUTOVACUUM,
            MsgType::TXN_ROLLBACK_MULTI,
            MsgType::SNAPSHOT_GET,
            MsgType::SNAPSHOT_GXID_GET,
            MsgType::TXN_GET_NEXT_GXID,
            MsgType::SEQUENCE_GET_CURRENT,
            MsgType::SEQUENCE_LIST,
            MsgType::REGISTER_SESSION,
        ] {
            assert_eq!(rule(&fwd(t)), Rule::Replay, "{t}");
        }
    }

    #[test]
    fn replays_are_bounded_per_request() {
        let mut c = ReplayCounts::default();
        for _ in 0..MAX_REPLAYS {
            assert!(c.lost_once_more(7));
        }
        assert!(!c.lost_once_more(7), "one loss too many");
        assert!(c.lost_once_more(8), "counted per request");
        c.settled(7);
        assert!(c.lost_once_more(7), "a settled request starts again");
        c.settled(7);
        c.settled(8);
        assert!(c.is_empty());
    }
}
