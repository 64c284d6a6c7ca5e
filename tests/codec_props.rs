//! Property tests of the wire codec.
//!
//! * Round trips: every `Request` / `Response` variant (and `Other` with types
//!   outside the modelled set), `ErrorFields`, `StartupPacket` and the frame
//!   envelopes, with and without the proxy header, survive
//!   encode → `frame::split` → decode unchanged and re-encode to the same bytes.
//! * Streams: many frames concatenated and cut at arbitrary points split back
//!   into the same frames.
//! * Robustness (the fuzz entry point of the codec): arbitrary bytes,
//!   arbitrary bodies behind valid headers, and mutations of valid frames go
//!   through `split` and every decoder without panicking, looping or
//!   allocating more than a small multiple of the input; absurd counts and
//!   lengths are rejected before anything is allocated for them.
//! * `frame::check` tells "need more bytes" from "broken stream" exactly.
//!
//! A counting global allocator (this test binary only) measures the largest
//! single allocation made while decoding.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME, HEADER_LEN};
use gtmproxy::codec::types::SP_NODE_NAME;
use gtmproxy::codec::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

// ---------------------------------------------------------------------------
// Allocation tracking

struct PeakAlloc;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// Anything this large is a decoder believing a length or count field it
/// should have checked; refuse it so the test aborts instead of the machine
/// swapping.
const REFUSE_ABOVE: usize = 1 << 30;

fn note(size: usize) {
    let _ = PEAK.try_with(|p| {
        if size > p.get() {
            p.set(size)
        }
    });
}

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        if layout.size() > REFUSE_ABOVE {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        if layout.size() > REFUSE_ABOVE {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        if new_size > REFUSE_ABOVE {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

/// Run `f`; return its result and the largest single allocation it made.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    let out = f();
    (out, PEAK.with(|p| p.get()))
}

/// What decoding `input_len` bytes may allocate at once. The worst legitimate
/// case is a `Vec` of 40-byte `(u8, Bytes)` error fields, one per 2 input
/// bytes, doubled by `Vec` growth; a count field believed without a bounds
/// check would blow far past this.
fn alloc_budget(input_len: usize) -> usize {
    64 * input_len + 4096
}

// ---------------------------------------------------------------------------
// Strategies

const STR: usize = 96;
const LIST: usize = 300;

fn blob(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn gxids() -> impl Strategy<Value = Vec<u32>> {
    vec(any::<u32>(), 0..=LIST)
}

fn statuses() -> impl Strategy<Value = Vec<i32>> {
    vec(any::<i32>(), 0..=LIST)
}

fn begin() -> impl Strategy<Value = Begin> {
    (any::<i32>(), any::<bool>(), blob(STR)).prop_map(|(isolation, read_only, session_id)| Begin {
        isolation,
        read_only,
        session_id,
    })
}

fn seq_session() -> impl Strategy<Value = SeqSession> {
    (blob(STR), any::<u32>()).prop_map(|(coord_name, coord_pid)| SeqSession { coord_name, coord_pid })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (any::<u32>(), any::<u32>(), gxids()).prop_map(|(xmin, xmax, xip)| Snapshot { xmin, xmax, xip })
}

/// XL 10 message types the codec keeps as `Request::Other`: the standby
/// (`MSG_BKUP_*`) replication messages, the other standby-only messages, and
/// the `MSG_TYPE_COUNT` sentinel.
const UNMODELLED_MSG: &[i32] = &[
    0, 1, 3, 5, 8, 9, 10, 11, 12, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 36, 38, 43, 46, 49, 51, 53, 55, 57, 58,
    59, 60, 62, 63, 66, 67,
];

/// Result types kept as `Response::Other` (`RESULT_TYPE_COUNT` included).
const UNMODELLED_RESULT: &[i32] = &[0, 5, 6, 7, 8, 9, 23, 30, 36, 37, 38, 41];

fn unmodelled_msg_type() -> impl Strategy<Value = MsgType> {
    prop_oneof![
        3 => select(UNMODELLED_MSG),
        1 => any::<i32>().prop_filter("outside the XL 10 range", |t| !(0..=67).contains(t)),
    ]
    .prop_map(MsgType)
}

fn unmodelled_result_type() -> impl Strategy<Value = ResultType> {
    prop_oneof![
        3 => select(UNMODELLED_RESULT),
        1 => any::<i32>().prop_filter("outside the XL 10 range", |t| !(0..=41).contains(t)),
    ]
    .prop_map(ResultType)
}

fn request() -> BoxedStrategy<Request> {
    use Request as R;
    prop_oneof![
        (any::<i32>(), blob(STR), blob(STR), any::<u32>(), blob(STR), blob(STR), any::<i32>()).prop_map(
            |(node_type, name, host, port, proxy_name, data_folder, status)| R::NodeRegister(NodeRegister {
                node_type,
                name,
                host,
                port,
                proxy_name,
                data_folder,
                status
            })
        ),
        (any::<i32>(), blob(STR)).prop_map(|(node_type, name)| R::NodeUnregister { node_type, name }),
        (blob(STR), any::<i32>(), any::<i32>()).prop_map(|(coord_name, coord_pid, backend_id)| R::RegisterSession {
            coord_name,
            coord_pid,
            backend_id
        }),
        (any::<u32>(), any::<i32>(), blob(STR)).prop_map(|(gxid, node_type, name)| R::ReportXmin {
            gxid,
            node_type,
            name
        }),
        begin().prop_map(R::TxnBegin),
        begin().prop_map(R::TxnBeginGetGxid),
        vec((begin(), any::<i16>()).prop_map(|(begin, conn_id)| BeginElem { begin, conn_id }), 0..=LIST)
            .prop_map(R::TxnBeginGetGxidMulti),
        (any::<u32>(), blob(STR), blob(STR)).prop_map(|(gxid, gid, nodes)| R::TxnStartPrepared { gxid, gid, nodes }),
        (any::<u32>(), gxids()).prop_map(|(gxid, waited)| R::TxnCommit { gxid, waited }),
        gxids().prop_map(R::TxnCommitMulti),
        (any::<u32>(), any::<u32>(), gxids()).prop_map(|(gxid, prepared_gxid, waited)| R::TxnCommitPrepared {
            gxid,
            prepared_gxid,
            waited
        }),
        any::<u32>().prop_map(|gxid| R::TxnPrepare { gxid }),
        any::<u32>().prop_map(|gxid| R::TxnRollback { gxid }),
        gxids().prop_map(R::TxnRollbackMulti),
        (any::<i32>(), any::<bool>(), blob(STR)).prop_map(|(isolation, read_only, gid)| R::TxnGetGidData {
            isolation,
            read_only,
            gid
        }),
        any::<i32>().prop_map(|handle| R::TxnGetGxid { handle }),
        Just(R::TxnGetNextGxid),
        (any::<i32>(), any::<u32>()).prop_map(|(count, gxid)| R::SnapshotGet { count, gxid }),
        gxids().prop_map(R::SnapshotGetMulti),
        (any::<i32>(), any::<u32>()).prop_map(|(count, gxid)| R::SnapshotGxidGet { count, gxid }),
        (blob(STR), any::<[i64; 4]>(), any::<bool>(), any::<u32>()).prop_map(
            |(key, [increment, min, max, start], cycle, gxid)| R::SequenceInit {
                key,
                increment,
                min,
                max,
                start,
                cycle,
                gxid
            }
        ),
        (blob(STR), seq_session()).prop_map(|(key, session)| R::SequenceGetCurrent { key, session }),
        (blob(STR), seq_session(), any::<i64>()).prop_map(|(key, session, range)| R::SequenceGetNext {
            key,
            session,
            range
        }),
        blob(STR).prop_map(|key| R::SequenceGetLast { key }),
        (blob(STR), seq_session(), any::<i64>(), any::<bool>())
            .prop_map(|(key, session, value, is_called)| { R::SequenceSetVal { key, session, value, is_called } }),
        blob(STR).prop_map(|key| R::SequenceReset { key }),
        (blob(STR), any::<i32>(), any::<u32>()).prop_map(|(key, key_type, gxid)| R::SequenceClose {
            key,
            key_type,
            gxid
        }),
        (blob(STR), blob(STR), any::<u32>()).prop_map(|(key, new_key, gxid)| R::SequenceRename { key, new_key, gxid }),
        (blob(STR), any::<[i64; 5]>(), any::<bool>(), any::<bool>()).prop_map(
            |(key, [increment, min, max, start, last], cycle, restart)| R::SequenceAlter {
                key,
                increment,
                min,
                max,
                start,
                last,
                cycle,
                restart
            }
        ),
        (any::<i32>(), any::<bool>())
            .prop_map(|(isolation, read_only)| R::TxnBeginGetGxidAutovacuum { isolation, read_only }),
        // The only consistent shapes: a postmaster names its node, a plain
        // backend does not.
        option::of((any::<i32>(), blob(STR)))
            .prop_map(|node| R::BackendDisconnect { is_postmaster: node.is_some(), node }),
        blob(STR).prop_map(|id| R::Barrier { id }),
        (unmodelled_msg_type(), blob(512)).prop_map(|(msg_type, payload)| R::Other { msg_type, payload }),
    ]
    .boxed()
}

fn response() -> BoxedStrategy<Response> {
    use Response as S;
    prop_oneof![
        (any::<i32>(), blob(STR)).prop_map(|(node_type, name)| S::NodeRegister { node_type, name }),
        (any::<i32>(), blob(STR)).prop_map(|(node_type, name)| S::NodeUnregister { node_type, name }),
        Just(S::RegisterSession),
        (any::<u32>(), any::<u32>(), any::<i32>()).prop_map(|(latest_completed, global_xmin, errcode)| {
            S::ReportXmin { latest_completed, global_xmin, errcode }
        }),
        (any::<i32>(), any::<i64>()).prop_map(|(handle, timestamp)| S::TxnBegin { handle, timestamp }),
        (any::<u32>(), any::<i64>()).prop_map(|(gxid, timestamp)| S::TxnBeginGetGxid { gxid, timestamp }),
        (gxids(), any::<i64>()).prop_map(|(gxids, timestamp)| S::TxnBeginGetGxidMulti { gxids, timestamp }),
        any::<u32>().prop_map(|gxid| S::TxnPrepare { gxid }),
        any::<u32>().prop_map(|gxid| S::TxnStartPrepared { gxid }),
        (any::<u32>(), any::<i32>()).prop_map(|(gxid, status)| S::TxnCommitPrepared { gxid, status }),
        (any::<u32>(), any::<i32>()).prop_map(|(gxid, status)| S::TxnCommit { gxid, status }),
        statuses().prop_map(|statuses| S::TxnCommitMulti { statuses }),
        (any::<u32>(), option::of(any::<i32>())).prop_map(|(gxid, status)| S::TxnRollback { gxid, status }),
        statuses().prop_map(|statuses| S::TxnRollbackMulti { statuses }),
        (any::<u32>(), any::<u32>(), blob(STR)).prop_map(|(gxid, prepared_gxid, nodes)| S::TxnGetGidData {
            gxid,
            prepared_gxid,
            nodes
        }),
        (any::<i32>(), any::<u32>()).prop_map(|(handle, gxid)| S::TxnGetGxid { handle, gxid }),
        any::<u32>().prop_map(|gxid| S::TxnGetNextGxid { gxid }),
        (any::<u32>(), any::<i32>(), any::<i32>(), snapshot())
            .prop_map(|(gxid, count, status, snapshot)| { S::SnapshotGet { gxid, count, status, snapshot } }),
        (statuses(), snapshot()).prop_map(|(statuses, snapshot)| S::SnapshotGetMulti { statuses, snapshot }),
        (any::<u32>(), any::<i32>(), any::<i32>(), snapshot())
            .prop_map(|(gxid, count, status, snapshot)| { S::SnapshotGxidGet { gxid, count, status, snapshot } }),
        blob(STR).prop_map(|key| S::SequenceInit { key }),
        (blob(STR), any::<i64>()).prop_map(|(key, value)| S::SequenceGetCurrent { key, value }),
        (blob(STR), any::<i64>(), any::<i64>()).prop_map(|(key, value, range_max)| S::SequenceGetNext {
            key,
            value,
            range_max
        }),
        blob(STR).prop_map(|key| S::SequenceSetVal { key }),
        blob(STR).prop_map(|key| S::SequenceReset { key }),
        blob(STR).prop_map(|key| S::SequenceClose { key }),
        blob(STR).prop_map(|key| S::SequenceRename { key }),
        blob(STR).prop_map(|key| S::SequenceAlter { key }),
        any::<u32>().prop_map(|gxid| S::TxnBeginGetGxidAutovacuum { gxid }),
        Just(S::Barrier),
        (unmodelled_result_type(), blob(512)).prop_map(|(result_type, payload)| S::Other { result_type, payload }),
    ]
    .boxed()
}

fn error_fields() -> impl Strategy<Value = ErrorFields> {
    let value = vec(1u8..=255, 0..=64).prop_map(Bytes::from);
    vec((1u8..=255, value), 0..=8).prop_map(|fields| ErrorFields { fields })
}

fn startup() -> impl Strategy<Value = StartupPacket> {
    (vec(any::<u8>(), SP_NODE_NAME), any::<i32>(), any::<bool>(), any::<u32>()).prop_map(
        |(name, remote_type, is_postmaster, client_id)| StartupPacket {
            node_name: name.try_into().unwrap(),
            remote_type,
            is_postmaster,
            client_id,
        },
    )
}

/// A frame of either direction, with the `proxied` flag of its link.
#[derive(Debug, Clone)]
enum AnyFrame {
    Client(ClientFrame, bool),
    Server(ServerFrame, bool),
}

impl AnyFrame {
    fn encode(&self, dst: &mut BytesMut) {
        match self {
            AnyFrame::Client(f, _) => f.encode(dst),
            AnyFrame::Server(f, _) => f.encode(dst),
        }
    }

    /// Decode `raw` the way the link of this frame would and compare.
    fn assert_decodes(&self, raw: RawFrame) {
        match self {
            AnyFrame::Client(f, proxied) => assert_eq!(&ClientFrame::decode(raw, *proxied).unwrap(), f),
            AnyFrame::Server(f, proxied) => assert_eq!(&ServerFrame::decode(raw, *proxied).unwrap(), f),
        }
    }
}

fn payload_of_request(req: &Request) -> Bytes {
    let mut p = BytesMut::new();
    req.encode_payload(&mut p);
    p.freeze()
}

fn payload_of_response(resp: &Response) -> Bytes {
    let mut p = BytesMut::new();
    resp.encode_payload(&mut p);
    p.freeze()
}

fn client_frame() -> impl Strategy<Value = AnyFrame> {
    prop_oneof![
        1 => (startup(), any::<bool>()).prop_map(|(s, p)| AnyFrame::Client(ClientFrame::Startup(s), p)),
        8 => (option::of(any::<i16>()), request()).prop_map(|(header, req)| {
            let c = Command { header, msg_type: req.msg_type(), payload: payload_of_request(&req) };
            AnyFrame::Client(ClientFrame::Command(c), header.is_some())
        }),
        1 => any::<bool>().prop_map(|p| AnyFrame::Client(ClientFrame::Flush, p)),
        1 => any::<bool>().prop_map(|p| AnyFrame::Client(ClientFrame::Close, p)),
    ]
}

fn server_frame() -> impl Strategy<Value = AnyFrame> {
    prop_oneof![
        1 => (any::<u32>(), any::<bool>())
            .prop_map(|(client_id, p)| AnyFrame::Server(ServerFrame::Ready { client_id }, p)),
        8 => (option::of(any::<i16>()), response()).prop_map(|(header, resp)| {
            let r = ResultFrame { header, result_type: resp.result_type(), payload: payload_of_response(&resp) };
            AnyFrame::Server(ServerFrame::Result(r), header.is_some())
        }),
        1 => (option::of(any::<i16>()), error_fields())
            .prop_map(|(header, fields)| AnyFrame::Server(ServerFrame::Error { header, fields }, header.is_some())),
        1 => (option::of(any::<i16>()), error_fields())
            .prop_map(|(header, fields)| AnyFrame::Server(ServerFrame::Notice { header, fields }, header.is_some())),
    ]
}

fn any_frame() -> impl Strategy<Value = AnyFrame> {
    prop_oneof![client_frame(), server_frame()]
}

// ---------------------------------------------------------------------------
// Helpers

/// Split `wire`, which must hold exactly one frame.
fn split_one(wire: &[u8]) -> RawFrame {
    let mut buf = BytesMut::from(wire);
    let raw = frame::split(&mut buf, DEFAULT_MAX_FRAME).unwrap().expect("a whole frame");
    assert!(buf.is_empty(), "{} bytes left after the frame", buf.len());
    assert_eq!(raw.wire_len(), wire.len());
    raw
}

/// Encode with `f` after some unrelated bytes already in the buffer (frames
/// are appended to a connection's output buffer) and return only the frame.
fn encode_after(junk: &[u8], f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut dst = BytesMut::from(junk);
    f(&mut dst);
    assert_eq!(&dst[..junk.len()], junk, "encoding must only append");
    dst.split_off(junk.len()).freeze()
}

/// Every proper prefix of a valid frame is `Incomplete`; the whole frame,
/// with or without bytes after it, has its own length.
fn assert_check_consistent(wire: &[u8]) {
    for n in 0..wire.len() {
        assert_eq!(frame::check(&wire[..n], DEFAULT_MAX_FRAME), Err(FrameError::Incomplete), "prefix of {n} bytes");
    }
    assert_eq!(frame::check(wire, DEFAULT_MAX_FRAME), Ok(wire.len()));
    let mut more = wire.to_vec();
    more.extend_from_slice(b"C\0\0");
    assert_eq!(frame::check(&more, DEFAULT_MAX_FRAME), Ok(wire.len()));
}

/// Feed `bytes` to `split` until it stops, and every frame it yields to
/// every decoder. Panics if anything misbehaves.
fn exercise(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    let mut frames = 0;
    loop {
        let before = buf.len();
        let (res, peak) = peak_alloc(|| frame::split(&mut buf, DEFAULT_MAX_FRAME));
        assert!(peak <= alloc_budget(0), "split allocated {peak} bytes");
        match res {
            Ok(Some(raw)) => {
                assert_eq!(before - buf.len(), raw.wire_len());
                frames += 1;
                assert!(frames * HEADER_LEN <= bytes.len(), "more frames than the input can hold");
                decode_every_way(raw);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                assert_eq!(frame::check(&buf, DEFAULT_MAX_FRAME), Err(FrameError::Incomplete));
                break;
            }
            Err(e) => {
                assert_eq!(buf.len(), before);
                assert_eq!(frame::check(&buf, DEFAULT_MAX_FRAME), Err(e));
                break;
            }
        }
    }
}

/// Decode one frame as client and as server frame, on plain and proxied
/// links, down to typed requests / responses. Whatever decodes must be
/// canonical: re-encoding it and decoding again gives the same value.
fn decode_every_way(raw: RawFrame) {
    let budget = alloc_budget(raw.wire_len());
    for proxied in [false, true] {
        let started = Instant::now();
        let (client, peak) = peak_alloc(|| {
            ClientFrame::decode(raw.clone(), proxied).map(|f| {
                let req = match &f {
                    ClientFrame::Command(c) => Some(c.request()),
                    _ => None,
                };
                (f, req)
            })
        });
        assert!(peak <= budget, "client decode of a {}-byte frame allocated {peak} bytes", raw.wire_len());
        let (server, peak) = peak_alloc(|| {
            ServerFrame::decode(raw.clone(), proxied).map(|f| {
                let resp = match &f {
                    ServerFrame::Result(r) => Some(r.response()),
                    _ => None,
                };
                (f, resp)
            })
        });
        assert!(peak <= budget, "server decode of a {}-byte frame allocated {peak} bytes", raw.wire_len());
        assert!(started.elapsed() < Duration::from_secs(1), "decoding a {}-byte frame took too long", raw.wire_len());

        if let Ok((f, req)) = client {
            let mut wire = BytesMut::new();
            f.encode(&mut wire);
            assert_eq!(ClientFrame::decode(split_one(&wire), proxied).unwrap(), f);
            if let (ClientFrame::Command(c), Some(Ok(req))) = (&f, req) {
                let mut wire = BytesMut::new();
                encode_command(&mut wire, c.header, &req);
                match ClientFrame::decode(split_one(&wire), proxied).unwrap() {
                    ClientFrame::Command(again) => assert_eq!(again.request().unwrap(), req),
                    other => panic!("{other:?}"),
                }
            }
        }
        if let Ok((f, resp)) = server {
            let mut wire = BytesMut::new();
            f.encode(&mut wire);
            assert_eq!(ServerFrame::decode(split_one(&wire), proxied).unwrap(), f);
            if let (ServerFrame::Result(r), Some(Ok(resp))) = (&f, resp) {
                let mut wire = BytesMut::new();
                encode_result(&mut wire, r.header, &resp);
                match ServerFrame::decode(split_one(&wire), proxied).unwrap() {
                    ServerFrame::Result(again) => assert_eq!(again.response().unwrap(), resp),
                    other => panic!("{other:?}"),
                }
            }
        }
    }
}

const TAGS: &[u8] = b"ACFXRSEN";

/// Values that break decoders that trust length and count fields.
fn nasty_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..=16,
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(0xffff_ffff),
        Just(0x4000_0000),
        Just(0x0001_0000),
        any::<u32>(),
    ]
}

#[derive(Debug, Clone)]
enum Tok {
    Byte(u8),
    Be(u32),
    Le(u32),
    Run(Vec<u8>),
}

fn tokens() -> impl Strategy<Value = Vec<u8>> {
    let tok = prop_oneof![
        any::<u8>().prop_map(Tok::Byte),
        nasty_u32().prop_map(Tok::Be),
        nasty_u32().prop_map(Tok::Le),
        vec(any::<u8>(), 0..32).prop_map(Tok::Run),
    ];
    vec(tok, 0..24).prop_map(|toks| {
        let mut out = Vec::new();
        for t in toks {
            match t {
                Tok::Byte(b) => out.push(b),
                Tok::Be(v) => out.extend_from_slice(&v.to_be_bytes()),
                Tok::Le(v) => out.extend_from_slice(&v.to_le_bytes()),
                Tok::Run(r) => out.extend_from_slice(&r),
            }
        }
        out
    })
}

/// A frame with a known tag, a correct length, and — for `C` / `S` — a
/// plausible proxy header and type, followed by hostile field values.
fn framed_noise() -> impl Strategy<Value = Vec<u8>> {
    (select(TAGS), option::of(any::<i16>()), -2i32..72, tokens()).prop_map(|(tag, header, ty, payload)| {
        let mut body = Vec::new();
        match tag {
            b'C' => {
                if let Some(h) = header {
                    body.extend_from_slice(&h.to_le_bytes());
                }
                body.extend_from_slice(&ty.to_be_bytes());
            }
            b'S' => {
                body.extend_from_slice(&ty.to_be_bytes());
                if let Some(h) = header {
                    body.extend_from_slice(&h.to_le_bytes());
                }
            }
            _ => {}
        }
        body.extend_from_slice(&payload);
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(&body);
        out
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Extend(Vec<u8>),
    Insert(Index, u8),
    Remove(Index),
    Word(Index, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => vec(any::<u8>(), 1..16).prop_map(Mutation::Extend),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        3 => (any::<Index>(), nasty_u32()).prop_map(|(i, v)| Mutation::Word(i, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip(i, mask) if !bytes.is_empty() => {
            let i = i.index(bytes.len());
            bytes[i] ^= mask;
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
        Mutation::Extend(more) => bytes.extend_from_slice(more),
        Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
        Mutation::Remove(i) if !bytes.is_empty() => {
            bytes.remove(i.index(bytes.len()));
        }
        Mutation::Word(i, v) if bytes.len() >= 4 => {
            let i = i.index(bytes.len() - 3);
            // Either byte order: the protocol uses both.
            let w = if i % 2 == 0 { v.to_be_bytes() } else { v.to_le_bytes() };
            bytes[i..i + 4].copy_from_slice(&w);
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Round trips

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn request_round_trips(req in request(), header in option::of(any::<i16>()), junk in vec(any::<u8>(), 0..8)) {
        let wire = encode_after(&junk, |d| encode_command(d, header, &req));
        assert_check_consistent(&wire);
        let decoded = ClientFrame::decode(split_one(&wire), header.is_some()).unwrap();
        let ClientFrame::Command(cmd) = &decoded else { panic!("{decoded:?}") };
        prop_assert_eq!(cmd.header, header);
        prop_assert_eq!(cmd.msg_type, req.msg_type());
        prop_assert_eq!(&cmd.request().unwrap(), &req);

        let again = encode_after(&junk, |d| decoded.encode(d));
        prop_assert_eq!(&again, &wire);
        let raw = encode_after(&junk, |d| encode_command_raw(d, header, req.msg_type(), &cmd.payload));
        prop_assert_eq!(&raw, &wire);
        prop_assert_eq!(&cmd.payload, &payload_of_request(&req));
    }

    #[test]
    fn response_round_trips(resp in response(), header in option::of(any::<i16>()), junk in vec(any::<u8>(), 0..8)) {
        let wire = encode_after(&junk, |d| encode_result(d, header, &resp));
        assert_check_consistent(&wire);
        let decoded = ServerFrame::decode(split_one(&wire), header.is_some()).unwrap();
        let ServerFrame::Result(res) = &decoded else { panic!("{decoded:?}") };
        prop_assert_eq!(res.header, header);
        prop_assert_eq!(res.result_type, resp.result_type());
        prop_assert_eq!(&res.response().unwrap(), &resp);

        let again = encode_after(&junk, |d| decoded.encode(d));
        prop_assert_eq!(&again, &wire);
        let raw = encode_after(&junk, |d| encode_result_raw(d, header, resp.result_type(), &res.payload));
        prop_assert_eq!(&raw, &wire);
    }

    #[test]
    fn error_and_notice_round_trip(fields in error_fields(), header in option::of(any::<i16>()), junk in vec(any::<u8>(), 0..8)) {
        let wire = encode_after(&junk, |d| encode_error(d, header, &fields));
        assert_check_consistent(&wire);
        let decoded = ServerFrame::decode(split_one(&wire), header.is_some()).unwrap();
        prop_assert_eq!(&decoded, &ServerFrame::Error { header, fields: fields.clone() });
        prop_assert_eq!(&encode_after(&junk, |d| decoded.encode(d)), &wire);

        let notice = ServerFrame::Notice { header, fields };
        let wire = encode_after(&junk, |d| notice.encode(d));
        assert_check_consistent(&wire);
        prop_assert_eq!(&ServerFrame::decode(split_one(&wire), header.is_some()).unwrap(), &notice);
    }

    #[test]
    fn startup_and_ready_round_trip(sp in startup(), client_id in any::<u32>(), proxied in any::<bool>(), junk in vec(any::<u8>(), 0..8)) {
        let wire = encode_after(&junk, |d| sp.encode(d));
        prop_assert_eq!(wire.len(), HEADER_LEN + types::STARTUP_BODY_LEN);
        assert_check_consistent(&wire);
        let decoded = ClientFrame::decode(split_one(&wire), proxied).unwrap();
        prop_assert_eq!(&decoded, &ClientFrame::Startup(sp.clone()));
        prop_assert_eq!(&encode_after(&junk, |d| decoded.encode(d)), &wire);

        let wire = encode_after(&junk, |d| startup::encode_ready(d, client_id));
        assert_check_consistent(&wire);
        let decoded = ServerFrame::decode(split_one(&wire), proxied).unwrap();
        prop_assert_eq!(&decoded, &ServerFrame::Ready { client_id });
        prop_assert_eq!(&encode_after(&junk, |d| decoded.encode(d)), &wire);
    }

    #[test]
    fn frames_round_trip(f in any_frame()) {
        let mut wire = BytesMut::new();
        f.encode(&mut wire);
        assert_check_consistent(&wire);
        let raw = split_one(&wire);
        let mut plain = BytesMut::new();
        raw.encode(&mut plain);
        prop_assert_eq!(&plain, &wire);
        f.assert_decodes(raw);
    }

    #[test]
    fn streams_split_identically_in_any_chunks(
        frames in vec(any_frame(), 1..16),
        cuts in vec(any::<Index>(), 0..40),
        dribble in any::<bool>(),
    ) {
        let mut wire = BytesMut::new();
        let mut expect = Vec::new();
        for f in &frames {
            let start = wire.len();
            f.encode(&mut wire);
            expect.push(split_one(&wire[start..]));
        }
        let mut points: Vec<usize> = if dribble {
            (0..=wire.len()).collect()
        } else {
            cuts.iter().map(|i| i.index(wire.len() + 1)).chain([0, wire.len()]).collect()
        };
        points.sort_unstable();
        points.dedup();

        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for w in points.windows(2) {
            buf.extend_from_slice(&wire[w[0]..w[1]]);
            while let Some(raw) = frame::split(&mut buf, DEFAULT_MAX_FRAME).unwrap() {
                got.push(raw);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&got, &expect);
        for (raw, f) in got.into_iter().zip(&frames) {
            f.assert_decodes(raw);
        }
    }
}

// ---------------------------------------------------------------------------
// Robustness

/// The contract of `frame::check`, written out from the protocol reference
/// (section 1.1) rather than from `frame.rs`.
fn check_spec(buf: &[u8], max: usize) -> Result<usize, FrameError> {
    let Some(&tag) = buf.first() else { return Err(FrameError::Incomplete) };
    if !TAGS.contains(&tag) {
        return Err(FrameError::UnknownTag(tag));
    }
    if buf.len() < 5 {
        return Err(FrameError::Incomplete);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(FrameError::LengthTooShort(len));
    }
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    if buf.len() < 1 + len {
        return Err(FrameError::Incomplete);
    }
    Ok(1 + len)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_break_the_codec(bytes in vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
    }

    #[test]
    fn hostile_bodies_behind_valid_headers(frames in vec(framed_noise(), 1..4)) {
        exercise(&frames.concat());
    }

    #[test]
    fn mutated_frames_never_break_the_codec(frames in vec(any_frame(), 1..4), muts in vec(mutation(), 1..5)) {
        let mut bytes = BytesMut::new();
        for f in &frames {
            f.encode(&mut bytes);
        }
        let mut bytes = bytes.to_vec();
        for m in &muts {
            apply(&mut bytes, m);
        }
        exercise(&bytes);
    }

    #[test]
    fn check_tells_incomplete_from_broken(
        bytes in prop_oneof![vec(any::<u8>(), 0..64), framed_noise()],
        max in prop_oneof![Just(DEFAULT_MAX_FRAME), 0usize..128, Just(usize::MAX)],
        extra in vec(any::<u8>(), 0..16),
    ) {
        let r = frame::check(&bytes, max);
        prop_assert_eq!(r.clone(), check_spec(&bytes, max));
        // More bytes never change a verdict other than Incomplete.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        match r {
            Err(FrameError::Incomplete) => {
                for n in 0..bytes.len() {
                    prop_assert_eq!(frame::check(&bytes[..n], max), Err(FrameError::Incomplete));
                }
            }
            other => prop_assert_eq!(frame::check(&longer, max), other),
        }
    }
}

/// Counts and lengths near 2^31 / 2^32, at every offset of small payloads of
/// every message and result type: each decode must fail (or succeed) at
/// once, allocating next to nothing.
#[test]
fn absurd_counts_and_lengths_are_rejected_before_allocating() {
    let started = Instant::now();
    let values = [0x7fff_ffffu32, 0x8000_0000, 0xffff_ffff, 0x4000_0000, 0x0100_0000];
    let mut payloads = Vec::new();
    for v in values {
        for at in 0..=28 {
            for be in [true, false] {
                let mut p = vec![0u8; 40];
                let w = if be { v.to_be_bytes() } else { v.to_le_bytes() };
                p[at..at + 4].copy_from_slice(&w);
                payloads.push(Bytes::from(p));
            }
        }
    }
    let budget = alloc_budget(64);
    for ty in -1..=70 {
        for p in &payloads {
            let (r, peak) = peak_alloc(|| Request::decode(MsgType(ty), p.clone()).map(drop));
            assert!(peak <= budget, "request type {ty}: {peak} bytes for {p:?} ({r:?})");
            let (r, peak) = peak_alloc(|| Response::decode(ResultType(ty), p.clone()).map(drop));
            assert!(peak <= budget, "result type {ty}: {peak} bytes for {p:?} ({r:?})");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

/// The count fields one by one, set to 2^31 - 1, 2^31 and 2^32 - 1 in their
/// own byte order, inside whole frames: every one is an error.
#[test]
fn count_of_two_to_the_31_is_an_error() {
    fn be(v: u32) -> [u8; 4] {
        v.to_be_bytes()
    }
    fn le(v: u32) -> [u8; 4] {
        v.to_le_bytes()
    }
    for v in [0x7fff_ffffu32, 0x8000_0000, 0xffff_ffff] {
        let gx = 7u32.to_le_bytes();
        let requests: Vec<(MsgType, Vec<u8>)> = vec![
            (MsgType::TXN_BEGIN_GETGXID_MULTI, [&be(v)[..], &[0; 11]].concat()),
            (MsgType::TXN_COMMIT, [&gx[..], &be(v), &gx].concat()),
            (MsgType::TXN_COMMIT_MULTI, [&be(v)[..], &gx].concat()),
            (MsgType::TXN_COMMIT_PREPARED, [&gx[..], &gx, &be(v), &gx].concat()),
            (MsgType::TXN_ROLLBACK_MULTI, [&be(v)[..], &gx].concat()),
            (MsgType::SNAPSHOT_GET_MULTI, [&be(v)[..], &gx].concat()),
            (MsgType::TXN_BEGIN, [&be(1)[..], &[0], &be(v), b"x\0"].concat()),
            (MsgType::NODE_REGISTER, [&le(5)[..], &be(v), b"gtm"].concat()),
            (MsgType::BARRIER, [&be(v)[..], b"b\0"].concat()),
            (MsgType::BACKEND_DISCONNECT, [&[1u8][..], &le(3), &be(v), b"cn1\0"].concat()),
        ];
        for (ty, payload) in requests {
            let mut wire = BytesMut::new();
            encode_command_raw(&mut wire, Some(1), ty, &payload);
            let started = Instant::now();
            let (r, peak) = peak_alloc(|| match ClientFrame::decode(split_one(&wire), true).unwrap() {
                ClientFrame::Command(c) => c.request(),
                other => panic!("{other:?}"),
            });
            assert!(r.is_err(), "{ty} with count {v:#x} decoded: {r:?}");
            assert!(peak <= alloc_budget(wire.len()), "{ty}: {peak} bytes");
            assert!(started.elapsed() < Duration::from_millis(500));
        }

        let snap = |xcnt: u32| [&gx[..], &gx, &be(xcnt), &gx].concat();
        let responses: Vec<(ResultType, Vec<u8>)> = vec![
            (ResultType::TXN_BEGIN_GETGXID_MULTI_RESULT, [&le(v)[..], &gx, &[0; 8]].concat()),
            (ResultType::TXN_COMMIT_MULTI_RESULT, [&le(v)[..], &gx].concat()),
            (ResultType::TXN_ROLLBACK_MULTI_RESULT, [&le(v)[..], &gx].concat()),
            (ResultType::SNAPSHOT_GET_RESULT, [&gx[..], &le(1), &le(0), &snap(v)].concat()),
            (ResultType::SNAPSHOT_GXID_GET_RESULT, [&gx[..], &le(1), &le(0), &snap(v)].concat()),
            (ResultType::SNAPSHOT_GET_MULTI_RESULT, [&le(v)[..], &le(0), &snap(1)].concat()),
            (ResultType::SNAPSHOT_GET_MULTI_RESULT, [&le(1)[..], &le(0), &snap(v)].concat()),
            (ResultType::SEQUENCE_GET_NEXT_RESULT, [&be(v)[..], b"k\0", &[0; 16]].concat()),
            (ResultType::TXN_GET_GID_DATA_RESULT, [&gx[..], &gx, &be(v), b"n"].concat()),
        ];
        for (ty, payload) in responses {
            let mut wire = BytesMut::new();
            encode_result_raw(&mut wire, None, ty, &payload);
            let started = Instant::now();
            let (r, peak) = peak_alloc(|| match ServerFrame::decode(split_one(&wire), false).unwrap() {
                ServerFrame::Result(res) => res.response(),
                other => panic!("{other:?}"),
            });
            assert!(r.is_err(), "{ty} with count {v:#x} decoded: {r:?}");
            assert!(peak <= alloc_budget(wire.len()), "{ty}: {peak} bytes");
            assert!(started.elapsed() < Duration::from_millis(500));
        }
    }
}

/// A length field of 2^31 and beyond is a broken stream at once, not a
/// request to buffer 2 GiB.
#[test]
fn huge_frame_length_is_rejected_from_the_header() {
    for len in [0x8000_0000u32, 0xffff_ffff, DEFAULT_MAX_FRAME as u32 + 1] {
        let mut b = BytesMut::new();
        b.put_u8(b'S');
        b.put_u32(len);
        let (r, peak) = peak_alloc(|| frame::split(&mut b, DEFAULT_MAX_FRAME));
        assert_eq!(r, Err(FrameError::TooLong { len: len as usize, max: DEFAULT_MAX_FRAME }));
        assert!(peak <= alloc_budget(0));
    }
}

// ---------------------------------------------------------------------------
// The strategies reach every variant

fn request_kind(r: &Request) -> usize {
    use Request::*;
    match r {
        NodeRegister(_) => 0,
        NodeUnregister { .. } => 1,
        RegisterSession { .. } => 2,
        ReportXmin { .. } => 3,
        TxnBegin(_) => 4,
        TxnBeginGetGxid(_) => 5,
        TxnBeginGetGxidMulti(_) => 6,
        TxnStartPrepared { .. } => 7,
        TxnCommit { .. } => 8,
        TxnCommitMulti(_) => 9,
        TxnCommitPrepared { .. } => 10,
        TxnPrepare { .. } => 11,
        TxnRollback { .. } => 12,
        TxnRollbackMulti(_) => 13,
        TxnGetGidData { .. } => 14,
        TxnGetGxid { .. } => 15,
        TxnGetNextGxid => 16,
        SnapshotGet { .. } => 17,
        SnapshotGetMulti(_) => 18,
        SnapshotGxidGet { .. } => 19,
        SequenceInit { .. } => 20,
        SequenceGetCurrent { .. } => 21,
        SequenceGetNext { .. } => 22,
        SequenceGetLast { .. } => 23,
        SequenceSetVal { .. } => 24,
        SequenceReset { .. } => 25,
        SequenceClose { .. } => 26,
        SequenceRename { .. } => 27,
        SequenceAlter { .. } => 28,
        TxnBeginGetGxidAutovacuum { .. } => 29,
        BackendDisconnect { is_postmaster: false, .. } => 30,
        BackendDisconnect { is_postmaster: true, .. } => 31,
        Barrier { .. } => 32,
        Other { .. } => 33,
    }
}
const REQUEST_KINDS: usize = 34;

fn response_kind(r: &Response) -> usize {
    use Response::*;
    match r {
        NodeRegister { .. } => 0,
        NodeUnregister { .. } => 1,
        RegisterSession => 2,
        ReportXmin { .. } => 3,
        TxnBegin { .. } => 4,
        TxnBeginGetGxid { .. } => 5,
        TxnBeginGetGxidMulti { .. } => 6,
        TxnPrepare { .. } => 7,
        TxnStartPrepared { .. } => 8,
        TxnCommitPrepared { .. } => 9,
        TxnCommit { .. } => 10,
        TxnCommitMulti { .. } => 11,
        TxnRollback { status: None, .. } => 12,
        TxnRollback { status: Some(_), .. } => 13,
        TxnRollbackMulti { .. } => 14,
        TxnGetGidData { .. } => 15,
        TxnGetGxid { .. } => 16,
        TxnGetNextGxid { .. } => 17,
        SnapshotGet { .. } => 18,
        SnapshotGetMulti { .. } => 19,
        SnapshotGxidGet { .. } => 20,
        SequenceInit { .. } => 21,
        SequenceGetCurrent { .. } => 22,
        SequenceGetNext { .. } => 23,
        SequenceSetVal { .. } => 24,
        SequenceReset { .. } => 25,
        SequenceClose { .. } => 26,
        SequenceRename { .. } => 27,
        SequenceAlter { .. } => 28,
        TxnBeginGetGxidAutovacuum { .. } => 29,
        Barrier => 30,
        Other { .. } => 31,
    }
}
const RESPONSE_KINDS: usize = 32;

fn kinds_seen<T: std::fmt::Debug>(s: BoxedStrategy<T>, kind: fn(&T) -> usize, n: usize) -> Vec<bool> {
    let mut runner = TestRunner::deterministic();
    let mut seen = vec![false; n];
    for _ in 0..1500 {
        seen[kind(&s.new_tree(&mut runner).unwrap().current())] = true;
    }
    seen
}

#[test]
fn strategies_cover_every_variant() {
    let seen = kinds_seen(request(), request_kind, REQUEST_KINDS);
    let missing: Vec<usize> = (0..REQUEST_KINDS).filter(|&i| !seen[i]).collect();
    assert!(missing.is_empty(), "request kinds never generated: {missing:?}");
    let seen = kinds_seen(response(), response_kind, RESPONSE_KINDS);
    let missing: Vec<usize> = (0..RESPONSE_KINDS).filter(|&i| !seen[i]).collect();
    assert!(missing.is_empty(), "response kinds never generated: {missing:?}");
}
