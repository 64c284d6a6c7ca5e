//! The upstream answer stream: what the proxy sent the GTM on a worker link,
//! then arbitrary bytes as the GTM's answers, routed back to backends.
//!
//! Input: `u16le n`, `n` bytes of proxy → GTM stream (startup, then `C`
//! frames with proxy header; seeds are the captured worker links), then the
//! GTM → proxy stream. The sent stream gives the FIFO of [`Pending`] entries
//! exactly as a worker's batcher holds them; the answers go through the
//! worker's path: frame splitter (4 MiB cap), `R` while starting, then
//! `ServerFrame::decode` with the proxy header, `split_answer`, and the
//! GXID vetting of each backend's answer against the worker's ledger. The
//! startup packet's client id stands in for the link and replay floors (a
//! worker re-presents its old id when it reconnects), so the fuzzer can
//! steer them.
//!
//! Checks, beyond "no panic":
//! * a pending entry re-encodes to the bytes it was read from (modulo C bools);
//! * an answer accepted by `split_answer` reaches every waiting backend
//!   exactly once, in element order, with the element's own GXID, and each
//!   backend's answer, as vetted, is a well-formed frame of the right type;
//! * an answer refused as out of step reaches nobody;
//! * after the link fails, the unanswered work requeued into a `Batcher` and
//!   flushed again is the same work, as well-formed frames.
#![no_main]

use std::collections::VecDeque;

use bytes::BytesMut;
use gtm_proxy_fuzz::{bounded_alloc, encoded, same_but_bools};
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME};
use gtmproxy::codec::types::MAX_GLOBAL_TRANSACTIONS;
use gtmproxy::codec::{ClientFrame, Request, Response, ServerFrame};
use gtmproxy::proxy::batch::{split_answer, Answer, Batcher, Forward, Pending, Route};
use gtmproxy::proxy::ledger::{HighWater, Ledger};
use gtmproxy::proxy::vetting::{vet, Floors, Verdict};
use libfuzzer_sys::fuzz_target;

/// The FIFO a worker would hold after sending `sent`, and the floors.
fn pending_of(sent: &[u8]) -> (VecDeque<Pending>, Floors) {
    let mut buf = BytesMut::from(sent);
    let mut fifo = VecDeque::new();
    let mut floors = Floors::default();
    let mut gen = 0u32;
    while let Ok(Some(raw)) = frame::split(&mut buf, DEFAULT_MAX_FRAME) {
        let wire = encoded(|d| raw.encode(d));
        let c = match ClientFrame::decode(raw, true) {
            Ok(ClientFrame::Command(c)) => c,
            Ok(ClientFrame::Startup(sp)) => {
                floors = Floors { link: sp.client_id, replay: sp.client_id };
                continue;
            }
            _ => continue,
        };
        let Some(h) = c.header else { continue };
        let Ok(req) = c.request() else { continue };
        gen += 1;
        let route = |conn: i16| Route { conn, gen };
        let by_pos = |v: Vec<u32>| -> Vec<(Route, u32)> {
            v.into_iter().enumerate().map(|(i, g)| (route(i as i16), g)).collect()
        };
        let multi = h == -1;
        let p = match req {
            // The proxy's own messages and what it never groups owe nothing
            // or are not in the FIFO.
            Request::BackendDisconnect { .. } => continue,
            Request::TxnBeginGetGxidMulti(v) if multi => {
                Pending::Begin(v.into_iter().map(|e| (route(e.conn_id), e.begin)).collect())
            }
            Request::TxnCommitMulti(v) if multi => Pending::Commit(by_pos(v)),
            Request::TxnRollbackMulti(v) if multi => Pending::Rollback(by_pos(v)),
            Request::SnapshotGetMulti(v) if multi => Pending::Snapshot(by_pos(v)),
            Request::TxnCommit { gxid, .. } => Pending::Forward(Forward {
                route: route(h),
                msg_type: c.msg_type,
                payload: c.payload.clone(),
                ends: [gxid, 0],
            }),
            _ => Pending::Forward(Forward { route: route(h), msg_type: c.msg_type, payload: c.payload, ends: [0; 2] }),
        };
        // A batcher never emits an empty or oversized group.
        if p.is_empty() || p.len() > MAX_GLOBAL_TRANSACTIONS {
            continue;
        }
        assert!(same_but_bools(&wire, &encoded(|d| p.encode(d))), "{p:?}");
        fifo.push_back(p);
    }
    (fifo, floors)
}

/// What one backend was handed.
struct Got {
    route: Route,
    gxid: u32,
    frame: BytesMut,
    kind: &'static str,
}

fn check_delivery(p: &Pending, upstream: &ServerFrame, got: &[Got]) {
    let routes: Vec<Route> = got.iter().map(|g| g.route).collect();
    assert_eq!(routes, p.routes());
    match p {
        Pending::Commit(v) | Pending::Rollback(v) | Pending::Snapshot(v) => {
            assert!(v.iter().zip(got).all(|((_, gxid), g)| *gxid == g.gxid));
        }
        _ => {}
    }
    for g in got {
        let mut b = g.frame.clone();
        let raw = frame::split(&mut b, DEFAULT_MAX_FRAME * 4).unwrap().expect("a whole frame");
        assert!(b.is_empty(), "one frame per answer");
        let f = ServerFrame::decode(raw, false).expect("backend answer decodes");
        match (g.kind, &f) {
            ("error", ServerFrame::Error { .. }) => {}
            ("result", ServerFrame::Result(r)) => {
                let ServerFrame::Result(up) = upstream else { panic!("result from a non-result") };
                assert_eq!((r.result_type, &r.payload), (up.result_type, &up.payload));
            }
            (kind, ServerFrame::Result(r)) => {
                let resp = r.response().expect("typed answer decodes");
                let ok = match (kind, resp) {
                    ("begin", Response::TxnBeginGetGxid { gxid, .. }) => gxid == g.gxid,
                    ("commit", Response::TxnCommitMulti { statuses }) => statuses == [0],
                    ("rollback", Response::TxnRollback { gxid, status: None }) => gxid == g.gxid,
                    ("snapshot", Response::SnapshotGetMulti { statuses, .. }) => statuses == [0],
                    _ => false,
                };
                assert!(ok, "{kind}: {f:?}");
            }
            (kind, f) => panic!("{kind}: {f:?}"),
        }
    }
}

/// Requests carried by a flushed upstream stream, in order.
fn requests_in(out: BytesMut) -> Vec<(Option<i16>, Request)> {
    let mut b = out;
    let mut v = Vec::new();
    while let Some(raw) = frame::split(&mut b, usize::MAX).expect("flushed frames split") {
        match ClientFrame::decode(raw, true).expect("flushed frame decodes") {
            ClientFrame::Command(c) => v.push((c.header, c.request().expect("flushed request decodes"))),
            ClientFrame::Flush => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(b.is_empty());
    v
}

fn replay(fifo: VecDeque<Pending>) {
    let routes: usize = fifo.iter().map(Pending::len).sum();
    let mut batch = Batcher::default();
    let mut fifo = fifo;
    while let Some(p) = fifo.pop_back() {
        batch.requeue(p);
    }
    assert_eq!(batch.len(), routes);
    let mut out = BytesMut::new();
    let mut again = VecDeque::new();
    let frames = batch.flush(MAX_GLOBAL_TRANSACTIONS, &mut out, &mut again);
    assert_eq!(frames, again.len());
    assert_eq!(again.iter().map(Pending::len).sum::<usize>(), routes);
    let reqs = requests_in(out);
    assert_eq!(reqs.len(), frames);
    for (p, (h, req)) in again.iter().zip(&reqs) {
        let elems = match req {
            Request::TxnBeginGetGxidMulti(v) if *h == Some(-1) => v.len(),
            Request::TxnCommitMulti(v) | Request::TxnRollbackMulti(v) | Request::SnapshotGetMulti(v)
                if *h == Some(-1) =>
            {
                v.len()
            }
            _ => 1,
        };
        assert_eq!(elems, p.len(), "{p:?} / {req:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (sent, answers) = data[2..].split_at(n);
    bounded_alloc(data.len(), || {
        let (mut fifo, floors) = pending_of(sent);
        let mut ledger = Ledger::default();
        let high = HighWater::default();
        let mut buf = BytesMut::from(answers);
        let mut starting = true;
        loop {
            let raw = match frame::split(&mut buf, DEFAULT_MAX_FRAME * 4) {
                Ok(Some(raw)) => raw,
                Ok(None) | Err(_) => break,
            };
            let Ok(f) = ServerFrame::decode(raw, !starting) else { break };
            if starting {
                match f {
                    ServerFrame::Ready { .. } => {
                        starting = false;
                        continue;
                    }
                    _ => break,
                }
            }
            let Some(p) = fifo.pop_front() else { break };
            let mut got = Vec::new();
            let res = split_answer(&p, &f, |route, gxid, a| {
                let verdict = vet(&mut ledger, &high, floors, &p, route, gxid, a);
                let kind = match (verdict, a) {
                    (Verdict::DuplicateGxid { .. } | Verdict::Lost { .. }, _) => "error",
                    (Verdict::AlreadyEnded { commit: true, .. }, _) => "commit",
                    (Verdict::AlreadyEnded { commit: false, .. }, _) => "rollback",
                    (Verdict::Pass, Answer::Result { .. }) => "result",
                    (Verdict::Pass, Answer::Error(_) | Answer::ElementFailed { .. }) => "error",
                    (Verdict::Pass, Answer::Begin { .. }) => "begin",
                    (Verdict::Pass, Answer::CommitOk) => "commit",
                    (Verdict::Pass, Answer::RollbackOk { .. }) => "rollback",
                    (Verdict::Pass, Answer::Snapshot { .. }) => "snapshot",
                };
                let mut frame = BytesMut::new();
                let is_error = verdict.write(a, &mut frame);
                assert_eq!(is_error, kind == "error", "{verdict:?} {a:?}");
                if let (Answer::Begin { gxid, .. }, Verdict::Pass) = (a, verdict) {
                    assert!(ledger.is_open(*gxid), "a begin that passed is open");
                }
                got.push(Got { route, gxid, frame, kind });
            });
            match res {
                Ok(()) => check_delivery(&p, &f, &got),
                Err(e) => {
                    assert!(got.is_empty(), "an out-of-step answer was delivered: {e}");
                    let _ = e.to_string();
                    fifo.push_front(p);
                    break;
                }
            }
        }
        for p in &fifo {
            for r in p.routes() {
                ledger.forget_backend(r.conn, r.gen);
            }
        }
        replay(fifo);
    })
});
