//! Unit tests of sequences: PG semantics as the GTM implements them, the GTM's
//! error texts, and transactional create / drop / rename.

use bytes::{BufMut, Bytes, BytesMut};

use super::tests_state::{direct, new_gtm, T};
use super::*;
use crate::codec::types::ResultType;
use crate::codec::{Request, Response, SeqSession};

const NONE: i64 = 0x7fff_ffff_ffff_ffff;

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

fn sess(name: &[u8], pid: u32) -> SeqSession {
    SeqSession { coord_name: b(name), coord_pid: pid }
}

fn init(key: &[u8], p: [i64; 4], cycle: bool, gxid: u32) -> Request {
    Request::SequenceInit { key: b(key), increment: p[0], min: p[1], max: p[2], start: p[3], cycle, gxid }
}

fn next(key: &[u8]) -> Request {
    Request::SequenceGetNext { key: b(key), session: sess(b"cn1", 4242), range: 1 }
}

fn current(key: &[u8]) -> Request {
    Request::SequenceGetCurrent { key: b(key), session: sess(b"cn1", 4242) }
}

impl T {
    fn ok(&mut self, req: Request) -> Response {
        match self.h(&direct(2), req) {
            Outcome::Reply { resp, .. } => resp,
            o => panic!("{o:?}"),
        }
    }

    fn err(&mut self, req: Request) -> String {
        match self.h(&direct(2), req) {
            Outcome::Error(m) => m,
            o => panic!("{o:?}"),
        }
    }

    fn nextval(&mut self, key: &[u8]) -> (i64, i64) {
        match self.ok(next(key)) {
            Response::SequenceGetNext { value, range_max, .. } => (value, range_max),
            r => panic!("{r:?}"),
        }
    }

    fn range(&mut self, key: &[u8], range: i64) -> (i64, i64) {
        match self.ok(Request::SequenceGetNext { key: b(key), session: sess(b"cn1", 4242), range }) {
            Response::SequenceGetNext { value, range_max, .. } => (value, range_max),
            r => panic!("{r:?}"),
        }
    }
}

#[test]
fn init_defaults_and_nextval() {
    let mut t = new_gtm();
    let k = b"db.public.s1\0";
    assert_eq!(t.ok(init(k, [NONE; 4], false, 0)), Response::SequenceInit { key: b(k) });
    assert_eq!(t.err(init(k, [NONE; 4], false, 0)), "Failed to open a new sequence");
    assert_eq!(t.nextval(k), (1, 1));
    assert_eq!(t.nextval(k), (2, 2));
    assert_eq!(t.ok(current(k)), Response::SequenceGetCurrent { key: b(k), value: 2 });
    // Keys compare with their length: without the NUL it is another key.
    assert_eq!(t.err(next(b"db.public.s1")), "Can not get current value of the sequence");
    let s = t.g.seqs.get(k).unwrap();
    assert_eq!((s.min, s.max, s.increment), (1, 0x7fff_ffff_ffff_fffe, 1));
}

#[test]
fn descending_defaults() {
    let mut t = new_gtm();
    t.ok(init(b"d\0", [-1, NONE, NONE, NONE], false, 0));
    let s = t.g.seqs.get(b"d\0").unwrap();
    assert_eq!((s.min, s.max, s.value), (-0x7fff_ffff_ffff_fffe, -1, -0x7fff_ffff_ffff_fffe));
    // Sic: it starts at its minimum, so the second nextval already fails.
    assert_eq!(t.nextval(b"d\0").0, -0x7fff_ffff_ffff_fffe);
    assert_eq!(t.err(next(b"d\0")), "Can not get current value of the sequence");
}

#[test]
fn init_validation_messages() {
    let mut t = new_gtm();
    assert_eq!(t.err(init(b"e\0", [1, 10, 5, NONE], false, 0)), "Max value must be greater than min value");
    assert_eq!(
        t.err(init(b"e\0", [1, 10, 20, 5], false, 0)),
        "Start value must be greater than or equal to the min value"
    );
    assert_eq!(
        t.err(init(b"e\0", [1, 10, 20, 25], false, 0)),
        "Start value must be less than or equal to the max value"
    );
    assert!(t.g.seqs.get(b"e\0").is_none());
}

#[test]
fn max_value_cycle_and_ranges() {
    let mut t = new_gtm();
    t.ok(init(b"c\0", [2, 1, 6, 1], false, 0));
    assert_eq!(t.range(b"c\0", 10), (1, 5));
    assert_eq!(t.err(next(b"c\0")), "Can not get current value of the sequence");
    let alter = Request::SequenceAlter {
        key: b(b"c\0"),
        increment: 2,
        min: 1,
        max: 6,
        start: 1,
        last: 0,
        cycle: true,
        restart: false,
    };
    assert_eq!(t.ok(alter), Response::SequenceAlter { key: b(b"c\0") });
    assert_eq!(t.nextval(b"c\0"), (1, 1));
    assert_eq!(t.range(b"c\0", 3), (3, 5));
}

#[test]
fn setval_currval_and_sessions() {
    let mut t = new_gtm();
    let k = b"s\0";
    t.ok(init(k, [NONE; 4], false, 0));
    assert_eq!(t.err(current(k)), "currval of sequence \"s\" is not yet defined in this session");
    assert_eq!(t.err(current(b"zz\0")), "sequence \"zz\" does not exist");
    let setval =
        |v, called| Request::SequenceSetVal { key: b(k), session: sess(b"cn1", 4242), value: v, is_called: called };
    assert_eq!(t.ok(setval(100, true)), Response::SequenceSetVal { key: b(k) });
    assert_eq!(t.nextval(k).0, 101);
    t.ok(setval(200, false));
    assert_eq!(t.ok(current(k)), Response::SequenceGetCurrent { key: b(k), value: 200 });
    assert_eq!(t.nextval(k).0, 200);
    // Another session has no currval; a departed one loses its value when its
    // backend id is reused.
    let other = Request::SequenceGetCurrent { key: b(k), session: sess(b"cn1", 9) };
    assert!(t.err(other).contains("not yet defined"));
    let rs = |pid, be| Request::RegisterSession { coord_name: b(b"cn1"), coord_pid: pid, backend_id: be };
    t.ok(rs(4242, 1));
    t.ok(rs(5000, 1));
    assert!(t.err(current(k)).contains("not yet defined"));
    // No coordinator name with session values around: the real GTM crashes.
    t.nextval(k);
    let anon = Request::SequenceGetCurrent { key: b(k), session: sess(b"", 0) };
    assert!(matches!(t.h(&direct(2), anon), Outcome::Crash(_)));
    assert_eq!(
        t.err(Request::SequenceSetVal { key: b(b"x\0"), session: sess(b"", 0), value: 1, is_called: true }),
        "Failed to set values of sequence"
    );
}

#[test]
fn reset_resets_then_fails() {
    let mut t = new_gtm();
    t.ok(init(b"r\0", [1, 1, 100, 10], false, 0));
    t.nextval(b"r\0");
    t.nextval(b"r\0");
    assert_eq!(t.err(Request::SequenceReset { key: b(b"r\0") }), "lock is not held");
    assert_eq!(t.nextval(b"r\0").0, 11, "value back at the start, still called");
    assert_eq!(t.err(Request::SequenceReset { key: b(b"nope\0") }), "Can not reset the sequence");
}

#[test]
fn alter_restart_and_unknown() {
    let mut t = new_gtm();
    t.ok(init(b"a\0", [NONE; 4], false, 0));
    t.nextval(b"a\0");
    let alter = |key: &[u8], restart| Request::SequenceAlter {
        key: b(key),
        increment: 5,
        min: 1,
        max: 30,
        start: 7,
        last: 20,
        cycle: false,
        restart,
    };
    t.ok(alter(b"a\0", true));
    assert_eq!(t.nextval(b"a\0").0, 20);
    assert_eq!(t.nextval(b"a\0").0, 25);
    assert_eq!(t.err(alter(b"x\0", false)), "Failed to open a new sequence");
}

#[test]
fn close_rename_and_database_drop() {
    let mut t = new_gtm();
    for k in [&b"db.public.a\0"[..], b"db.public.b\0", b"db2.public.c\0"] {
        t.ok(init(k, [NONE; 4], false, 0));
    }
    let rename = |k: &[u8], n: &[u8]| Request::SequenceRename { key: b(k), new_key: b(n), gxid: 0 };
    assert_eq!(t.ok(rename(b"db.public.a\0", b"db.public.z\0")), Response::SequenceRename { key: b(b"db.public.z\0") });
    assert_eq!(t.err(rename(b"db.public.z\0", b"db.public.b\0")), "Can not rename the sequence");
    assert_eq!(t.err(rename(b"nope\0", b"x\0")), "Can not rename the sequence");
    let close = |k: &[u8], ty| Request::SequenceClose { key: b(k), key_type: ty, gxid: 0 };
    assert_eq!(t.err(close(b"nope\0", 0)), "Can not close the sequence");
    assert_eq!(t.err(close(b"db.public.b\0", 7)), "Can not close the sequence");
    assert_eq!(t.ok(close(b"db\0", 1)), Response::SequenceClose { key: b(b"db\0") });
    assert!(t.g.seqs.get(b"db.public.z\0").is_none() && t.g.seqs.get(b"db.public.b\0").is_none());
    assert!(t.g.seqs.get(b"db2.public.c\0").is_some());
    t.ok(close(b"db2.public.c\0", 0));
    assert!(t.g.seqs.list.is_empty());
}

#[test]
fn get_last_is_never_answered() {
    let mut t = new_gtm();
    assert_eq!(t.h(&direct(2), Request::SequenceGetLast { key: b(b"x\0") }), Outcome::NoReply);
}

#[test]
fn transactional_create_drop_rename() {
    let mut t = new_gtm();
    let l = direct(2);
    let g1 = t.gxid(&l, b"t1");
    t.ok(init(b"s.a\0", [NONE; 4], false, g1));
    t.ok(Request::TxnRollback { gxid: g1 });
    assert!(t.g.seqs.get(b"s.a\0").is_none(), "rollback drops a sequence created in the transaction");

    let g2 = t.gxid(&l, b"t2");
    t.ok(init(b"s.b\0", [NONE; 4], false, g2));
    t.ok(Request::TxnCommitMulti(vec![g2]));
    assert!(t.g.seqs.get(b"s.b\0").is_some());

    let g3 = t.gxid(&l, b"t3");
    t.ok(Request::SequenceClose { key: b(b"s.b\0"), key_type: 0, gxid: g3 });
    let dropped = format!("s.b_dropped_{g3}\0");
    assert!(t.g.seqs.get(dropped.as_bytes()).is_some());
    t.ok(Request::TxnRollbackMulti(vec![g3]));
    assert!(t.g.seqs.get(b"s.b\0").is_some(), "rollback restores a dropped sequence");

    let g4 = t.gxid(&l, b"t4");
    t.ok(Request::SequenceRename { key: b(b"s.b\0"), new_key: b(b"s.c\0"), gxid: g4 });
    t.ok(Request::TxnRollback { gxid: g4 });
    assert!(t.g.seqs.get(b"s.b\0").is_some(), "rollback undoes a rename");

    let g5 = t.gxid(&l, b"t5");
    t.ok(Request::SequenceClose { key: b(b"s.b\0"), key_type: 0, gxid: g5 });
    t.ok(Request::TxnCommit { gxid: g5, waited: vec![] });
    assert!(t.g.seqs.list.is_empty(), "commit drops it for good");

    // Link close removes the transaction without touching its sequences.
    let g6 = t.gxid(&l, b"t6");
    t.ok(init(b"s.e\0", [NONE; 4], false, g6));
    t.g.link_closed(&l);
    assert!(t.g.seqs.get(b"s.e\0").is_some());
}

#[test]
fn closing_in_the_creating_transaction_keeps_the_created_note() {
    let mut t = new_gtm();
    let l = direct(2);
    let g = t.gxid(&l, b"t");
    t.ok(init(b"s.d\0", [NONE; 4], false, g));
    t.ok(Request::SequenceClose { key: b(b"s.d\0"), key_type: 0, gxid: g });
    assert!(t.g.seqs.get(b"s.d\0").is_none());
    t.ok(init(b"s.d\0", [NONE; 4], false, 0));
    t.ok(Request::TxnRollback { gxid: g });
    assert!(t.g.seqs.get(b"s.d\0").is_none(), "as on the GTM, the rollback drops the new one too");
}

#[test]
fn sequence_list_blob() {
    let mut t = new_gtm();
    t.ok(init(b"q\0", [3, 1, 100, 5], true, 0));
    t.nextval(b"q\0");
    match t.h(&direct(2), Request::Other { msg_type: crate::codec::MsgType::SEQUENCE_LIST, payload: Bytes::new() }) {
        Outcome::Reply { resp: Response::Other { result_type, payload }, .. } => {
            assert_eq!(result_type, ResultType::SEQUENCE_LIST_RESULT);
            let mut want = BytesMut::new();
            want.put_i32(1);
            let mut blob = BytesMut::new();
            blob.put_u32_le(2);
            blob.extend_from_slice(b"q\0");
            blob.put_i32_le(0);
            blob.put_i64_le(5);
            blob.put_i64_le(5);
            blob.put_u32_le(16);
            blob.put_u32_le(1);
            let mut name = [0u8; 64];
            name[..3].copy_from_slice(b"cn1");
            blob.extend_from_slice(&name);
            blob.put_i32_le(4242);
            blob.put_u32_le(0);
            blob.put_i64_le(5);
            blob.put_i64_le(3);
            blob.put_i64_le(1);
            blob.put_i64_le(100);
            blob.put_u8(1);
            blob.put_u8(1);
            blob.put_u32_le(1);
            blob.put_u32_le(1);
            want.put_i32(blob.len() as i32);
            want.extend_from_slice(&blob);
            assert_eq!(payload.to_vec(), want.to_vec());
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn trailing_bytes_after_sequence_changes() {
    let mut t = new_gtm();
    let l = direct(2);
    let mut p = BytesMut::new();
    init(b"k\0", [NONE; 4], false, 0).encode_payload(&mut p);
    p.put_u8(b'x');
    match t.g.handle_command(&l, crate::codec::MsgType::SEQUENCE_INIT, p.freeze()) {
        Outcome::Error(m) => assert_eq!(m, "invalid message format"),
        o => panic!("{o:?}"),
    }
    assert!(t.g.seqs.get(b"k\0").is_some(), "created before the trailing-bytes check");
    // GET_NEXT never checks.
    let mut p = BytesMut::new();
    next(b"k\0").encode_payload(&mut p);
    p.extend_from_slice(b"junk");
    assert!(matches!(
        t.g.handle_command(&l, crate::codec::MsgType::SEQUENCE_GET_NEXT, p.freeze()),
        Outcome::Reply { .. }
    ));
}

#[test]
fn huge_ranges_are_capped_without_spinning() {
    let mut t = new_gtm();
    t.ok(init(b"big\0", [NONE; 4], false, 0));
    assert_eq!(t.range(b"big\0", i64::MAX), (1, 0x7fff_ffff_ffff_fffe));
    t.ok(init(b"down\0", [-3, -20, -1, -1], false, 0));
    assert_eq!(t.range(b"down\0", 100), (-1, -19));
    t.ok(init(b"exact\0", [5, 1, 100, 1], false, 0));
    assert_eq!(t.range(b"exact\0", 4), (1, 16));
    assert_eq!(t.range(b"exact\0", 1000), (21, 96));
}
