//! Grouping of backend requests into upstream frames, and splitting of the
//! GTM's answers back per backend. Pure: no sockets, no clock.
//!
//! ## Batch boundary policy
//! A worker collects requests while it handles the readiness events of one
//! `poll` round and flushes once the round is drained ([`Batcher::flush`]).
//! MULTI types the coalescing policy ([`super::coalesce`]) decided to hold
//! are marked in [`Batcher::keep`] and stay queued for a later round.
//! A group that reaches `max` elements is cut into several MULTI frames of
//! at most `max` elements each, so no frame exceeds the GTM's 16384-element
//! arrays and a group is never empty. Batches are pipelined: a flush does not
//! wait for earlier batches to be answered. The GTM answers in order on one
//! connection, so answers are matched to [`Pending`] entries in FIFO order.
//!
//! Frame order within one flush follows the C proxy: 1:1 forwarded commands
//! in arrival order, then one MULTI per groupable type in ascending message
//! type order (begin 18, commit 24, rollback 32, snapshot 40), then
//! `MSG_BACKEND_DISCONNECT`s, then `F`. Each backend has at most one request
//! outstanding, so this reordering never reorders one backend's answers.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::admission::Grouped;
use super::coalesce::{BatchSizes, Kind, Release};
use crate::codec::frame::{self, TAG_RESULT};
use crate::codec::types::status;
use crate::codec::{
    encode_begin_multi, encode_command, encode_command_raw, encode_error, encode_flush, encode_gxid_multi, Begin,
    ErrorFields, MsgType, Request, Response, ResultType, ServerFrame,
};

/// Where an answer goes: the backend's identifier on the upstream link and
/// the generation of the backend that held it when the request was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub conn: i16,
    pub gen: u32,
}

/// A request forwarded 1:1, payload untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub route: Route,
    pub msg_type: MsgType,
    pub payload: Bytes,
    /// The GXIDs a forwarded commit / commit-prepared ends (0 = none), so
    /// the answer can close them in the worker's ledger.
    pub ends: [u32; 2],
}

/// One upstream frame that owes an answer. It keeps everything needed to send
/// the frame again, so that work in flight can be replayed on a new link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Forward(Forward),
    Begin(Vec<(Route, Begin)>),
    Commit(Vec<(Route, u32)>),
    Rollback(Vec<(Route, u32)>),
    Snapshot(Vec<(Route, u32)>),
}

impl Pending {
    /// Every backend waiting on this frame.
    pub fn routes(&self) -> Vec<Route> {
        match self {
            Pending::Forward(f) => vec![f.route],
            Pending::Begin(v) => v.iter().map(|(r, _)| *r).collect(),
            Pending::Commit(v) | Pending::Rollback(v) | Pending::Snapshot(v) => v.iter().map(|(r, _)| *r).collect(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Pending::Forward(_) => 1,
            Pending::Begin(v) => v.len(),
            Pending::Commit(v) | Pending::Rollback(v) | Pending::Snapshot(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The MULTI type of this frame (None for a forward).
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Pending::Forward(_) => None,
            Pending::Begin(_) => Some(Kind::Begin),
            Pending::Commit(_) => Some(Kind::Commit),
            Pending::Rollback(_) => Some(Kind::Rollback),
            Pending::Snapshot(_) => Some(Kind::Snapshot),
        }
    }

    /// The proxy header the GTM will echo in the answer.
    fn header(&self) -> i16 {
        match self {
            Pending::Forward(f) => f.route.conn,
            _ => -1,
        }
    }

    /// Append the upstream frame for this entry (with proxy header).
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Pending::Forward(f) => encode_command_raw(dst, Some(f.route.conn), f.msg_type, &f.payload),
            Pending::Begin(v) => encode_begin_multi(dst, Some(-1), v.iter().map(|(r, b)| (b, r.conn))),
            Pending::Commit(v) => gxid_multi(dst, MsgType::TXN_COMMIT_MULTI, v),
            Pending::Rollback(v) => gxid_multi(dst, MsgType::TXN_ROLLBACK_MULTI, v),
            Pending::Snapshot(v) => gxid_multi(dst, MsgType::SNAPSHOT_GET_MULTI, v),
        }
    }
}

fn gxid_multi(dst: &mut BytesMut, t: MsgType, v: &[(Route, u32)]) {
    encode_gxid_multi(dst, Some(-1), t, v.iter().map(|(_, g)| *g));
}

/// Requests collected during one poll round (or held while the upstream
/// link is down), in the shape they will be sent.
#[derive(Debug, Default)]
pub struct Batcher {
    pub forwards: VecDeque<Forward>,
    pub begins: Vec<(Route, Begin)>,
    pub commits: Vec<(Route, u32)>,
    pub rollbacks: Vec<(Route, u32)>,
    pub snapshots: Vec<(Route, u32)>,
    pub disconnects: Vec<(i16, Request)>,
    /// MULTI types (by [`Kind`] index) the next flush keeps queued; set by
    /// the flush decision, cleared by [`Batcher::flush`].
    pub keep: Release,
    /// Elements per MULTI sent, per type.
    pub sizes: BatchSizes,
}

/// MULTIs of each type among `owed` (frames awaiting an answer).
pub fn in_flight<'a>(owed: impl Iterator<Item = &'a Pending>) -> [usize; 4] {
    let mut n = [0; 4];
    for k in owed.filter_map(Pending::kind) {
        n[k as usize] += 1;
    }
    n
}

impl Batcher {
    pub fn is_empty(&self) -> bool {
        self.forwards.is_empty()
            && self.begins.is_empty()
            && self.commits.is_empty()
            && self.rollbacks.is_empty()
            && self.snapshots.is_empty()
            && self.disconnects.is_empty()
    }

    /// Requests waiting to be sent (disconnects excluded).
    pub fn len(&self) -> usize {
        self.forwards.len() + self.begins.len() + self.commits.len() + self.rollbacks.len() + self.snapshots.len()
    }

    /// Grouped elements queued, per type.
    pub fn queued(&self) -> [usize; 4] {
        [self.begins.len(), self.commits.len(), self.rollbacks.len(), self.snapshots.len()]
    }

    /// Queue one element of a grouped request.
    pub fn group(&mut self, route: Route, g: Grouped) {
        match g {
            Grouped::Begin(b) => self.begins.push((route, b)),
            Grouped::Commit(gxid) => self.commits.push((route, gxid)),
            Grouped::Rollback(gxid) => self.rollbacks.push((route, gxid)),
            Grouped::Snapshot(gxid) => self.snapshots.push((route, gxid)),
        }
    }

    /// Put an entry that was in flight back at the front, to be sent again.
    pub fn requeue(&mut self, p: Pending) {
        fn in_front<T>(mut v: Vec<T>, queue: &mut Vec<T>) {
            v.append(queue);
            *queue = v;
        }
        match p {
            Pending::Forward(f) => self.forwards.push_front(f),
            Pending::Begin(v) => in_front(v, &mut self.begins),
            Pending::Commit(v) => in_front(v, &mut self.commits),
            Pending::Rollback(v) => in_front(v, &mut self.rollbacks),
            Pending::Snapshot(v) => in_front(v, &mut self.snapshots),
        }
    }

    /// Remove every queued request of one backend. Returns how many were
    /// removed.
    pub fn drop_route(&mut self, route: Route) -> usize {
        let before = self.len();
        self.forwards.retain(|f| f.route != route);
        self.begins.retain(|(r, _)| *r != route);
        self.commits.retain(|(r, _)| *r != route);
        self.rollbacks.retain(|(r, _)| *r != route);
        self.snapshots.retain(|(r, _)| *r != route);
        before - self.len()
    }

    /// Remove every queued request (disconnects stay) and return whom they
    /// belonged to.
    pub fn take_routes(&mut self) -> Vec<Route> {
        let mut out: Vec<Route> = self.forwards.drain(..).map(|f| f.route).collect();
        out.extend(self.begins.drain(..).map(|(r, _)| r));
        out.extend(self.commits.drain(..).map(|(r, _)| r));
        out.extend(self.rollbacks.drain(..).map(|(r, _)| r));
        out.extend(self.snapshots.drain(..).map(|(r, _)| r));
        out
    }

    /// Write everything collected as upstream frames — except the MULTI
    /// types marked in [`Batcher::keep`], which stay queued — followed by one
    /// `F`, and record what each frame owes in `fifo`. `max` caps MULTI sizes
    /// (1..=16384). Returns the number of frames that owe an answer. Writes
    /// nothing at all when nothing is sent.
    pub fn flush(&mut self, max: usize, out: &mut BytesMut, fifo: &mut VecDeque<Pending>) -> usize {
        let keep = std::mem::take(&mut self.keep);
        if self.is_empty() {
            return 0;
        }
        let max = max.clamp(1, crate::codec::types::MAX_GLOBAL_TRANSACTIONS);
        let sizes = &mut self.sizes;
        let mut frames = 0;
        let mut emit = |p: Pending, out: &mut BytesMut, fifo: &mut VecDeque<Pending>| {
            if let Some(k) = p.kind() {
                sizes.record(k, p.len());
            }
            p.encode(out);
            fifo.push_back(p);
            frames += 1;
        };
        for f in self.forwards.drain(..) {
            emit(Pending::Forward(f), out, fifo);
        }
        if !keep[Kind::Begin as usize] {
            for chunk in take_chunks(&mut self.begins, max) {
                emit(Pending::Begin(chunk), out, fifo);
            }
        }
        let gxid_groups = [
            (Kind::Commit, &mut self.commits, Pending::Commit as fn(_) -> _),
            (Kind::Rollback, &mut self.rollbacks, Pending::Rollback),
            (Kind::Snapshot, &mut self.snapshots, Pending::Snapshot),
        ];
        for (kind, queue, make) in gxid_groups {
            if !keep[kind as usize] {
                for chunk in take_chunks(queue, max) {
                    emit(make(chunk), out, fifo);
                }
            }
        }
        let goodbyes = self.disconnects.len();
        for (conn, req) in self.disconnects.drain(..) {
            encode_command(out, Some(conn), &req);
        }
        if frames > 0 || goodbyes > 0 {
            encode_flush(out);
        }
        frames
    }
}

fn take_chunks<T>(v: &mut Vec<T>, max: usize) -> Vec<Vec<T>> {
    if v.is_empty() {
        return Vec::new();
    }
    if v.len() <= max {
        return vec![std::mem::take(v)];
    }
    let mut out = Vec::with_capacity(v.len().div_ceil(max));
    let mut rest = std::mem::take(v);
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(max));
        out.push(rest);
        rest = tail;
    }
    out
}

/// The answer in front of the FIFO does not belong to the frame that owes one:
/// the link is out of step and must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("answer with proxy header {got:?} where {want} was owed")]
    Header { got: Option<i16>, want: i16 },
    #[error("answer of type {got} to a {want} request")]
    Type { got: ResultType, want: &'static str },
    #[error("answer has {got} elements, {want} were asked for")]
    Count { got: usize, want: usize },
    #[error("undecodable answer: {0}")]
    Decode(#[from] crate::codec::DecodeError),
    #[error("unexpected frame from the GTM")]
    Unexpected,
}

/// What one backend receives for its request.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// A forwarded result, header removed.
    Result {
        result_type: ResultType,
        payload: &'a [u8],
    },
    Error(&'a ErrorFields),
    Begin {
        gxid: u32,
        timestamp: i64,
    },
    CommitOk,
    RollbackOk {
        gxid: u32,
    },
    /// A one-element snapshot answer; `snapshot` is the encoded snapshot,
    /// `status` the GTM's status for the element (the backend is sent 0).
    Snapshot {
        snapshot: &'a [u8],
        status: i32,
    },
    /// A grouped element the GTM refused (status ≠ OK).
    ElementFailed {
        what: &'static str,
        status: i32,
    },
}

impl Answer<'_> {
    /// Append the frame the backend sees.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Answer::Result { result_type, payload } => {
                crate::codec::encode_result_raw(dst, None, *result_type, payload)
            }
            Answer::Error(fields) => encode_error(dst, None, fields),
            Answer::Begin { gxid, timestamp } => {
                result_frame(dst, ResultType::TXN_BEGIN_GETGXID_RESULT, |d| {
                    d.put_u32_le(*gxid);
                    d.put_i64_le(*timestamp);
                });
            }
            Answer::CommitOk => result_frame(dst, ResultType::TXN_COMMIT_MULTI_RESULT, |d| {
                d.put_i32_le(1);
                d.put_i32_le(status::OK);
            }),
            Answer::RollbackOk { gxid } => result_frame(dst, ResultType::TXN_ROLLBACK_RESULT, |d| d.put_u32_le(*gxid)),
            Answer::Snapshot { snapshot, .. } => result_frame(dst, ResultType::SNAPSHOT_GET_MULTI_RESULT, |d| {
                d.put_i32_le(1);
                d.put_i32_le(status::OK);
                d.extend_from_slice(snapshot);
            }),
            Answer::ElementFailed { what, status } => {
                let f = ErrorFields::new("ERROR", what).with_detail(&format!("GTM status {status}"));
                encode_error(dst, None, &f);
            }
        }
    }
}

#[inline]
fn result_frame(dst: &mut BytesMut, t: ResultType, body: impl FnOnce(&mut BytesMut)) {
    let start = frame::begin(dst, TAG_RESULT);
    dst.put_i32(t.0);
    body(dst);
    frame::finish(dst, start);
}

/// Split the GTM's answer to `pending` into per-backend answers, handed to
/// `deliver` in element order together with the element's GXID (the one the
/// request named, or the one a begin obtained; 0 for forwarded requests).
pub fn split_answer(
    pending: &Pending,
    frame: &ServerFrame,
    mut deliver: impl FnMut(Route, u32, &Answer<'_>),
) -> Result<(), SyncError> {
    let want = pending.header();
    let (header, result) = match frame {
        ServerFrame::Result(r) => (r.header, Some(r)),
        ServerFrame::Error { header, .. } => (*header, None),
        _ => return Err(SyncError::Unexpected),
    };
    if header != Some(want) {
        return Err(SyncError::Header { got: header, want });
    }
    let Some(r) = result else {
        // An error applies to every element of the request.
        let ServerFrame::Error { fields, .. } = frame else { return Err(SyncError::Unexpected) };
        let a = Answer::Error(fields);
        match pending {
            Pending::Commit(v) | Pending::Rollback(v) | Pending::Snapshot(v) => {
                for (route, gxid) in v {
                    deliver(*route, *gxid, &a);
                }
            }
            _ => {
                for route in pending.routes() {
                    deliver(route, 0, &a);
                }
            }
        }
        return Ok(());
    };
    match pending {
        Pending::Forward(f) => {
            deliver(f.route, f.ends[0], &Answer::Result { result_type: r.result_type, payload: &r.payload });
        }
        Pending::Begin(v) => {
            let Response::TxnBeginGetGxidMulti { gxids, timestamp } = expect(r, "begin", v.len())? else {
                return Err(SyncError::Unexpected);
            };
            for ((route, _), gxid) in v.iter().zip(gxids) {
                deliver(*route, gxid, &Answer::Begin { gxid, timestamp });
            }
        }
        Pending::Commit(v) => {
            let Response::TxnCommitMulti { statuses } = expect(r, "commit", v.len())? else {
                return Err(SyncError::Unexpected);
            };
            for ((route, gxid), s) in v.iter().zip(statuses) {
                if s == status::OK {
                    deliver(*route, *gxid, &Answer::CommitOk);
                } else {
                    deliver(*route, *gxid, &Answer::ElementFailed { what: "Transaction commit failed", status: s });
                }
            }
        }
        Pending::Rollback(v) => {
            let Response::TxnRollbackMulti { statuses } = expect(r, "rollback", v.len())? else {
                return Err(SyncError::Unexpected);
            };
            for ((route, gxid), s) in v.iter().zip(statuses) {
                if s == status::OK {
                    deliver(*route, *gxid, &Answer::RollbackOk { gxid: *gxid });
                } else {
                    deliver(*route, *gxid, &Answer::ElementFailed { what: "Transaction rollback failed", status: s });
                }
            }
        }
        Pending::Snapshot(v) => {
            let Response::SnapshotGetMulti { statuses, snapshot } = expect(r, "snapshot", v.len())? else {
                return Err(SyncError::Unexpected);
            };
            let mut enc = BytesMut::with_capacity(12 + 4 * snapshot.xip.len());
            snapshot.encode(&mut enc);
            for ((route, gxid), s) in v.iter().zip(statuses) {
                if s == status::OK || s == status::NOT_FOUND {
                    deliver(*route, *gxid, &Answer::Snapshot { snapshot: &enc, status: s });
                } else {
                    deliver(*route, *gxid, &Answer::ElementFailed { what: "snapshot request failed", status: s });
                }
            }
        }
    }
    Ok(())
}

fn expect(r: &crate::codec::ResultFrame, what: &'static str, n: usize) -> Result<Response, SyncError> {
    let want_type = match what {
        "begin" => ResultType::TXN_BEGIN_GETGXID_MULTI_RESULT,
        "commit" => ResultType::TXN_COMMIT_MULTI_RESULT,
        "rollback" => ResultType::TXN_ROLLBACK_MULTI_RESULT,
        _ => ResultType::SNAPSHOT_GET_MULTI_RESULT,
    };
    if r.result_type != want_type {
        return Err(SyncError::Type { got: r.result_type, want: what });
    }
    let resp = r.response()?;
    let got = match &resp {
        Response::TxnBeginGetGxidMulti { gxids, .. } => gxids.len(),
        Response::TxnCommitMulti { statuses }
        | Response::TxnRollbackMulti { statuses }
        | Response::SnapshotGetMulti { statuses, .. } => statuses.len(),
        _ => return Err(SyncError::Unexpected),
    };
    if got != n {
        return Err(SyncError::Count { got, want: n });
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::frame::DEFAULT_MAX_FRAME;
    use crate::codec::{encode_result, ClientFrame, Snapshot};

    fn r(conn: i16) -> Route {
        Route { conn, gen: conn as u32 + 100 }
    }

    fn begin(sid: &'static [u8]) -> Begin {
        Begin { isolation: 1, read_only: false, session_id: Bytes::from_static(sid) }
    }

    fn frames(mut b: BytesMut) -> Vec<ClientFrame> {
        let mut out = Vec::new();
        while let Some(raw) = frame::split(&mut b, DEFAULT_MAX_FRAME).unwrap() {
            out.push(ClientFrame::decode(raw, true).unwrap());
        }
        out
    }

    fn answer(resp: Response, header: i16) -> ServerFrame {
        let mut b = BytesMut::new();
        encode_result(&mut b, Some(header), &resp);
        let raw = frame::split(&mut b, DEFAULT_MAX_FRAME).unwrap().unwrap();
        ServerFrame::decode(raw, true).unwrap()
    }

    #[test]
    fn flush_orders_forwards_then_multis_by_type_then_disconnects_then_f() {
        let mut b = Batcher::default();
        b.snapshots.push((r(3), 7));
        b.begins.push((r(0), begin(b"s0\0")));
        b.rollbacks.push((r(2), 9));
        b.forwards.push_back(Forward {
            route: r(5),
            msg_type: MsgType::BARRIER,
            payload: Bytes::from_static(b"\0\0\0\x01x"),
            ends: [0; 2],
        });
        b.commits.push((r(1), 8));
        b.begins.push((r(4), begin(b"\0")));
        b.disconnects.push((6, Request::BackendDisconnect { is_postmaster: false, node: None }));
        let mut out = BytesMut::new();
        let mut fifo = VecDeque::new();
        assert_eq!(b.flush(1024, &mut out, &mut fifo), 5);
        assert!(b.is_empty());
        let f = frames(out);
        let types: Vec<(Option<i16>, i32)> = f
            .iter()
            .map(|c| match c {
                ClientFrame::Command(c) => (c.header, c.msg_type.0),
                ClientFrame::Flush => (None, 63),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            types,
            vec![
                (Some(5), 65),
                (Some(-1), 18),
                (Some(-1), 24),
                (Some(-1), 32),
                (Some(-1), 40),
                (Some(6), 64),
                (None, 63)
            ]
        );
        let ClientFrame::Command(c) = &f[1] else { panic!() };
        let Request::TxnBeginGetGxidMulti(elems) = c.request().unwrap() else { panic!() };
        assert_eq!(elems.len(), 2);
        assert_eq!((elems[0].conn_id, elems[1].conn_id), (0, 4));
        assert_eq!(elems[0].begin.session_id, Bytes::from_static(b"s0\0"));
        assert_eq!(fifo.len(), 5);
    }

    #[test]
    fn groups_are_cut_at_max_and_never_empty() {
        let mut b = Batcher::default();
        for i in 0..10 {
            b.commits.push((r(i), 1000 + i as u32));
        }
        let mut out = BytesMut::new();
        let mut fifo = VecDeque::new();
        assert_eq!(b.flush(4, &mut out, &mut fifo), 3);
        let sizes: Vec<usize> = fifo.iter().map(Pending::len).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        // Nothing to send: no frame at all, not even F.
        let mut out2 = BytesMut::new();
        assert_eq!(b.flush(4, &mut out2, &mut fifo), 0);
        assert!(out2.is_empty());
        // max above the GTM's limit is clamped.
        for i in 0..20000u32 {
            b.rollbacks.push((Route { conn: 1, gen: i }, i));
        }
        let mut fifo = VecDeque::new();
        b.flush(usize::MAX, &mut BytesMut::new(), &mut fifo);
        assert_eq!(fifo.iter().map(Pending::len).collect::<Vec<_>>(), vec![16384, 20000 - 16384]);
    }

    #[test]
    fn kept_types_stay_queued_and_the_rest_goes() {
        let mut b = Batcher::default();
        b.begins.push((r(0), begin(b"\0")));
        b.snapshots.push((r(1), 7));
        b.snapshots.push((r(2), 8));
        b.commits.push((r(3), 9));
        b.keep = [false, true, false, true];
        let mut fifo = VecDeque::new();
        let mut out = BytesMut::new();
        assert_eq!(b.flush(1024, &mut out, &mut fifo), 1);
        assert_eq!(fifo.iter().map(|p| p.kind()).collect::<Vec<_>>(), vec![Some(Kind::Begin)]);
        assert_eq!(b.queued(), [0, 1, 0, 2]);
        assert_eq!(in_flight(fifo.iter()), [1, 0, 0, 0]);
        // Only kept work queued: nothing is written, not even F.
        b.keep = [true; 4];
        let mut out = BytesMut::new();
        assert_eq!(b.flush(1024, &mut out, &mut fifo), 0);
        assert!(out.is_empty());
        // The mark is for one flush only; the held elements go in arrival order.
        assert_eq!(b.flush(1024, &mut out, &mut fifo), 2);
        assert_eq!(b.queued(), [0; 4]);
        assert_eq!(fifo[2], Pending::Snapshot(vec![(r(1), 7), (r(2), 8)]));
        assert_eq!(in_flight(fifo.iter()), [1, 1, 0, 1]);
        let sizes = &b.sizes.by_kind;
        assert_eq!((sizes[0].len(), sizes[1].len(), sizes[3].len()), (1, 1, 1));
        assert_eq!(sizes[3].max(), 2);
    }

    /// Each backend's answer to `f`, as the bytes it would receive.
    fn encoded_answers(p: &Pending, f: &ServerFrame) -> Vec<(Route, Vec<u8>)> {
        let mut got = Vec::new();
        split_answer(p, f, |route, _, a| {
            let mut b = BytesMut::new();
            a.encode(&mut b);
            got.push((route, b.to_vec()));
        })
        .unwrap();
        got
    }

    #[test]
    fn split_begin_by_position_and_snapshot_status_rewrite() {
        let p = Pending::Begin(vec![(r(0), begin(b"\0")), (r(1), begin(b"\0")), (r(2), begin(b"\0"))]);
        let f = answer(Response::TxnBeginGetGxidMulti { gxids: vec![10003, 10004, 10005], timestamp: 77 }, -1);
        let got = encoded_answers(&p, &f);
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].0, r(2));
        let mut want = BytesMut::new();
        encode_result(&mut want, None, &Response::TxnBeginGetGxid { gxid: 10005, timestamp: 77 });
        assert_eq!(got[2].1, want.to_vec());

        let snap = Snapshot { xmin: 5, xmax: 9, xip: vec![5, 6] };
        let p = Pending::Snapshot(vec![(r(0), 0), (r(1), 6)]);
        let f = answer(Response::SnapshotGetMulti { statuses: vec![3, 0], snapshot: snap.clone() }, -1);
        let got = encoded_answers(&p, &f);
        let mut want = BytesMut::new();
        encode_result(&mut want, None, &Response::SnapshotGetMulti { statuses: vec![0], snapshot: snap });
        assert_eq!(got, vec![(r(0), want.to_vec()), (r(1), want.to_vec())]);
    }

    #[test]
    fn element_failure_reaches_only_its_backend() {
        let p = Pending::Commit(vec![(r(0), 10), (r(1), 11), (r(2), 12)]);
        let f = answer(Response::TxnCommitMulti { statuses: vec![0, -1, 0] }, -1);
        let mut got = Vec::new();
        split_answer(&p, &f, |route, _, a| got.push((route, format!("{a:?}")))).unwrap();
        assert_eq!(got[0], (r(0), "CommitOk".to_string()));
        assert!(got[1].1.starts_with("ElementFailed"), "{:?}", got[1]);
        assert_eq!(got[2], (r(2), "CommitOk".to_string()));

        let p = Pending::Rollback(vec![(r(0), 10), (r(1), 11)]);
        let f = answer(Response::TxnRollbackMulti { statuses: vec![-1, 0] }, -1);
        let mut got = Vec::new();
        split_answer(&p, &f, |route, _, a| got.push((route, format!("{a:?}")))).unwrap();
        assert!(got[0].1.starts_with("ElementFailed"));
        assert_eq!(got[1], (r(1), "RollbackOk { gxid: 11 }".to_string()));
    }

    #[test]
    fn errors_fan_out_and_forwards_strip_the_header() {
        let p = Pending::Begin(vec![(r(0), begin(b"\0")), (r(1), begin(b"\0"))]);
        let mut b = BytesMut::new();
        encode_error(&mut b, Some(-1), &ErrorFields::new("ERROR", "Max global transactions limit reached (16384)"));
        let f = ServerFrame::decode(frame::split(&mut b, DEFAULT_MAX_FRAME).unwrap().unwrap(), true).unwrap();
        let mut n = 0;
        split_answer(&p, &f, |_, _, a| {
            assert!(matches!(a, Answer::Error(e) if e.message().starts_with("Max global")));
            n += 1;
        })
        .unwrap();
        assert_eq!(n, 2);

        let p = Pending::Forward(Forward {
            route: r(7),
            msg_type: MsgType::REGISTER_SESSION,
            payload: Bytes::new(),
            ends: [0; 2],
        });
        let f = answer(Response::RegisterSession, 7);
        let mut out = BytesMut::new();
        split_answer(&p, &f, |_, _, a| a.encode(&mut out)).unwrap();
        assert_eq!(&out[..], &[0x53, 0, 0, 0, 8, 0, 0, 0, 3]);
    }

    #[test]
    fn out_of_step_answers_are_refused() {
        let p = Pending::Forward(Forward {
            route: r(7),
            msg_type: MsgType::REGISTER_SESSION,
            payload: Bytes::new(),
            ends: [0; 2],
        });
        let f = answer(Response::RegisterSession, 6);
        assert!(matches!(split_answer(&p, &f, |_, _, _| {}), Err(SyncError::Header { .. })));
        let p = Pending::Commit(vec![(r(0), 1), (r(1), 2)]);
        let f = answer(Response::TxnCommitMulti { statuses: vec![0] }, -1);
        assert!(matches!(split_answer(&p, &f, |_, _, _| {}), Err(SyncError::Count { got: 1, want: 2 })));
        let f = answer(Response::TxnRollbackMulti { statuses: vec![0, 0] }, -1);
        assert!(matches!(split_answer(&p, &f, |_, _, _| {}), Err(SyncError::Type { .. })));
    }

    #[test]
    fn requeue_puts_work_back_in_front() {
        let mut b = Batcher::default();
        b.commits.push((r(5), 50));
        b.requeue(Pending::Commit(vec![(r(1), 10), (r(2), 20)]));
        assert_eq!(b.commits, vec![(r(1), 10), (r(2), 20), (r(5), 50)]);
        b.forwards.push_back(Forward { route: r(9), msg_type: MsgType::BARRIER, payload: Bytes::new(), ends: [0; 2] });
        b.requeue(Pending::Forward(Forward {
            route: r(8),
            msg_type: MsgType::BARRIER,
            payload: Bytes::new(),
            ends: [0; 2],
        }));
        assert_eq!(b.forwards[0].route, r(8));
    }
}
