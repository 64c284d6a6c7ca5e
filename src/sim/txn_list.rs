//! The transaction table as `MSG_TXN_GXID_LIST` sends it (`TXN_GXID_LIST_RESULT`).
//!
//! The real GTM copies its `GTM_Transactions` structure field by field in host
//! byte order (little-endian on the machines XL runs on), with no padding; a
//! standby reads it back at start-up. Layout, from the XL 10 sources and the
//! cap6 capture of an active GTM with no open transaction:
//!
//! | field | bytes |
//! |---|---|
//! | `gt_txn_count` (never maintained by an active GTM: 0) | u32 |
//! | `gt_gtm_state` (1 = running) | i32 |
//! | `gt_nextXid`, `gt_oldestXid` (3), four vacuum limits (0), `gt_latestCompletedXid`, `gt_recent_global_xmin` | 8 × u32 |
//! | `gt_lastslot` | i32 |
//! | open transactions | u32 |
//! | per open transaction, in slot order: its length as a `size_t`, then its fields | u64 + n |
//!
//! Per transaction: handle i32, client id u32, in-use u8, GXID u32, state i32
//! (0 starting, 2 prepare in progress, 3 prepared), xmin u32, isolation i32,
//! read-only u8, proxy connection id i16, node string and GID (u32 length +
//! bytes each), current snapshot (xmin u32, xmax u32, xcnt u32, xcnt × u32),
//! snapshot-set u8, vacuum u8. The length written before each transaction is
//! the real GTM's size estimate, which counts one snapshot word more than it
//! writes: it is 4 bytes larger than the fields that follow.

use bytes::{BufMut, BytesMut};

use super::state::Gtm;
use super::txns::{Txn, TxnState};
use crate::codec::Snapshot;

/// `GTM_RUNNING`.
const GTM_RUNNING: i32 = 1;
/// `FirstNormalGlobalTransactionId`: `gt_oldestXid` is set to it at start and never moved.
const OLDEST_XID: u32 = 3;

/// The serialised table (the bytes after the result's length word).
pub fn serialize(gtm: &Gtm) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(48 + 64 * gtm.txns.len());
    b.put_u32_le(0);
    b.put_i32_le(GTM_RUNNING);
    b.put_u32_le(gtm.next_gxid);
    b.put_u32_le(OLDEST_XID);
    for _vacuum_limit in 0..4 {
        b.put_u32_le(0);
    }
    b.put_u32_le(gtm.latest_completed);
    b.put_u32_le(gtm.global_xmin);
    b.put_i32_le(gtm.txns.last_slot);
    b.put_u32_le(gtm.txns.len() as u32);
    let empty = Snapshot { xmin: 0, xmax: 0, xip: Vec::new() };
    for t in gtm.txns.by_slot() {
        let snap = gtm.txns.slot_snapshot(t.handle).unwrap_or(&empty);
        let mut one = BytesMut::with_capacity(64);
        put_txn(&mut one, t, snap);
        // The GTM's estimate, one snapshot word over what it writes.
        b.put_u64_le(one.len() as u64 + 4);
        b.extend_from_slice(&one);
    }
    b.to_vec()
}

fn put_txn(b: &mut BytesMut, t: &Txn, snap: &Snapshot) {
    b.put_i32_le(t.handle);
    b.put_u32_le(t.client_id);
    b.put_u8(1);
    b.put_u32_le(t.gxid);
    b.put_i32_le(match t.state {
        TxnState::Starting => 0,
        TxnState::PrepareInProgress => 2,
        TxnState::Prepared => 3,
    });
    b.put_u32_le(t.xmin);
    b.put_i32_le(t.isolation);
    b.put_u8(u8::from(t.read_only));
    b.put_i16_le(t.conn_id);
    for s in [&t.nodes, &t.gid] {
        let s = s.as_deref().unwrap_or(&[]);
        b.put_u32_le(s.len() as u32);
        b.extend_from_slice(s);
    }
    b.put_u32_le(snap.xmin);
    b.put_u32_le(snap.xmax);
    b.put_u32_le(snap.xip.len() as u32);
    for x in &snap.xip {
        b.put_u32_le(*x);
    }
    b.put_u8(u8::from(t.snapshot_set));
    b.put_u8(u8::from(t.vacuum));
}

#[cfg(test)]
mod tests {
    use bytes::{Buf, Bytes};

    use super::super::tests_state::{direct, new_gtm};
    use super::super::LinkCtx;
    use crate::codec::types::{MsgType, ResultType};
    use crate::codec::{Begin, BeginElem, Request, Response};

    /// The table part of the `TXN_GXID_LIST_RESULT` the active GTM sent in cap6.
    fn captured_table() -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/cap6/conn01-gtm1-to-gtm2.bin");
        let stream = std::fs::read(path).expect("cap6 vector");
        // The frame at offset 31: 'S', length, result type, table length, table.
        let frame = &stream[31..31 + 61];
        assert_eq!(frame[0], b'S');
        assert_eq!(u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]), 23);
        let n = u32::from_be_bytes([frame[9], frame[10], frame[11], frame[12]]) as usize;
        frame[13..13 + n].to_vec()
    }

    #[test]
    fn empty_table_matches_the_real_gtm_byte_for_byte() {
        let mut t = new_gtm();
        // The captured GTM's counters: next GXID 0x2724, global xmin equal to
        // it, last slot 19, nothing open.
        t.g.next_gxid = 0x2724;
        t.g.latest_completed = 0x2723;
        t.g.global_xmin = 0x2724;
        t.g.txns.last_slot = 19;
        assert_eq!(super::serialize(&t.g), captured_table());
    }

    struct Reader(Bytes);

    impl Reader {
        fn u32(&mut self) -> u32 {
            self.0.get_u32_le()
        }
        fn i32(&mut self) -> i32 {
            self.0.get_i32_le()
        }
        fn u8(&mut self) -> u8 {
            self.0.get_u8()
        }
        fn string(&mut self) -> Vec<u8> {
            let n = self.u32() as usize;
            self.0.split_to(n).to_vec()
        }
    }

    fn begin(session: &[u8]) -> Begin {
        let mut s = session.to_vec();
        s.push(0);
        Begin { isolation: 1, read_only: true, session_id: Bytes::from(s) }
    }

    #[test]
    fn open_transactions_are_listed_in_slot_order_with_their_fields() {
        let mut t = new_gtm();
        let direct_link = direct(7);
        let a = match t.g.handle(&direct_link, Request::TxnBeginGetGxid(begin(b"cn1_1_1"))) {
            super::super::Outcome::Reply { resp: Response::TxnBeginGetGxid { gxid, .. }, .. } => gxid,
            o => panic!("{o:?}"),
        };
        let proxy = LinkCtx::proxy(200, 9, -1);
        let elems = vec![BeginElem { begin: begin(b""), conn_id: 42 }];
        let b = match t.g.handle(&proxy, Request::TxnBeginGetGxidMulti(elems)) {
            super::super::Outcome::Reply { resp: Response::TxnBeginGetGxidMulti { gxids, .. }, .. } => gxids[0],
            o => panic!("{o:?}"),
        };
        // A third one ends, so that the snapshot's xmax passes `a` and `b`.
        let c = match t.g.handle(&direct_link, Request::TxnBeginGetGxid(begin(b"cn1_1_2"))) {
            super::super::Outcome::Reply { resp: Response::TxnBeginGetGxid { gxid, .. }, .. } => gxid,
            o => panic!("{o:?}"),
        };
        t.g.handle(&direct_link, Request::TxnCommitMulti(vec![c]));
        // Only `a` takes a snapshot; it lists `a` and `b` as running.
        t.g.handle(&direct_link, Request::SnapshotGetMulti(vec![a]));
        t.g.handle(&direct_link, Request::TxnPrepare { gxid: b });

        // Through the dispatcher, as a backend would ask.
        let resp = match t.g.handle_command(&direct_link, MsgType::TXN_GXID_LIST, Bytes::new()) {
            super::super::Outcome::Reply { resp, .. } => resp,
            o => panic!("{o:?}"),
        };
        let Response::Other { result_type, payload } = resp else { panic!("{resp:?}") };
        assert_eq!(result_type, ResultType::TXN_GXID_LIST_RESULT);
        let mut r = Reader(payload);
        let len = r.0.get_i32() as usize;
        assert_eq!(len, r.0.len(), "the length word counts the table");
        assert_eq!(r.u32(), 0, "gt_txn_count");
        assert_eq!(r.i32(), 1, "running");
        assert_eq!(r.u32(), t.g.next_gxid);
        r.0.advance(4 * 7);
        assert_eq!(r.i32(), 2, "last slot handed out");
        assert_eq!(r.u32(), 2, "two open transactions");
        let mut seen = Vec::new();
        for _ in 0..2 {
            let declared = r.0.get_u64_le() as usize;
            let before = r.0.len();
            let handle = r.i32();
            let client = r.u32();
            assert_eq!(r.u8(), 1, "in use");
            let gxid = r.u32();
            let state = r.i32();
            let xmin = r.u32();
            assert_eq!(r.i32(), 1, "isolation");
            assert_eq!(r.u8(), 1, "read only");
            let conn = r.0.get_i16_le();
            assert!(r.string().is_empty() && r.string().is_empty(), "no node string or GID");
            let (sxmin, sxmax, xcnt) = (r.u32(), r.u32(), r.u32());
            let xip: Vec<u32> = (0..xcnt).map(|_| r.u32()).collect();
            let _snapshot_set = r.u8();
            assert_eq!(r.u8(), 0, "not vacuum");
            assert_eq!(declared, before - r.0.len() + 4, "the GTM's estimate is 4 over");
            seen.push((handle, client, gxid, state, xmin, conn, sxmin, sxmax, xip));
        }
        assert!(r.0.is_empty());
        assert_eq!(seen[0].0, 0);
        assert_eq!(seen[1].0, 1);
        // a: direct, starting, with its snapshot (b running) stored.
        assert_eq!((seen[0].1, seen[0].2, seen[0].3, seen[0].5), (7, a, 0, -1));
        assert_eq!((seen[0].4, seen[0].6, seen[0].8.clone()), (a, a, vec![a, b]));
        assert_eq!(seen[0].7, c + 1);
        // b: begun by a proxy element, prepared, no snapshot ever.
        assert_eq!((seen[1].1, seen[1].2, seen[1].3, seen[1].5), (9, b, 3, 42));
        assert_eq!((seen[1].4, seen[1].6, seen[1].7, seen[1].8.clone()), (0, 0, 0, vec![]));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut t = new_gtm();
        let o = t.g.handle_command(&direct(1), MsgType::TXN_GXID_LIST, Bytes::from_static(b"x"));
        assert!(matches!(o, super::super::Outcome::Error(ref m) if m == "invalid message format"), "{o:?}");
    }
}
