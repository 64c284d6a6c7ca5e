//! Batcher benchmarks: building one upstream flush from N grouped requests
//! and splitting the GTM's answers back per backend. A memcpy of the same
//! byte count is measured in the same run as the baseline to report ratios
//! against (the machines are noisy).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME};
use gtmproxy::codec::{encode_result, Begin, Response, ServerFrame, Snapshot};
use gtmproxy::proxy::batch::{split_answer, Batcher, Pending, Route};

fn route(i: usize) -> Route {
    Route { conn: i as i16, gen: i as u32 }
}

fn filled(n: usize) -> Batcher {
    let mut b = Batcher::default();
    for i in 0..n {
        let sid = Bytes::from(format!("cn1_{}_{}\0", 4000 + i, i));
        b.begins.push((route(i), Begin { isolation: 1, read_only: false, session_id: sid }));
        b.commits.push((route(i), 10_000 + i as u32));
        b.snapshots.push((route(i), 10_000 + i as u32));
    }
    b
}

fn answer(resp: &Response) -> ServerFrame {
    let mut b = BytesMut::new();
    encode_result(&mut b, Some(-1), resp);
    ServerFrame::decode(frame::split(&mut b, DEFAULT_MAX_FRAME).unwrap().unwrap(), true).unwrap()
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    g.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    for &n in &[16usize, 256, 1024] {
        g.throughput(Throughput::Elements(3 * n as u64));
        let mut out = BytesMut::with_capacity(1 << 20);
        let mut fifo = VecDeque::new();
        g.bench_with_input(BenchmarkId::new("flush_3_groups", n), &n, |bch, &n| {
            bch.iter_batched(
                || filled(n),
                |mut b| {
                    out.clear();
                    fifo.clear();
                    black_box(b.flush(1024, &mut out, &mut fifo));
                },
                criterion::BatchSize::SmallInput,
            )
        });
        // Baseline: copying as many bytes as that flush writes.
        let mut probe = filled(n);
        let mut bytes = BytesMut::new();
        probe.flush(1024, &mut bytes, &mut VecDeque::new());
        let src = bytes.to_vec();
        let mut dst = vec![0u8; src.len()];
        g.bench_with_input(BenchmarkId::new("baseline_memcpy", n), &n, |bch, _| {
            bch.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            })
        });

        let begins = Pending::Begin(
            (0..n)
                .map(|i| (route(i), Begin { isolation: 1, read_only: false, session_id: Bytes::from_static(b"\0") }))
                .collect(),
        );
        let begin_ans = answer(&Response::TxnBeginGetGxidMulti {
            gxids: (0..n as u32).map(|i| 10_000 + i).collect(),
            timestamp: 1,
        });
        let snaps = Pending::Snapshot((0..n).map(|i| (route(i), 10_000 + i as u32)).collect());
        let snap_ans = answer(&Response::SnapshotGetMulti {
            statuses: vec![0; n],
            snapshot: Snapshot {
                xmin: 10_000,
                xmax: 10_000 + n as u32,
                xip: (0..n as u32).map(|i| 10_000 + i).collect(),
            },
        });
        let mut sink = BytesMut::with_capacity(1 << 22);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("split_begin", n), &n, |bch, _| {
            bch.iter(|| {
                sink.clear();
                split_answer(&begins, &begin_ans, |_, _, a| a.encode(&mut sink)).unwrap();
            })
        });
        g.bench_with_input(BenchmarkId::new("split_snapshot", n), &n, |bch, _| {
            bch.iter(|| {
                sink.clear();
                split_answer(&snaps, &snap_ans, |_, _, a| a.encode(&mut sink)).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(batch, benches);
criterion_main!(batch);
