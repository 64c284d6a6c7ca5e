//! Batcher benchmarks: building one upstream flush from N grouped requests
//! and splitting the GTM's answers back per backend. A memcpy of the same
//! byte count is measured in the same run as the baseline to report ratios
//! against (the machines are noisy).
//!
//! `rounds/*`: the batcher under the coalescing policy over a stream of poll
//! rounds against a GTM that answers a frame a fixed number of rounds after
//! it was sent; the baseline is the same stream under full pipelining (the
//! behaviour before the policy). Both print the MULTIs they built and their
//! mean size once, so the benchmark output shows what the policy changes.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME};
use gtmproxy::codec::{encode_result, Begin, Response, ServerFrame, Snapshot};
use gtmproxy::proxy::batch::{in_flight, split_answer, Batcher, Pending, Route};
use gtmproxy::proxy::coalesce::{Coalescer, HoldPolicy, Kind};
use std::time::Instant;

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

/// What a stream of rounds produced.
#[derive(Debug, Default)]
struct Stream {
    frames: usize,
    elements: usize,
}

/// `rounds` poll rounds, 50 µs apart; each brings `per_round` begins,
/// snapshots and commits; the GTM answers a frame `latency` rounds after it
/// was sent. Returns the MULTIs built.
fn run_rounds(policy: HoldPolicy, rounds: usize, per_round: usize, latency: usize, out: &mut BytesMut) -> Stream {
    let t0 = Instant::now();
    let mut b = Batcher::default();
    let mut c = Coalescer::new(policy);
    let mut fifo: VecDeque<Pending> = VecDeque::new();
    let mut sent_at: VecDeque<usize> = VecDeque::new();
    let mut st = Stream::default();
    let sid = Bytes::from_static(b"\0");
    for round in 0..rounds {
        // Answers due this round.
        while sent_at.front().is_some_and(|&r| r + latency <= round) {
            sent_at.pop_front();
            black_box(fifo.pop_front());
        }
        for i in 0..per_round {
            let r = route(round * per_round + i);
            b.begins.push((r, Begin { isolation: 1, read_only: false, session_id: sid.clone() }));
            b.snapshots.push((r, 10_000 + i as u32));
            b.commits.push((r, 10_000 + i as u32));
        }
        let now = t0 + Duration::from_micros(50 * round as u64);
        let (release, _) = c.plan(now, b.queued(), in_flight(fifo.iter()), 1024);
        b.keep = release.map(|r| !r);
        out.clear();
        let n = b.flush(1024, out, &mut fifo);
        st.frames += n;
        sent_at.extend(std::iter::repeat_n(round, n));
    }
    st.elements = [Kind::Begin, Kind::Commit, Kind::Snapshot]
        .iter()
        .map(|&k| b.sizes.by_kind[k as usize].mean() * b.sizes.by_kind[k as usize].len() as f64)
        .sum::<f64>() as usize;
    st
}

fn rounds(c: &mut Criterion) {
    let mut g = c.benchmark_group("rounds");
    g.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    let (n_rounds, latency) = (200, 4);
    for &per_round in &[1usize, 8, 64] {
        g.throughput(Throughput::Elements((3 * per_round * n_rounds) as u64));
        let mut out = BytesMut::with_capacity(1 << 20);
        for (name, policy) in [("coalescing", HoldPolicy::default()), ("baseline_pipelining", HoldPolicy::PIPELINE)] {
            let st = run_rounds(policy, n_rounds, per_round, latency, &mut out);
            eprintln!(
                "rounds/{name}/{per_round}: {} MULTIs for {} elements, mean size {:.1} (GTM answers after {latency} rounds)",
                st.frames,
                st.elements,
                st.elements as f64 / st.frames.max(1) as f64
            );
            g.bench_with_input(BenchmarkId::new(name, per_round), &per_round, |bch, &n| {
                bch.iter(|| black_box(run_rounds(policy, n_rounds, n, latency, &mut out)))
            });
        }
    }
    g.finish();
}

fn plan(c: &mut Criterion) {
    // The decision itself, once per round, against reading the counts it
    // needs (the part that is there whatever the policy).
    let mut g = c.benchmark_group("plan");
    let fifo: VecDeque<Pending> = (0..16)
        .map(|i| Pending::Snapshot(vec![(route(i), 10_000 + i as u32)]))
        .chain((0..16).map(|i| Pending::Commit(vec![(route(i), 10_000 + i as u32)])))
        .collect();
    let mut b = Batcher::default();
    b.begins.push((route(0), Begin { isolation: 1, read_only: false, session_id: Bytes::from_static(b"\0") }));
    b.snapshots.push((route(1), 1));
    let mut co = Coalescer::default();
    let now = Instant::now();
    g.bench_function("coalescing_plan", |bch| {
        bch.iter(|| black_box(co.plan(now, b.queued(), in_flight(black_box(&fifo).iter()), 1024)))
    });
    g.bench_function("baseline_counts_only", |bch| {
        bch.iter(|| black_box((b.queued(), in_flight(black_box(&fifo).iter()))))
    });
    g.finish();
}

criterion_group!(batch, benches, rounds, plan);
criterion_main!(batch);
