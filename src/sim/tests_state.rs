//! Unit tests of the state machine: transactions, snapshots, nodes, dispatch and
//! the GTM-order decoding of malformed payloads. No sockets.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::nodes::{NODE_CONNECTED, NODE_DISCONNECTED, XMIN_DELAY_US};
use super::*;
use crate::codec::types::{node_type, status, MsgType, ResultType};
use crate::codec::{Begin, BeginElem, NodeRegister, Request, Response, Snapshot, StartupPacket};

pub(super) struct T {
    pub g: Gtm,
    pub clock: Arc<AtomicI64>,
}

pub(super) fn new_gtm() -> T {
    let clock = Arc::new(AtomicI64::new(1_000_000));
    let c = clock.clone();
    let g = Gtm::new(GtmConfig::default(), Box::new(move || c.load(Ordering::SeqCst)));
    T { g, clock }
}

pub(super) fn direct(client_id: u32) -> LinkCtx {
    LinkCtx::direct(i64::from(client_id) + 100, client_id)
}

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

fn begin(session: &[u8]) -> Begin {
    let mut s = session.to_vec();
    s.push(0);
    Begin { isolation: 1, read_only: false, session_id: Bytes::from(s) }
}

fn elem(session: &[u8], conn_id: i16) -> BeginElem {
    BeginElem { begin: begin(session), conn_id }
}

fn reply(o: Outcome) -> Response {
    match o {
        Outcome::Reply { resp, .. } => resp,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn error(o: Outcome) -> String {
    match o {
        Outcome::Error(m) => m,
        other => panic!("expected an error, got {other:?}"),
    }
}

impl T {
    pub fn h(&mut self, link: &LinkCtx, req: Request) -> Outcome {
        self.g.handle(link, req)
    }

    pub fn gxid(&mut self, link: &LinkCtx, session: &[u8]) -> u32 {
        match reply(self.h(link, Request::TxnBeginGetGxid(begin(session)))) {
            Response::TxnBeginGetGxid { gxid, .. } => gxid,
            r => panic!("{r:?}"),
        }
    }

    pub fn multi(&mut self, link: &LinkCtx, elems: Vec<BeginElem>) -> Vec<u32> {
        match reply(self.h(link, Request::TxnBeginGetGxidMulti(elems))) {
            Response::TxnBeginGetGxidMulti { gxids, .. } => gxids,
            r => panic!("{r:?}"),
        }
    }

    pub fn snapshot(&mut self, link: &LinkCtx, gxids: &[u32]) -> (Vec<i32>, Snapshot) {
        match reply(self.h(link, Request::SnapshotGetMulti(gxids.to_vec()))) {
            Response::SnapshotGetMulti { statuses, snapshot } => (statuses, snapshot),
            r => panic!("{r:?}"),
        }
    }

    pub fn xip(&mut self) -> Vec<u32> {
        self.snapshot(&direct(99), &[0]).1.xip
    }

    fn commit(&mut self, link: &LinkCtx, gxids: &[u32]) -> Vec<i32> {
        match reply(self.h(link, Request::TxnCommitMulti(gxids.to_vec()))) {
            Response::TxnCommitMulti { statuses } => statuses,
            r => panic!("{r:?}"),
        }
    }

    fn cmd(&mut self, link: &LinkCtx, t: i32, payload: &[u8]) -> Outcome {
        self.g.handle_command(link, MsgType(t), b(payload))
    }
}

#[test]
fn fresh_gtm() {
    let t = new_gtm();
    assert_eq!(t.g.next_gxid(), 10000);
    assert_eq!(t.g.latest_completed(), 9999);
    assert_eq!(t.g.global_xmin(), 10000);
    let g = Gtm::new(GtmConfig { first_gxid: 1 }, Box::new(|| 0));
    assert_eq!(g.next_gxid(), FIRST_NORMAL_GXID);
}

#[test]
fn client_ids_start_at_2_and_reuse_needs_starting_id() {
    let mut t = new_gtm();
    assert_eq!(t.g.accept(), 2);
    assert_eq!(t.g.accept(), 3);
    let sp = StartupPacket::new("p", 1, false, 3);
    // A fresh GTM has starting client id 0: a re-presented id is not honoured.
    assert_eq!(t.g.startup(4, &sp), 4);
    t.g.starting_client_id = 3;
    assert_eq!(t.g.startup(4, &sp), 3);
    let sp = StartupPacket::new("p", 1, false, 5);
    assert_eq!(t.g.startup(4, &sp), 4);
    assert_eq!(client_id_next(u32::MAX - 1), 1);
}

#[test]
fn begin_getgxid_counts_up_and_shares_sessions() {
    let mut t = new_gtm();
    let l = direct(2);
    assert_eq!(t.gxid(&l, b"cn1_1_1"), 10000);
    assert_eq!(t.gxid(&l, b"cn1_1_1"), 10000);
    assert_eq!(t.gxid(&l, b""), 10001);
    assert_eq!(t.gxid(&l, b""), 10002);
    let long = [b'x'; 64];
    assert_eq!(t.gxid(&l, &long), 10003);
    assert_eq!(t.gxid(&l, &long), 10004, "a 64-byte session id never matches again");
    let l63 = [b'y'; 63];
    assert_eq!(t.gxid(&l, &l63), 10005);
    assert_eq!(t.gxid(&l, &l63), 10005);
    assert_eq!(t.g.next_gxid(), 10006);
    // Single-element begins are tagged with connection id -1 even on a proxy link.
    let p = LinkCtx::proxy(7, 9, 4);
    let g = t.gxid(&p, b"via-proxy");
    let txn = t.g.txn(g).unwrap();
    assert_eq!((txn.client_id, txn.conn_id), (9, -1));
}

#[test]
fn begin_timestamp_is_the_clock() {
    let mut t = new_gtm();
    t.clock.store(848_615_791_432_038, Ordering::SeqCst);
    let r = reply(t.h(&direct(2), Request::TxnBeginGetGxid(begin(b"a"))));
    assert_eq!(r, Response::TxnBeginGetGxid { gxid: 10000, timestamp: 848_615_791_432_038 });
}

#[test]
fn multi_tags_elements_and_shares_sessions() {
    let mut t = new_gtm();
    let p = LinkCtx::proxy(1, 3, -1);
    let g = t.multi(&p, vec![elem(b"s1", 0), elem(b"s2", 1), elem(b"s1", 2), elem(b"", 3)]);
    assert_eq!(g, vec![10000, 10001, 10000, 10002]);
    assert_eq!(t.g.txn(10000).unwrap().conn_id, 0);
    assert_eq!(t.g.txn(10001).unwrap().conn_id, 1);
    assert_eq!(t.g.txn(10002).unwrap().conn_id, 3);
    // Reusing an open session's transaction leaves its original tag.
    let g = t.multi(&p, vec![elem(b"s2", 7)]);
    assert_eq!(g, vec![10001]);
    assert_eq!(t.g.txn(10001).unwrap().conn_id, 1);
    assert_eq!(t.g.txn(10001).unwrap().client_id, 3);
}

#[test]
fn multi_shares_one_timestamp_and_rejects_bad_counts() {
    let mut t = new_gtm();
    t.clock.store(42, Ordering::SeqCst);
    let r = reply(t.h(&direct(2), Request::TxnBeginGetGxidMulti(vec![elem(b"", 1), elem(b"", 2)])));
    assert_eq!(r, Response::TxnBeginGetGxidMulti { gxids: vec![10000, 10001], timestamp: 42 });
    assert_eq!(
        t.h(&direct(2), Request::TxnBeginGetGxidMulti(vec![])),
        Outcome::Panic("Zero or less transaction count".into())
    );
    let big = vec![elem(b"", 1); MAX_TXNS + 1];
    assert!(matches!(t.h(&direct(2), Request::TxnBeginGetGxidMulti(big)), Outcome::Crash(_)));
    // Count 0 on the wire: PANIC too.
    assert!(matches!(t.cmd(&direct(2), 18, &0i32.to_be_bytes()), Outcome::Panic(_)));
}

#[test]
fn txn_begin_returns_slots() {
    let mut t = new_gtm();
    let l = direct(2);
    let handle = |o: Outcome| match reply(o) {
        Response::TxnBegin { handle, .. } => handle,
        r => panic!("{r:?}"),
    };
    assert_eq!(handle(t.h(&l, Request::TxnBegin(begin(b"a")))), 0);
    assert_eq!(handle(t.h(&l, Request::TxnBegin(begin(b"b")))), 1);
    assert_eq!(handle(t.h(&l, Request::TxnBegin(begin(b"a")))), 0);
    // No GXID yet: not in snapshots; a later GETGXID on the session assigns one.
    assert_eq!(t.xip(), Vec::<u32>::new());
    assert_eq!(t.gxid(&l, b"b"), 10000);
    // Freed slots are reused only after the search wraps around.
    t.commit(&l, &[10000]);
    assert_eq!(handle(t.h(&l, Request::TxnBegin(begin(b"c")))), 2);
}

#[test]
fn autovacuum_is_left_out_of_snapshots() {
    let mut t = new_gtm();
    let l = direct(2);
    let r = reply(t.h(&l, Request::TxnBeginGetGxidAutovacuum { isolation: 1, read_only: false }));
    assert_eq!(r, Response::TxnBeginGetGxidAutovacuum { gxid: 10000 });
    assert!(t.g.txn(10000).unwrap().vacuum);
    let g2 = t.gxid(&l, b"x");
    t.commit(&l, &[g2]);
    assert_eq!(t.xip(), Vec::<u32>::new());
}

#[test]
fn commit_statuses_and_latest_completed_is_the_max() {
    let mut t = new_gtm();
    let l = direct(2);
    let a = t.gxid(&l, b"a");
    let b_ = t.gxid(&l, b"b");
    let r = reply(t.h(&l, Request::TxnCommit { gxid: a, waited: vec![b_] }));
    assert_eq!(r, Response::TxnCommit { gxid: a, status: status::DELAYED });
    assert_eq!(t.commit(&l, &[b_, 4242]), vec![0, -1]);
    assert_eq!(t.g.latest_completed(), b_);
    let r = reply(t.h(&l, Request::TxnCommit { gxid: a, waited: vec![b_] }));
    assert_eq!(r, Response::TxnCommit { gxid: a, status: 0 });
    assert_eq!(t.g.latest_completed(), b_, "committing an older GXID does not lower it");
    let r = reply(t.h(&l, Request::TxnCommit { gxid: 5, waited: vec![] }));
    assert_eq!(r, Response::TxnCommit { gxid: 5, status: -1 });
}

#[test]
fn rollback_results() {
    let mut t = new_gtm();
    let l = direct(2);
    let a = t.gxid(&l, b"a");
    assert_eq!(reply(t.h(&l, Request::TxnRollback { gxid: a })), Response::TxnRollback { gxid: a, status: Some(0) });
    assert_eq!(reply(t.h(&l, Request::TxnRollback { gxid: a })), Response::TxnRollback { gxid: a, status: Some(-1) });
    let b_ = t.gxid(&l, b"b");
    assert_eq!(
        reply(t.h(&l, Request::TxnRollbackMulti(vec![9, b_]))),
        Response::TxnRollbackMulti { statuses: vec![-1, 0] }
    );
    assert_eq!(t.g.latest_completed(), b_);
    assert_eq!(t.g.open_txn_count(), 0);
}

#[test]
fn two_phase_commit() {
    let mut t = new_gtm();
    let l = direct(2);
    let a = t.gxid(&l, b"a");
    assert_eq!(error(t.h(&l, start_prepared(77, b"g1"))), "Failed to prepare the transaction");
    assert_eq!(reply(t.h(&l, start_prepared(a, b"g1"))), Response::TxnStartPrepared { gxid: a });
    assert_eq!(error(t.h(&l, start_prepared(a, b"g1"))), "Failed to prepare the transaction");
    assert_eq!(reply(t.h(&l, Request::TxnPrepare { gxid: a })), Response::TxnPrepare { gxid: a });
    assert_eq!(reply(t.h(&l, Request::TxnPrepare { gxid: 1234 })), Response::TxnPrepare { gxid: 1234 });
    let gid_data = |gid: &[u8]| Request::TxnGetGidData { isolation: 1, read_only: false, gid: b(gid) };
    assert_eq!(error(t.h(&l, gid_data(b"nope"))), "Failed to get GID Data for prepared transaction");
    let r = reply(t.h(&l, gid_data(b"g1")));
    assert_eq!(r, Response::TxnGetGidData { gxid: a + 1, prepared_gxid: a, nodes: b(b"dn1,dn2") });
    assert_eq!(t.g.txn(a + 1).unwrap().conn_id, -1);
    let r = reply(t.h(&l, Request::TxnCommitPrepared { gxid: a + 1, prepared_gxid: a, waited: vec![] }));
    assert_eq!(r, Response::TxnCommitPrepared { gxid: a + 1, status: 0 });
    assert_eq!(t.g.open_txn_count(), 0);
}

fn start_prepared(gxid: u32, gid: &[u8]) -> Request {
    Request::TxnStartPrepared { gxid, gid: b(gid), nodes: b(b"dn1,dn2") }
}

#[test]
fn next_gxid_and_get_gxid() {
    let mut t = new_gtm();
    let l = direct(2);
    assert_eq!(reply(t.h(&l, Request::TxnGetNextGxid)), Response::TxnGetNextGxid { gxid: 10000 });
    t.h(&l, Request::TxnBegin(begin(b"h")));
    // Inverted on the GTM: fails exactly when it obtained a GXID (assigning one).
    assert_eq!(error(t.h(&l, Request::TxnGetGxid { handle: 0 })), "Failed to get the transaction id");
    assert!(t.g.txn(10000).is_some());
    assert!(matches!(t.h(&l, Request::TxnGetGxid { handle: 5 }), Outcome::Crash(_)));
    assert!(matches!(t.h(&l, Request::TxnGetGxid { handle: -1 }), Outcome::Crash(_)));
}

#[test]
fn snapshots() {
    let mut t = new_gtm();
    let l = direct(2);
    let (st, s) = t.snapshot(&l, &[0]);
    assert_eq!((st, s), (vec![3], Snapshot { xmin: 10000, xmax: 10000, xip: vec![] }));
    let a = t.gxid(&l, b"a");
    let b_ = t.gxid(&l, b"b");
    let c = t.gxid(&l, b"c");
    // Nothing completed yet: xmax stays, newer transactions are not listed.
    assert_eq!(t.snapshot(&l, &[a]).1.xip, Vec::<u32>::new());
    t.commit(&l, &[c]);
    let (st, s) = t.snapshot(&l, &[a, b_, c, 0]);
    assert_eq!(st, vec![0, 0, 3, 3]);
    assert_eq!(s, Snapshot { xmin: a, xmax: c + 1, xip: vec![a, b_] });
    assert_eq!(t.g.txn(a).unwrap().xmin, a, "the first snapshot sets the transaction's xmin");
    let r = reply(t.h(&l, Request::SnapshotGet { count: 1, gxid: b_ }));
    assert_eq!(r, Response::SnapshotGet { gxid: b_, count: 1, status: 0, snapshot: s.clone() });
    let r = reply(t.h(&l, Request::SnapshotGxidGet { count: 1, gxid: b_ }));
    assert_eq!(r, Response::SnapshotGxidGet { gxid: b_, count: 1, status: 0, snapshot: s.clone() });
    assert!(matches!(t.h(&l, Request::SnapshotGxidGet { count: 1, gxid: 3 }), Outcome::Crash(_)));
}

#[test]
fn snapshot_get_odd_counts() {
    let mut t = new_gtm();
    let l = direct(2);
    let other = |o: Outcome| match reply(o) {
        Response::Other { result_type, payload } => (result_type, payload.to_vec()),
        r => panic!("{r:?}"),
    };
    let (rt, p) = other(t.h(&l, Request::SnapshotGet { count: 0, gxid: 10000 }));
    assert_eq!(rt, ResultType::SNAPSHOT_GET_RESULT);
    let mut want = BytesMut::new();
    want.put_u32_le(10000);
    want.put_i32_le(0);
    Snapshot { xmin: 10000, xmax: 10000, xip: vec![] }.encode(&mut want);
    assert_eq!(p, want.to_vec());
    let (_, p) = other(t.h(&l, Request::SnapshotGet { count: 2, gxid: 10000 }));
    assert_eq!(&p[4..16], &[2, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0]);
    assert_eq!(
        error(t.h(&l, Request::SnapshotGet { count: -1, gxid: 0 })),
        "invalid string enlargement request size: -4"
    );
    // Too big for any message: out of memory, with the buffer size in the detail.
    let detail = |o: Outcome| match o {
        Outcome::ErrorDetail { message, detail } => (message, detail),
        o => panic!("{o:?}"),
    };
    assert_eq!(
        detail(t.h(&l, Request::SnapshotGet { count: 0x1fff_ffff, gxid: 0 })),
        ("out of memory".into(), "Cannot enlarge string buffer containing 12 bytes by 2147483644 more bytes.".into())
    );
    let p = LinkCtx::proxy(5, 6, 3);
    assert_eq!(
        detail(t.h(&p, Request::SnapshotGet { count: 0x1fff_fffb, gxid: 0 })).1,
        "Cannot enlarge string buffer containing 14 bytes by 2147483628 more bytes."
    );
    assert!(matches!(t.h(&l, Request::SnapshotGet { count: 10_000_000, gxid: 0 }), Outcome::Crash(_)));
}

#[test]
fn serializable_snapshot_in_a_group() {
    let mut t = new_gtm();
    let l = direct(2);
    let ser = Begin { isolation: 0, read_only: false, session_id: b(b"s\0") };
    let s = match reply(t.h(&l, Request::TxnBeginGetGxid(ser))) {
        Response::TxnBeginGetGxid { gxid, .. } => gxid,
        r => panic!("{r:?}"),
    };
    t.snapshot(&l, &[s]);
    t.snapshot(&l, &[s]);
    assert_eq!(
        error(t.h(&l, Request::SnapshotGetMulti(vec![0, s]))),
        "Grouped snapshot can only include first snapshot in Serializable transaction"
    );
}

#[test]
fn transaction_limit() {
    let mut t = new_gtm();
    let l = direct(2);
    let g = t.multi(&l, vec![elem(b"", 1); MAX_TXNS - 1]);
    assert_eq!(g.len(), MAX_TXNS - 1);
    let e = error(t.h(&l, Request::TxnBeginGetGxidMulti(vec![elem(b"", 1), elem(b"", 2)])));
    assert_eq!(e, "Max global transactions limit reached (16384)");
    // The element before the failing one stays begun, without a GXID.
    assert_eq!(t.g.open_txn_count(), MAX_TXNS);
    assert_eq!(t.g.next_gxid(), 10000 + MAX_TXNS as u32 - 1);
    assert_eq!(error(t.h(&l, Request::TxnBeginGetGxid(begin(b"")))), "Max global transactions limit reached (16384)");
    t.commit(&l, &[10000]);
    assert_eq!(t.gxid(&l, b""), 10000 + MAX_TXNS as u32 - 1);
}

#[test]
fn link_close_aborts_unprepared_transactions_of_the_client() {
    let mut t = new_gtm();
    let a = direct(2);
    let o = direct(3);
    let x = t.gxid(&a, b"x");
    let y = t.gxid(&a, b"y");
    let z = t.gxid(&o, b"z");
    t.h(&a, start_prepared(y, b"gid"));
    t.g.link_closed(&a);
    assert!(t.g.txn(x).is_none());
    assert!(t.g.txn(y).is_some(), "prepared transactions survive");
    assert!(t.g.txn(z).is_some());
    assert_eq!(t.g.latest_completed(), x);
}

#[test]
fn backend_disconnect_by_connection_id() {
    let mut t = new_gtm();
    let p = LinkCtx::proxy(1, 3, -1);
    let g = t.multi(&p, vec![elem(b"a", 1), elem(b"b", 2), elem(b"c", 2)]);
    let other = direct(4);
    let o = t.gxid(&other, b"o");
    let disc = Request::BackendDisconnect { is_postmaster: false, node: None };
    assert_eq!(t.h(&LinkCtx::proxy(1, 3, 2), disc.clone()), Outcome::NoReply);
    assert!(t.g.txn(g[0]).is_some());
    assert!(t.g.txn(g[1]).is_none() && t.g.txn(g[2]).is_none());
    // Header -1 (or a link without header): everything of the client.
    t.h(&LinkCtx::proxy(1, 3, -1), disc.clone());
    assert!(t.g.txn(g[0]).is_none());
    assert!(t.g.txn(o).is_some());
    t.h(&other, disc);
    assert!(t.g.txn(o).is_none());
}

#[test]
fn backend_disconnect_of_a_postmaster_marks_its_node() {
    let mut t = new_gtm();
    let p = LinkCtx::proxy(1, 3, 5);
    t.h(&p, register(node_type::DATANODE, b"dn1"));
    let disc =
        |name: &[u8]| Request::BackendDisconnect { is_postmaster: true, node: Some((node_type::DATANODE, b(name))) };
    // Another link cannot disconnect it.
    t.h(&LinkCtx::proxy(2, 4, 5), disc(b"dn1"));
    assert_eq!(t.g.nodes.get(node_type::DATANODE, b"dn1").unwrap().status, NODE_CONNECTED);
    t.h(&p, disc(b"dn1"));
    assert_eq!(t.g.nodes.get(node_type::DATANODE, b"dn1").unwrap().status, NODE_DISCONNECTED);
    // Malformed: the transactions of the connection go before the error.
    let g = t.multi(&LinkCtx::proxy(1, 3, -1), vec![elem(b"k", 9)]);
    let e = error(t.cmd(&LinkCtx::proxy(1, 3, 9), 64, &[1, 4, 0, 0, 0]));
    assert_eq!(e, "insufficient data left in message");
    assert!(t.g.txn(g[0]).is_none());
    assert_eq!(error(t.cmd(&LinkCtx::proxy(1, 3, 9), 64, &[])), "no data left in message");
    // A name of 1025 bytes or more is ignored silently, even if it is not there.
    let mut p2 = vec![1, 4, 0, 0, 0];
    p2.extend_from_slice(&5000i32.to_be_bytes());
    assert_eq!(t.cmd(&LinkCtx::proxy(1, 3, 9), 64, &p2), Outcome::NoReply);
}

#[test]
fn postmaster_link_close_disconnects_its_node() {
    let mut t = new_gtm();
    let mut pm = direct(2);
    pm.is_postmaster = true;
    pm.remote_type = node_type::COORDINATOR;
    pm.node_name = b"cn1".to_vec();
    t.h(&pm, register(node_type::COORDINATOR, b"cn1"));
    assert_eq!(error(t.h(&direct(3), register(node_type::COORDINATOR, b"cn1"))), "Failed to Register node");
    // Closing another postmaster link with the same name does nothing.
    let mut other = pm.clone();
    other.link_id = 999;
    t.g.link_closed(&other);
    assert_eq!(t.g.nodes.get(3, b"cn1").unwrap().status, NODE_CONNECTED);
    t.g.link_closed(&pm);
    assert_eq!(t.g.nodes.get(3, b"cn1").unwrap().status, NODE_DISCONNECTED);
    assert!(matches!(t.h(&direct(3), register(node_type::COORDINATOR, b"cn1")), Outcome::Reply { .. }));
    assert_eq!(t.g.nodes.get(3, b"cn1").unwrap().socket, direct(3).link_id);
}

pub(super) fn register(node_type: i32, name: &[u8]) -> Request {
    Request::NodeRegister(NodeRegister {
        node_type,
        name: b(name),
        host: b(b"localhost"),
        port: 0,
        proxy_name: Bytes::new(),
        data_folder: Bytes::new(),
        status: 0,
    })
}

#[test]
fn node_register_checks_in_gtm_order() {
    let mut t = new_gtm();
    let l = direct(2);
    let r = reply(t.h(&l, register(3, b"cn1")));
    assert_eq!(r, Response::NodeRegister { node_type: 3, name: b(b"cn1") });
    assert_eq!(error(t.h(&l, register(3, b"cn1"))), "Failed to Register node");
    assert_eq!(error(t.h(&l, register(7, b"x"))), "Unknown node type.");
    assert_eq!(error(t.h(&l, register(0, b"x"))), "Unknown node type.");
    assert_eq!(error(t.h(&l, register(7, &[b'n'; 1025]))), "Invalid name length.");
    let mut r = register(7, b"p");
    if let Request::NodeRegister(n) = &mut r {
        n.proxy_name = b(&[b'q'; 1025]);
    }
    assert_eq!(error(t.h(&l, r)), "Invalid proxy name length.");
    // The name is cut at its first NUL.
    let r = reply(t.h(&l, register(3, b"cn\0tail")));
    assert_eq!(r, Response::NodeRegister { node_type: 3, name: b(b"cn") });
    // A GTM (standby) registration replaces the previous one.
    assert!(matches!(t.h(&l, register(5, b"gtm2")), Outcome::Reply { .. }));
    assert!(matches!(t.h(&l, register(5, b"gtm2")), Outcome::Reply { .. }));
    // Trailing bytes: registered, then refused.
    let mut p = BytesMut::new();
    register(4, b"dn1").encode_payload(&mut p);
    p.put_u8(b'x');
    assert_eq!(error(t.cmd(&l, 2, &p)), "invalid message format");
    assert!(t.g.nodes.get(4, b"dn1").is_some());
}

#[test]
fn node_unregister() {
    let mut t = new_gtm();
    let l = direct(2);
    t.h(&l, register(3, b"cn1"));
    let un = |name: &[u8]| Request::NodeUnregister { node_type: 3, name: b(name) };
    assert_eq!(reply(t.h(&l, un(b"cn1"))), Response::NodeUnregister { node_type: 3, name: b(b"cn1") });
    assert_eq!(error(t.h(&l, un(b"cn1"))), "Failed to Unregister node");
    assert_eq!(error(t.h(&l, un(&[b'x'; 1025]))), "Invalid node name length");
}

#[test]
fn register_session_registers_the_coordinator() {
    let mut t = new_gtm();
    let l = direct(2);
    let rs = |name: &[u8], pid, be| Request::RegisterSession { coord_name: b(name), coord_pid: pid, backend_id: be };
    assert_eq!(reply(t.h(&l, rs(b"cn2", 4242, 3))), Response::RegisterSession);
    let n = t.g.nodes.get(3, b"cn2").unwrap();
    assert!(n.is_session);
    assert_eq!(n.sessions, vec![(4242, 3)]);
    t.h(&l, rs(b"cn2", 4243, 3));
    assert_eq!(t.g.nodes.get(3, b"cn2").unwrap().sessions, vec![(4243, 3)]);
    assert_eq!(error(t.h(&l, rs(&[b'z'; 64], 1, 1))), "Invalid name length.");
    // Nothing to register: still answered.
    assert_eq!(reply(t.h(&l, rs(b"", 0, -1))), Response::RegisterSession);
    // A real registration converts the session registration; a second one fails.
    assert!(matches!(t.h(&l, register(3, b"cn2")), Outcome::Reply { .. }));
    assert!(!t.g.nodes.get(3, b"cn2").unwrap().is_session);
    assert_eq!(error(t.h(&l, register(3, b"cn2"))), "Failed to Register node");
}

fn xmin(t: &mut T, gxid: u32, ty: i32, name: &[u8]) -> (u32, u32, i32) {
    match t.h(&direct(2), Request::ReportXmin { gxid, node_type: ty, name: b(name) }) {
        Outcome::Reply { resp: Response::ReportXmin { latest_completed, global_xmin, errcode }, flush: true } => {
            (latest_completed, global_xmin, errcode)
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn report_xmin_codes() {
    let mut t = new_gtm();
    let l = direct(2);
    assert_eq!(xmin(&mut t, 10000, 3, b"cn1"), (9999, 0, 2), "unregistered node");
    t.h(&l, register(3, b"cn1"));
    assert_eq!(xmin(&mut t, 9999, 3, b"cn1"), (9999, 0, 1), "older than the global xmin");
    assert_eq!(xmin(&mut t, 10000, 3, b"cn1"), (9999, 10000, 0));
    let g = t.gxid(&l, b"a");
    t.commit(&l, &[g]);
    assert_eq!(xmin(&mut t, 10001, 3, b"cn1"), (10000, 10001, 0));
    // An open transaction holds the global xmin back.
    let h = t.gxid(&l, b"b");
    assert_eq!(xmin(&mut t, 10002, 3, b"cn1"), (10000, h, 0));
    // A node silent for 600 s leaves the computation; when it comes back with an
    // old xmin it is told it was excluded.
    t.h(&l, register(4, b"dn1"));
    t.clock.fetch_add(XMIN_DELAY_US, Ordering::SeqCst);
    t.commit(&l, &[h]);
    assert_eq!(xmin(&mut t, 10002, 4, b"dn1"), (10001, 10002, 0));
    t.clock.fetch_add(XMIN_DELAY_US, Ordering::SeqCst);
    assert_eq!(xmin(&mut t, 10002, 4, b"dn1"), (10001, 10002, 0));
    assert!(t.g.nodes.get(3, b"cn1").unwrap().excluded);
    assert_eq!(xmin(&mut t, 10001, 3, b"cn1"), (10001, 0, 3));
}

#[test]
fn barrier_sync_standby_and_lists() {
    let mut t = new_gtm();
    let l = direct(2);
    assert_eq!(reply(t.h(&l, Request::Barrier { id: b(b"b1\0") })), Response::Barrier);
    match t.cmd(&l, 1, &[]) {
        Outcome::Reply { resp: Response::Other { result_type, payload }, flush: true } => {
            assert_eq!(result_type, ResultType::SYNC_STANDBY_RESULT);
            assert!(payload.is_empty());
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(error(t.cmd(&l, 1, b"x")), "invalid message format");
    t.h(&l, register(3, b"cn1"));
    match reply(t.cmd(&l, 9, &[])) {
        Response::Other { result_type, payload } => {
            assert_eq!(result_type, ResultType::NODE_LIST_RESULT);
            let mut want = BytesMut::new();
            want.put_i32(1);
            want.put_i32(4 + 4 + 3 + 4 + 4 + 4 + 9 + 4 + 4 + 1 + 4 + 8 + 4 + 4);
            want.put_i32_le(3);
            want.put_u32_le(3);
            want.extend_from_slice(b"cn1");
            want.put_u32_le(0);
            want.put_u32_le(0);
            want.put_u32_le(9);
            want.extend_from_slice(b"localhost");
            want.put_u32_le(0);
            want.put_i32_le(0);
            want.put_u8(0);
            want.put_u32_le(10000);
            want.put_i64_le(0);
            want.put_u32_le(0);
            want.put_u32_le(0);
            assert_eq!(payload.to_vec(), want.to_vec());
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn dispatch_of_unknown_and_unanswered_types() {
    let mut t = new_gtm();
    let l = direct(2);
    assert_eq!(t.cmd(&l, 99, &[]), Outcome::Fatal("invalid frontend message type 99".into()));
    assert_eq!(t.cmd(&l, 63, &[]), Outcome::Fatal("invalid frontend message type 63".into()));
    assert_eq!(t.cmd(&l, 0, &[]), Outcome::Fatal("invalid frontend message type 0".into()));
    for ty in [59, 60, 36] {
        assert_eq!(t.cmd(&l, ty, &[]), Outcome::NoReply);
    }
    assert_eq!(t.cmd(&l, 47, &[1, 2]), Outcome::NoReply);
    assert!(error(t.cmd(&l, 19, &[])).starts_with("gtm_sim does not support message type 19"));
}

#[test]
fn malformed_payloads_answer_like_the_gtm() {
    let mut t = new_gtm();
    let l = direct(2);
    assert_eq!(error(t.cmd(&l, 16, &1i32.to_be_bytes())), "no data left in message");
    assert_eq!(error(t.cmd(&l, 16, &[0, 0, 0, 1, 0])), "insufficient data left in message");
    // Begin requests never check for trailing bytes.
    let mut p = BytesMut::new();
    Request::TxnBeginGetGxid(begin(b"s")).encode_payload(&mut p);
    p.extend_from_slice(b"trailing");
    assert!(matches!(t.cmd(&l, 16, &p), Outcome::Reply { .. }));
    // Commit does.
    let mut p = BytesMut::new();
    Request::TxnCommit { gxid: 10000, waited: vec![] }.encode_payload(&mut p);
    p.put_u8(0);
    assert_eq!(error(t.cmd(&l, 22, &p)), "invalid message format");
    assert!(t.g.txn(10000).is_some());
    // A negative waited count is no error.
    let mut p = 10000u32.to_le_bytes().to_vec();
    p.extend_from_slice(&(-5i32).to_be_bytes());
    assert_eq!(reply(t.cmd(&l, 22, &p)), Response::TxnCommit { gxid: 10000, status: 0 });
    assert_eq!(error(t.cmd(&l, 24, &(-1i32).to_be_bytes())), "invalid string enlargement request size: -4");
    assert!(matches!(t.cmd(&l, 24, &(-1000i32).to_be_bytes()), Outcome::Crash(_)));
    assert_eq!(error(t.cmd(&l, 32, &(-1i32).to_be_bytes())), "invalid string enlargement request size: -4");
    assert!(matches!(t.cmd(&l, 32, &(-2i32).to_be_bytes()), Outcome::Crash(_)));
    assert!(matches!(t.cmd(&l, 40, &(-1i32).to_be_bytes()), Outcome::Crash(_)));
    // GID lengths size an allocation first.
    let mut p = vec![0, 0, 0, 1, 0];
    p.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    assert_eq!(error(t.cmd(&l, 34, &p)), "invalid memory alloc request size 18446744071562067968");
    let mut p = 1u32.to_le_bytes().to_vec();
    p.extend_from_slice(&0x4000_0000u32.to_be_bytes());
    assert_eq!(error(t.cmd(&l, 20, &p)), "invalid memory alloc request size 1073741825");
    assert_eq!(error(t.cmd(&l, 65, &(-1i32).to_be_bytes())), "insufficient data left in message");
    assert_eq!(error(t.cmd(&l, 37, b"x")), "invalid message format");
    let mut p = 3i32.to_le_bytes().to_vec();
    p.extend_from_slice(&2000i32.to_be_bytes());
    assert_eq!(error(t.cmd(&l, 2, &p)), "Invalid name length.");
    // REGISTER_SESSION accepts trailing bytes.
    let mut p = BytesMut::new();
    Request::RegisterSession { coord_name: b(b"cn1"), coord_pid: 1, backend_id: 2 }.encode_payload(&mut p);
    p.extend_from_slice(b"extra");
    assert_eq!(reply(t.cmd(&l, 6, &p)), Response::RegisterSession);
}

#[test]
fn codec_and_gtm_reading_agree_on_well_formed_requests() {
    // Every request the codec accepts must be read the same way by the GTM-order
    // reader (which only sees refused payloads in practice).
    let reqs = vec![
        register(3, b"cn1"),
        Request::TxnBeginGetGxidMulti(vec![elem(b"a", 1), elem(b"", 2)]),
        Request::TxnCommit { gxid: 10000, waited: vec![1, 2] },
        Request::SnapshotGet { count: 1, gxid: 0 },
        Request::TxnGetGidData { isolation: 1, read_only: true, gid: b(b"g") },
        Request::Barrier { id: b(b"b\0") },
    ];
    for req in reqs {
        let mut p = BytesMut::new();
        req.encode_payload(&mut p);
        let mut a = new_gtm();
        let mut c = new_gtm();
        let via_codec = a.g.handle_command(&direct(2), req.msg_type(), p.clone().freeze());
        let via_gtm_reader = c.g.handle_malformed(&direct(2), req.msg_type(), p.freeze());
        assert_eq!(via_codec, via_gtm_reader, "{req:?}");
    }
}

#[test]
fn dirty_tracking() {
    let mut t = new_gtm();
    assert!(!t.g.take_dirty());
    t.gxid(&direct(2), b"a");
    assert!(t.g.take_dirty());
    assert!(!t.g.take_dirty());
    t.h(&direct(2), Request::TxnGetNextGxid);
    assert!(!t.g.take_dirty());
}

#[test]
fn oversized_multis() {
    // Commit and rollback MULTIs beyond 16384 elements were answered by the real
    // GTM; a snapshot MULTI crashed it.
    let mut t = new_gtm();
    let l = direct(2);
    let g = t.gxid(&l, b"a");
    let st = t.commit(&l, &vec![g; MAX_TXNS + 1]);
    assert_eq!(st.len(), MAX_TXNS + 1);
    assert!(st.iter().all(|&s| s == 0));
    let r = t.h(&l, Request::TxnRollbackMulti(vec![5; MAX_TXNS + 1]));
    assert!(matches!(r, Outcome::Reply { .. }));
    let r = t.h(&l, Request::SnapshotGetMulti(vec![0; MAX_TXNS + 1]));
    assert!(matches!(r, Outcome::Crash(_)));
}
