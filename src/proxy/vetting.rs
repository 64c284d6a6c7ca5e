//! Answer vetting: the GXID safety rules every answer passes before it
//! reaches its backend. Pure: it reads and updates the worker's [`Ledger`]
//! and the proxy's [`HighWater`], and says whether the GTM's answer goes
//! out as it is or is replaced; no sockets, no clock.
//!
//! Rules, each with its unit test:
//! * a begin's GXID is recorded as open, unless it is not above the link
//!   floor (the highest GXID handed out when this link became ready) or is
//!   already open here: then the GTM's state is behind the proxy's and the
//!   backend gets an error instead of a duplicate transaction id;
//! * an autovacuum begin is recorded as such;
//! * a successful commit or rollback (grouped or forwarded) closes its
//!   GXIDs;
//! * a grouped commit or rollback the GTM fails with "unknown GXID" for a
//!   GXID handed out before the last link loss (at or below the replay
//!   floor) is done: the transaction is open nowhere, so success is
//!   reported;
//! * a snapshot answered "not found" for a GXID still open here means the
//!   GTM lost the transaction: the backend gets an error, never a snapshot
//!   in which its own transaction looks finished.

use bytes::BytesMut;

use super::batch::{Answer, Pending, Route};
use super::ledger::{gxid_after, HighWater, Ledger};
use crate::codec::types::status;
use crate::codec::{ErrorFields, ResultType};

/// GXID floors of one worker's link (0 = none yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Floors {
    /// Highest GXID handed out by this proxy when the current link became
    /// ready: the GTM must hand out GXIDs above it.
    pub link: u32,
    /// Highest GXID handed out before the last link loss.
    pub replay: u32,
}

/// What the backend receives instead of, or as, the GTM's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The GTM's answer, unchanged.
    Pass,
    /// A begin obtained a GXID that may already be in use: refused. It is
    /// left open on the GTM (see the worker's log).
    DuplicateGxid { gxid: u32, floor: u32 },
    /// The GTM no longer knows a GXID whose end was asked for: done.
    AlreadyEnded { gxid: u32, commit: bool },
    /// The GTM lost an open transaction: its backend must abort.
    Lost { gxid: u32 },
}

/// Apply the rules to one backend's `answer` (element `gxid` of the request
/// `pending`, for `route`), updating `ledger` and `high`.
pub fn vet(
    ledger: &mut Ledger,
    high: &HighWater,
    floors: Floors,
    pending: &Pending,
    route: Route,
    gxid: u32,
    answer: &Answer<'_>,
) -> Verdict {
    match answer {
        Answer::Begin { gxid, .. } => {
            let stale = floors.link != 0 && !gxid_after(*gxid, floors.link);
            if stale || ledger.state(*gxid).is_some() {
                return Verdict::DuplicateGxid { gxid: *gxid, floor: floors.link };
            }
            ledger.begun(route, *gxid);
            high.observe(*gxid);
        }
        Answer::CommitOk | Answer::RollbackOk { .. } => ledger.ended(gxid),
        Answer::Result {
            result_type: ResultType::TXN_COMMIT_RESULT | ResultType::TXN_COMMIT_PREPARED_RESULT,
            payload,
        } if payload.len() == 8 && payload[4..8] == [0, 0, 0, 0] => {
            if let Pending::Forward(f) = pending {
                ledger.ended(f.ends[0]);
                ledger.ended(f.ends[1]);
            }
        }
        Answer::Result { result_type: ResultType::TXN_BEGIN_GETGXID_AUTOVACUUM_RESULT, payload }
            if payload.len() == 4 =>
        {
            let vac = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
            ledger.begun_vacuum(route, vac);
            high.observe(vac);
        }
        Answer::ElementFailed { status: -1, .. }
            if floors.replay != 0 && gxid != 0 && !gxid_after(gxid, floors.replay) =>
        {
            ledger.ended(gxid);
            return Verdict::AlreadyEnded { gxid, commit: matches!(pending, Pending::Commit(_)) };
        }
        Answer::Snapshot { status: status::NOT_FOUND, .. } if gxid != 0 && ledger.is_open(gxid) => {
            ledger.ended(gxid);
            return Verdict::Lost { gxid };
        }
        _ => {}
    }
    Verdict::Pass
}

impl Verdict {
    /// Append what the backend receives for `answer`. Returns true when that
    /// is an error.
    pub fn write(&self, answer: &Answer<'_>, dst: &mut BytesMut) -> bool {
        match *self {
            Verdict::Pass => {
                answer.encode(dst);
                matches!(answer, Answer::Error(_) | Answer::ElementFailed { .. })
            }
            Verdict::DuplicateGxid { gxid, floor } => {
                let f =
                    ErrorFields::new("ERROR", "GTM handed out a GXID that was already in use").with_detail(&format!(
                        "GXID {gxid} is not above {floor}, the highest GXID handed out before; \
                         the GTM's state is behind this proxy's"
                    ));
                Answer::Error(&f).encode(dst);
                true
            }
            Verdict::AlreadyEnded { gxid, commit } => {
                if commit {
                    Answer::CommitOk.encode(dst)
                } else {
                    Answer::RollbackOk { gxid }.encode(dst)
                }
                false
            }
            Verdict::Lost { gxid } => {
                let f = ErrorFields::new("ERROR", "transaction is unknown to the GTM").with_detail(&format!(
                    "GXID {gxid} was handed out by this proxy and is still open, but the GTM no longer \
                     knows it (GTM restart or failover lost it); the transaction must be aborted"
                ));
                Answer::Error(&f).encode(dst);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::batch::Forward;
    use crate::proxy::ledger::GxState;
    use bytes::Bytes;

    const R: Route = Route { conn: 3, gen: 9 };

    fn floors(link: u32, replay: u32) -> Floors {
        Floors { link, replay }
    }

    fn commit() -> Pending {
        Pending::Commit(vec![(R, 0)])
    }

    #[test]
    fn a_begun_gxid_is_recorded_and_raises_the_high_water() {
        let (mut l, h) = (Ledger::default(), HighWater::default());
        let v = vet(&mut l, &h, floors(100, 0), &commit(), R, 0, &Answer::Begin { gxid: 101, timestamp: 0 });
        assert_eq!(v, Verdict::Pass);
        assert!(l.is_open(101));
        assert_eq!(h.get(), 101);
    }

    #[test]
    fn a_gxid_not_above_the_link_floor_is_refused() {
        let (mut l, h) = (Ledger::default(), HighWater::default());
        let v = vet(&mut l, &h, floors(100, 0), &commit(), R, 0, &Answer::Begin { gxid: 100, timestamp: 0 });
        assert_eq!(v, Verdict::DuplicateGxid { gxid: 100, floor: 100 });
        assert!(l.is_empty(), "a refused GXID is not recorded");
        let mut out = BytesMut::new();
        assert!(v.write(&Answer::Begin { gxid: 100, timestamp: 0 }, &mut out), "the backend gets an error");
        assert_eq!(out[0], b'E');
    }

    #[test]
    fn a_gxid_already_open_here_is_refused() {
        let (mut l, h) = (Ledger::default(), HighWater::default());
        l.begun(Route { conn: 4, gen: 1 }, 205);
        let v = vet(&mut l, &h, floors(0, 0), &commit(), R, 0, &Answer::Begin { gxid: 205, timestamp: 0 });
        assert_eq!(v, Verdict::DuplicateGxid { gxid: 205, floor: 0 });
    }

    #[test]
    fn an_autovacuum_begin_is_recorded_as_such() {
        let (mut l, h) = (Ledger::default(), HighWater::default());
        let payload = 300u32.to_le_bytes();
        let a = Answer::Result { result_type: ResultType::TXN_BEGIN_GETGXID_AUTOVACUUM_RESULT, payload: &payload };
        assert_eq!(vet(&mut l, &h, floors(0, 0), &commit(), R, 0, &a), Verdict::Pass);
        assert_eq!(l.state(300), Some(GxState::Vacuum));
        assert_eq!(h.get(), 300);
    }

    #[test]
    fn grouped_commit_and_rollback_close_their_gxid() {
        let (mut l, h) = (Ledger::default(), HighWater::default());
        l.begun(R, 10);
        l.begun(R, 11);
        assert_eq!(vet(&mut l, &h, floors(0, 0), &commit(), R, 10, &Answer::CommitOk), Verdict::Pass);
        assert_eq!(vet(&mut l, &h, floors(0, 0), &commit(), R, 11, &Answer::RollbackOk { gxid: 11 }), Verdict::Pass);
        assert!(l.is_empty());
    }

    #[test]
    fn a_forwarded_commit_closes_the_gxids_it_ends_only_on_success() {
        let (mut l, h) = (Ledger::default(), HighWater::default());
        l.begun(R, 20);
        l.begun(R, 21);
        let p = Pending::Forward(Forward {
            route: R,
            msg_type: crate::codec::MsgType::TXN_COMMIT_PREPARED,
            payload: Bytes::new(),
            ends: [20, 21],
        });
        let failed = [20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        let a = Answer::Result { result_type: ResultType::TXN_COMMIT_PREPARED_RESULT, payload: &failed };
        vet(&mut l, &h, floors(0, 0), &p, R, 20, &a);
        assert_eq!(l.len(), 2, "a failed commit ends nothing");
        let ok = [20, 0, 0, 0, 0, 0, 0, 0];
        let a = Answer::Result { result_type: ResultType::TXN_COMMIT_PREPARED_RESULT, payload: &ok };
        assert_eq!(vet(&mut l, &h, floors(0, 0), &p, R, 20, &a), Verdict::Pass);
        assert!(l.is_empty());
    }

    #[test]
    fn an_end_of_a_gxid_from_before_the_link_loss_the_gtm_forgot_is_done() {
        let (mut l, h) = (Ledger::default(), HighWater::default());
        let failed = Answer::ElementFailed { what: "Transaction commit failed", status: -1 };
        let v = vet(&mut l, &h, floors(0, 500), &commit(), R, 499, &failed);
        assert_eq!(v, Verdict::AlreadyEnded { gxid: 499, commit: true });
        let mut out = BytesMut::new();
        assert!(!v.write(&failed, &mut out));
        let mut want = BytesMut::new();
        Answer::CommitOk.encode(&mut want);
        assert_eq!(out, want);
        let rb = Pending::Rollback(vec![(R, 499)]);
        assert_eq!(
            vet(&mut l, &h, floors(0, 500), &rb, R, 499, &failed),
            Verdict::AlreadyEnded { gxid: 499, commit: false }
        );
        // Above the replay floor, or without one, the failure stands.
        assert_eq!(vet(&mut l, &h, floors(0, 500), &commit(), R, 501, &failed), Verdict::Pass);
        assert_eq!(vet(&mut l, &h, floors(0, 0), &commit(), R, 499, &failed), Verdict::Pass);
    }

    #[test]
    fn a_snapshot_the_gtm_does_not_know_for_an_open_gxid_means_it_was_lost() {
        let (mut l, h) = (Ledger::default(), HighWater::default());
        l.begun(R, 40);
        let snap = Answer::Snapshot { snapshot: &[], status: status::NOT_FOUND };
        let v = vet(&mut l, &h, floors(0, 0), &Pending::Snapshot(vec![(R, 40)]), R, 40, &snap);
        assert_eq!(v, Verdict::Lost { gxid: 40 });
        assert!(l.is_empty());
        let mut out = BytesMut::new();
        assert!(v.write(&snap, &mut out));
        assert_eq!(out[0], b'E');
        // Not open here (or no GXID named): the snapshot goes out.
        assert_eq!(vet(&mut l, &h, floors(0, 0), &Pending::Snapshot(vec![(R, 40)]), R, 40, &snap), Verdict::Pass);
    }
}
