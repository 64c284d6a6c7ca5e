//! The annotated hex dumps of the protocol reference (section 10), rebuilt
//! from typed messages byte for byte, and decoded back to the values the
//! annotations give.

use bytes::{Bytes, BytesMut};
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME};
use gtmproxy::codec::types::node_type;
use gtmproxy::codec::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

fn cmd(header: Option<i16>, req: &Request) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_command(&mut b, header, req);
    b.to_vec()
}

fn res(header: Option<i16>, resp: &Response) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_result(&mut b, header, resp);
    b.to_vec()
}

fn one(bytes: &[u8]) -> RawFrame {
    let mut b = BytesMut::from(bytes);
    let f = frame::split(&mut b, DEFAULT_MAX_FRAME).unwrap().unwrap();
    assert!(b.is_empty());
    f
}

fn client(bytes: &[u8], proxied: bool) -> ClientFrame {
    ClientFrame::decode(one(bytes), proxied).unwrap()
}

fn server(bytes: &[u8], proxied: bool) -> ServerFrame {
    ServerFrame::decode(one(bytes), proxied).unwrap()
}

fn s(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}

#[test]
fn dump1_startup_and_ready() {
    let mut want = hex("41 00 00 00 50 63 6e 31");
    want.extend([0u8; 61]);
    want.extend(hex("06 00 00 00 00 00 00 00 00 00 00 00"));
    let sp = StartupPacket::new("cn1", node_type::DEFAULT, false, 0);
    let mut b = BytesMut::new();
    sp.encode(&mut b);
    assert_eq!(&b[..], &want[..]);
    assert_eq!(client(&want, false), ClientFrame::Startup(sp));

    let mut b = BytesMut::new();
    startup::encode_ready(&mut b, 0);
    assert_eq!(&b[..], &hex("52 00 00 00 08 00 00 00 00")[..]);
}

#[test]
fn dump1_register_session_forwarded() {
    let req = Request::RegisterSession { coord_name: s(b"cn1"), coord_pid: 18515, backend_id: 2 };
    let b2p = hex("43 00 00 00 17 00 00 00 06 00 00 00 03 63 6e 31 00 00 48 53 00 00 00 02");
    let p2g = hex("43 00 00 00 19 04 00 00 00 00 06 00 00 00 03 63 6e 31 00 00 48 53 00 00 00 02");
    assert_eq!(cmd(None, &req), b2p);
    assert_eq!(cmd(Some(4), &req), p2g);
    match client(&p2g, true) {
        ClientFrame::Command(c) => {
            assert_eq!(c.header, Some(4));
            assert_eq!(c.request().unwrap(), req);
        }
        other => panic!("{other:?}"),
    }
    let g2p = hex("53 00 00 00 0a 00 00 00 03 04 00");
    assert_eq!(res(Some(4), &Response::RegisterSession), g2p);
    assert_eq!(res(None, &Response::RegisterSession), hex("53 00 00 00 08 00 00 00 03"));
    let mut f = BytesMut::new();
    encode_flush(&mut f);
    assert_eq!(&f[..], &hex("46 00 00 00 08 00 00 00 3f")[..]);
}

#[test]
fn dump1_snapshot_begin_commit_disconnect() {
    let snap_req = Request::SnapshotGetMulti(vec![0]);
    assert_eq!(cmd(None, &snap_req), hex("43 00 00 00 10 00 00 00 28 00 00 00 01 00 00 00 00"));
    assert_eq!(cmd(Some(-1), &snap_req), hex("43 00 00 00 12 ff ff 00 00 00 28 00 00 00 01 00 00 00 00"));
    let snap = Snapshot { xmin: 10019, xmax: 10019, xip: vec![] };
    let g2p = hex("53 00 00 00 1e 00 00 00 19 ff ff 01 00 00 00 03 00 00 00 23 27 00 00 23 27 00 00 00 00 00 00");
    let multi = Response::SnapshotGetMulti { statuses: vec![3], snapshot: snap.clone() };
    assert_eq!(res(Some(-1), &multi), g2p);
    match server(&g2p, true) {
        ServerFrame::Result(r) => assert_eq!(r.response().unwrap(), multi),
        other => panic!("{other:?}"),
    }
    let p2b = Response::SnapshotGetMulti { statuses: vec![0], snapshot: snap };
    assert_eq!(
        res(None, &p2b),
        hex("53 00 00 00 1c 00 00 00 19 01 00 00 00 00 00 00 00 23 27 00 00 23 27 00 00 00 00 00 00")
    );

    let begin = Begin { isolation: 1, read_only: false, session_id: s(b"cn1_18515_17\0") };
    assert_eq!(
        cmd(None, &Request::TxnBeginGetGxid(begin.clone())),
        hex("43 00 00 00 1e 00 00 00 10 00 00 00 01 00 00 00 00 0d 63 6e 31 5f 31 38 35 31 35 5f 31 37 00")
    );
    assert_eq!(begin.session_key(), Some(&b"cn1_18515_17"[..]));
    let multi = Request::TxnBeginGetGxidMulti(vec![BeginElem { begin, conn_id: 4 }]);
    assert_eq!(
        cmd(Some(-1), &multi),
        hex("43 00 00 00 26 ff ff 00 00 00 12 00 00 00 01 00 00 00 01 00 00 00 00 0d
             63 6e 31 5f 31 38 35 31 35 5f 31 37 00 00 04")
    );
    let ts = 848615791432038i64;
    assert_eq!(
        res(Some(-1), &Response::TxnBeginGetGxidMulti { gxids: vec![10019], timestamp: ts }),
        hex("53 00 00 00 1a 00 00 00 0c ff ff 01 00 00 00 23 27 00 00 66 91 cc c2 cf 03 03 00")
    );
    assert_eq!(
        res(None, &Response::TxnBeginGetGxid { gxid: 10019, timestamp: ts }),
        hex("53 00 00 00 14 00 00 00 0b 23 27 00 00 66 91 cc c2 cf 03 03 00")
    );

    assert_eq!(
        cmd(Some(-1), &Request::TxnCommitMulti(vec![10019])),
        hex("43 00 00 00 12 ff ff 00 00 00 18 00 00 00 01 23 27 00 00")
    );
    assert_eq!(
        res(Some(-1), &Response::TxnCommitMulti { statuses: vec![0] }),
        hex("53 00 00 00 12 00 00 00 11 ff ff 01 00 00 00 00 00 00 00")
    );
    assert_eq!(
        cmd(Some(4), &Request::BackendDisconnect { is_postmaster: false, node: None }),
        hex("43 00 00 00 0b 04 00 00 00 00 40 00")
    );
    assert_eq!(client(&hex("58 00 00 00 04"), false), ClientFrame::Close);
}

#[test]
fn dump2_three_begins_grouped() {
    let e =
        |sid: &[u8], c| BeginElem { begin: Begin { isolation: 1, read_only: false, session_id: s(sid) }, conn_id: c };
    let multi = Request::TxnBeginGetGxidMulti(vec![e(b"cn1_1111_1\0", 0), e(b"cn1_2222_2\0", 1), e(b"\0", 2)]);
    let want = hex("43 00 00 00 46 ff ff 00 00 00 12 00 00 00 03 00
         00 00 01 00 00 00 00 0b 63 6e 31 5f 31 31 31 31
         5f 31 00 00 00 00 00 00 01 00 00 00 00 0b 63 6e
         31 5f 32 32 32 32 5f 32 00 00 01 00 00 00 01 00
         00 00 00 01 00 00 02");
    assert_eq!(cmd(Some(-1), &multi), want);
    match client(&want, true) {
        ClientFrame::Command(c) => assert_eq!(c.request().unwrap(), multi),
        other => panic!("{other:?}"),
    }
    let ts = i64::from_le_bytes([0x5c, 0x5f, 0x68, 0xbf, 0xcf, 0x03, 0x03, 0x00]);
    assert_eq!(
        res(Some(-1), &Response::TxnBeginGetGxidMulti { gxids: vec![10003, 10004, 10005], timestamp: ts }),
        hex("53 00 00 00 22 00 00 00 0c ff ff 03 00 00 00 13 27 00 00 14 27 00 00 15 27 00 00 5c 5f 68 bf cf 03 03 00")
    );
    assert_eq!(
        res(None, &Response::TxnBeginGetGxid { gxid: 10005, timestamp: ts }),
        hex("53 00 00 00 14 00 00 00 0b 15 27 00 00 5c 5f 68 bf cf 03 03 00")
    );
    let b2 = Begin { isolation: 1, read_only: false, session_id: s(b"\0") };
    assert_eq!(b2.session_key(), None);
}

#[test]
fn dump2_snapshots_and_commit_rollback() {
    assert_eq!(
        cmd(Some(2), &Request::SnapshotGet { count: 1, gxid: 10005 }),
        hex("43 00 00 00 12 02 00 00 00 00 27 00 00 00 01 15 27 00 00")
    );
    assert_eq!(
        cmd(Some(-1), &Request::SnapshotGetMulti(vec![10003, 10004])),
        hex("43 00 00 00 16 ff ff 00 00 00 28 00 00 00 02 13 27 00 00 14 27 00 00")
    );
    let snap = Snapshot { xmin: 10003, xmax: 10006, xip: vec![10003, 10004] };
    let get = Response::SnapshotGet { gxid: 10005, count: 1, status: 3, snapshot: snap.clone() };
    let g2p = hex("53 00 00 00 2a 00 00 00 18 02 00 15 27 00 00 01 00 00 00 03 00 00 00
         13 27 00 00 16 27 00 00 00 00 00 02 13 27 00 00 14 27 00 00");
    assert_eq!(res(Some(2), &get), g2p);
    assert_eq!(
        res(None, &get),
        hex("53 00 00 00 28 00 00 00 18 15 27 00 00 01 00 00 00 03 00 00 00
             13 27 00 00 16 27 00 00 00 00 00 02 13 27 00 00 14 27 00 00")
    );
    assert_eq!(
        res(Some(-1), &Response::SnapshotGetMulti { statuses: vec![0, 0], snapshot: snap.clone() }),
        hex("53 00 00 00 2a 00 00 00 19 ff ff 02 00 00 00 00 00 00 00 00 00 00 00
             13 27 00 00 16 27 00 00 00 00 00 02 13 27 00 00 14 27 00 00")
    );
    assert_eq!(
        res(None, &Response::SnapshotGetMulti { statuses: vec![0], snapshot: snap }),
        hex("53 00 00 00 24 00 00 00 19 01 00 00 00 00 00 00 00
             13 27 00 00 16 27 00 00 00 00 00 02 13 27 00 00 14 27 00 00")
    );
    assert_eq!(cmd(None, &Request::TxnRollback { gxid: 10004 }), hex("43 00 00 00 0c 00 00 00 1e 14 27 00 00"));
    assert_eq!(
        cmd(Some(-1), &Request::TxnRollbackMulti(vec![10004])),
        hex("43 00 00 00 12 ff ff 00 00 00 20 00 00 00 01 14 27 00 00")
    );
    assert_eq!(
        res(Some(-1), &Response::TxnRollbackMulti { statuses: vec![0] }),
        hex("53 00 00 00 12 00 00 00 13 ff ff 01 00 00 00 00 00 00 00")
    );
    assert_eq!(
        res(None, &Response::TxnRollback { gxid: 10004, status: None }),
        hex("53 00 00 00 0c 00 00 00 12 14 27 00 00")
    );
}

#[test]
fn dump3_error_and_sequence() {
    let req = Request::TxnGetGidData { isolation: 1, read_only: false, gid: s(b"nosuchgid") };
    assert_eq!(
        cmd(None, &req),
        hex("43 00 00 00 1a 00 00 00 22 00 00 00 01 00 00 00 00 09 6e 6f 73 75 63 68 67 69 64")
    );
    let msg = "Failed to get GID Data for prepared transaction";
    let mut g2p = hex("45 00 00 00 3f 02 00 53 45 52 52 4f 52 00 4d");
    g2p.extend_from_slice(msg.as_bytes());
    g2p.extend([0, 0]);
    let fields = ErrorFields::new("ERROR", msg);
    let mut b = BytesMut::new();
    encode_error(&mut b, Some(2), &fields);
    assert_eq!(&b[..], &g2p[..]);
    match server(&g2p, true) {
        ServerFrame::Error { header, fields: f } => {
            assert_eq!(header, Some(2));
            assert_eq!(f.severity(), "ERROR");
            assert_eq!(f.message(), msg);
        }
        other => panic!("{other:?}"),
    }
    let mut b = BytesMut::new();
    encode_error(&mut b, None, &fields);
    assert_eq!(&b[..5], &hex("45 00 00 00 3d")[..]);

    let key = s(b"db.public.s1\0");
    let req = Request::SequenceGetNext {
        key: key.clone(),
        session: SeqSession { coord_name: s(b"cn1"), coord_pid: 4242 },
        range: 1,
    };
    assert_eq!(
        cmd(None, &req),
        hex("43 00 00 00 2c 00 00 00 2d 00 00 00 0d 64 62 2e 70 75 62 6c 69 63 2e 73 31 00
             00 00 00 03 63 6e 31 00 00 10 92 01 00 00 00 00 00 00 00")
    );
    let resp = Response::SequenceGetNext { key, value: 1, range_max: 1 };
    assert_eq!(
        res(Some(1), &resp),
        hex("53 00 00 00 2b 00 00 00 1d 01 00 00 00 00 0d 64 62 2e 70 75 62 6c 69 63 2e 73 31 00
             01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00")
    );
}

#[test]
fn dump4_registration() {
    let reg = Request::NodeRegister(NodeRegister {
        node_type: node_type::GTM_PROXY,
        name: s(b"proxy1"),
        host: s(b"127.0.0.1"),
        port: 16002,
        proxy_name: Bytes::new(),
        data_folder: s(&[b'x'; 24]),
        status: 0,
    });
    let b = cmd(None, &reg);
    let mut want = hex("43 00 00 00 4b 00 00 00 02 01 00 00 00 00 00 00 06 70 72 6f 78 79 31
         00 00 00 09 31 32 37 2e 30 2e 30 2e 31 82 3e 00 00 00 00 00 00 00 00 00 18");
    want.extend([b'x'; 24]);
    want.extend(hex("00 00 00 00"));
    assert_eq!(b, want);
    assert_eq!(
        res(None, &Response::NodeRegister { node_type: 1, name: s(b"proxy1") }),
        hex("53 00 00 00 16 00 00 00 01 01 00 00 00 00 00 00 06 70 72 6f 78 79 31")
    );
    let sp = StartupPacket::new("proxy1", node_type::GTM_PROXY, false, 3);
    let mut b = BytesMut::new();
    sp.encode(&mut b);
    assert_eq!(&b[b.len() - 12..], &hex("01 00 00 00 00 00 00 00 03 00 00 00")[..]);
    assert_eq!(server(&hex("52 00 00 00 08 00 00 00 03"), false), ServerFrame::Ready { client_id: 3 });
    assert_eq!(
        cmd(Some(2), &Request::ReportXmin { gxid: 10020, node_type: 3, name: s(b"cn1") }),
        hex("43 00 00 00 19 02 00 00 00 00 07 24 27 00 00 00 00 00 03 00 00 00 03 63 6e 31")
    );
    assert_eq!(
        res(Some(2), &Response::ReportXmin { latest_completed: 10019, global_xmin: 10020, errcode: 0 }),
        hex("53 00 00 00 16 00 00 00 04 02 00 23 27 00 00 24 27 00 00 00 00 00 00")
    );
}

#[test]
fn dump5_direct_commit_and_rollback() {
    assert_eq!(
        cmd(None, &Request::TxnCommit { gxid: 10009, waited: vec![] }),
        hex("43 00 00 00 10 00 00 00 16 19 27 00 00 00 00 00 00")
    );
    assert_eq!(
        res(None, &Response::TxnCommit { gxid: 10009, status: 0 }),
        hex("53 00 00 00 10 00 00 00 10 19 27 00 00 00 00 00 00")
    );
    let direct = hex("53 00 00 00 10 00 00 00 12 1a 27 00 00 00 00 00 00");
    assert_eq!(res(None, &Response::TxnRollback { gxid: 10010, status: Some(0) }), direct);
    match server(&direct, false) {
        ServerFrame::Result(r) => {
            assert_eq!(r.response().unwrap(), Response::TxnRollback { gxid: 10010, status: Some(0) })
        }
        other => panic!("{other:?}"),
    }
}
