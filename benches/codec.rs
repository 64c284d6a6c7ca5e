//! Codec micro-benchmarks on the proxy's hot path.
//!
//! Every case has a `baseline/<case>` twin: a plain copy of the same bytes
//! into a preallocated buffer, measured in the same run, so results can be
//! quoted as ratios that mean something across machines.
//!
//! * `split_decode/*`: what the proxy does per backend frame — cut the frame
//!   off the read buffer and decode it down to a typed `Request`. The frames
//!   are those an XL 10 backend sends (protocol reference, dump 2): begin
//!   (`MSG_TXN_BEGIN_GETGXID`, 16), snapshot (`MSG_SNAPSHOT_GET_MULTI`, 40,
//!   one gxid) and commit (`MSG_TXN_COMMIT_MULTI`, 24, one gxid).
//! * `decode/*`: a GTM answer to a grouped request on a proxied link — a
//!   1024-element begin MULTI result, and a snapshot MULTI result for 64
//!   elements sharing a snapshot with 1000 running xids.
//! * `encode/begin_multi_1024`: building the grouped 1024-element begin.
//!
//! Run with `cargo bench --bench codec`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME};
use gtmproxy::codec::types::ISOLATION_RC;
use gtmproxy::codec::*;

fn wire_of(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    f(&mut b);
    b.to_vec()
}

fn begin(n: u32) -> Begin {
    Begin {
        isolation: ISOLATION_RC,
        read_only: false,
        session_id: Bytes::from(format!("cn1_18515_{n}\0").into_bytes()),
    }
}

fn begin_multi_request() -> Request {
    Request::TxnBeginGetGxidMulti((0..1024).map(|i| BeginElem { begin: begin(i), conn_id: i as i16 }).collect())
}

/// A copy of `wire` into a buffer that already has room: the floor any
/// per-frame work is compared against.
fn baseline(c: &mut Criterion, name: &str, wire: &[u8]) {
    let mut dst: Vec<u8> = Vec::with_capacity(wire.len());
    c.bench_function(&format!("baseline/{name}"), |b| {
        b.iter(|| {
            dst.clear();
            dst.extend_from_slice(black_box(wire));
            black_box(&dst);
        })
    });
}

/// Split one client frame off a freshly filled read buffer and decode it to
/// a `Request`. Filling the buffer is setup, not measured.
fn split_decode(c: &mut Criterion, name: &str, wire: &[u8]) {
    baseline(c, name, wire);
    c.bench_function(&format!("split_decode/{name}"), |b| {
        b.iter_batched(
            || BytesMut::from(wire),
            |mut buf| {
                let raw = frame::split(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
                match ClientFrame::decode(raw, false).unwrap() {
                    ClientFrame::Command(cmd) => cmd.request().unwrap(),
                    other => panic!("{other:?}"),
                }
            },
            BatchSize::SmallInput,
        )
    });
}

/// Decode an already split server frame (proxied link) to a `Response`.
fn decode_result(c: &mut Criterion, name: &str, wire: &[u8]) {
    baseline(c, name, wire);
    let raw = frame::split(&mut BytesMut::from(wire), DEFAULT_MAX_FRAME).unwrap().unwrap();
    c.bench_function(&format!("decode/{name}"), |b| {
        b.iter(|| match ServerFrame::decode(black_box(raw.clone()), true).unwrap() {
            ServerFrame::Result(r) => r.response().unwrap(),
            other => panic!("{other:?}"),
        })
    });
}

fn benches(c: &mut Criterion) {
    let gxid = 10019u32;

    let begin16 = wire_of(|b| encode_command(b, None, &Request::TxnBeginGetGxid(begin(17))));
    let snapshot40 = wire_of(|b| encode_command(b, None, &Request::SnapshotGetMulti(vec![gxid])));
    let commit24 = wire_of(|b| encode_command(b, None, &Request::TxnCommitMulti(vec![gxid])));
    split_decode(c, "begin16", &begin16);
    split_decode(c, "snapshot40", &snapshot40);
    split_decode(c, "commit24", &commit24);

    let begin_multi =
        Response::TxnBeginGetGxidMulti { gxids: (gxid..gxid + 1024).collect(), timestamp: 848615791432038 };
    decode_result(c, "begin_multi_result_1024", &wire_of(|b| encode_result(b, Some(-1), &begin_multi)));

    let snapshot_multi = Response::SnapshotGetMulti {
        statuses: vec![0; 64],
        snapshot: Snapshot { xmin: gxid, xmax: gxid + 2000, xip: (gxid..gxid + 2000).step_by(2).collect() },
    };
    decode_result(c, "snapshot_multi_result_1000xip", &wire_of(|b| encode_result(b, Some(-1), &snapshot_multi)));

    let req = begin_multi_request();
    let wire = wire_of(|b| encode_command(b, Some(-1), &req));
    baseline(c, "begin_multi_request_1024", &wire);
    let mut dst = BytesMut::with_capacity(wire.len());
    c.bench_function("encode/begin_multi_request_1024", |b| {
        b.iter(|| {
            dst.clear();
            encode_command(&mut dst, Some(-1), black_box(&req));
            black_box(&dst);
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .nresamples(20_000)
        .without_plots()
}

criterion_group! {
    name = codec;
    config = config();
    targets = benches
}
criterion_main!(codec);
