//! One simulated XL 10 backend as a pure state machine: server bytes in,
//! client bytes out, no sockets and no clock (the caller passes `now`).
//!
//! Lifecycle, exactly as a real XL 10 query backend talks to its GTM (or
//! proxy), see protocol doc sections 1.3, 5.1, 5.2 and dump 1:
//!
//! ```text
//! start():  -> 'A' startup (node name, remote type 6, postmaster 0, client id 0)
//!           <- 'R'                                              => Outcome::Ready
//! begin():  -> MSG_TXN_BEGIN_GETGXID (16) iso 1, ro 0, session id
//!           <- S 11: gxid u32le, timestamp i64le                => Outcome::Began
//!           -> MSG_SNAPSHOT_GET_MULTI (40) count 1, gxid        (sent automatically)
//!           <- S 25: count 1, status 0, snapshot                => Outcome::Snapshot
//!           -> MSG_TXN_COMMIT_MULTI (24) count 1, gxid          (sent automatically)
//!           <- S 17: count 1, status 0                          => Outcome::Committed
//! ```
//!
//! One request is outstanding at a time. Every answer is validated strictly;
//! any deviation is a [`BackendError`] whose [`ErrorKind`] the caller counts
//! before dropping the connection.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::codec::frame::{self, DEFAULT_MAX_FRAME};
use crate::codec::types::{node_type, status, ISOLATION_RC};
use crate::codec::{
    encode_command, Begin, DecodeError, FrameError, RawFrame, Request, Response, ResultType, ServerFrame, Snapshot,
    StartupPacket,
};

/// The request a backend is waiting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Startup,
    Begin,
    Snapshot,
    Commit,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Startup, Op::Begin, Op::Snapshot, Op::Commit];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Startup => "startup",
            Op::Begin => "begin",
            Op::Snapshot => "snapshot",
            Op::Commit => "commit",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, for counting. The names are the keys of the JSON summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// TCP connect refused or failed.
    ConnectFailed,
    /// No `R` within the connect timeout.
    ConnectTimeout,
    /// The server answered with an `E` frame.
    ServerError,
    /// A frame type that does not answer the outstanding request (`R` mid-session, `N`, `C`...).
    UnexpectedFrame,
    /// An `S` frame with the wrong result type.
    WrongResultType,
    /// Unsplittable framing, or a payload of the wrong size or layout.
    Malformed,
    /// A result whose element count is not 1.
    BadCount,
    /// A non-zero status in a result.
    BadStatus,
    /// Begin returned GXID 0 (invalid).
    InvalidGxid,
    /// Snapshot with the transaction's own GXID below xmax but not in xip.
    SnapshotMissingOwnGxid,
    /// Snapshot violating xmin <= xip < xmax, or listing the own GXID at or above xmax.
    SnapshotInconsistent,
    /// Bytes arrived while no request was outstanding.
    Unsolicited,
    /// The server closed (or reset) the connection.
    UnexpectedClose,
    /// No answer within the request timeout.
    Timeout,
    /// Any other socket error.
    Io,
}

impl ErrorKind {
    pub const COUNT: usize = 15;
    pub const ALL: [ErrorKind; ErrorKind::COUNT] = [
        ErrorKind::ConnectFailed,
        ErrorKind::ConnectTimeout,
        ErrorKind::ServerError,
        ErrorKind::UnexpectedFrame,
        ErrorKind::WrongResultType,
        ErrorKind::Malformed,
        ErrorKind::BadCount,
        ErrorKind::BadStatus,
        ErrorKind::InvalidGxid,
        ErrorKind::SnapshotMissingOwnGxid,
        ErrorKind::SnapshotInconsistent,
        ErrorKind::Unsolicited,
        ErrorKind::UnexpectedClose,
        ErrorKind::Timeout,
        ErrorKind::Io,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::ServerError => "server_error",
            ErrorKind::UnexpectedFrame => "unexpected_frame",
            ErrorKind::WrongResultType => "wrong_result_type",
            ErrorKind::Malformed => "malformed",
            ErrorKind::BadCount => "bad_count",
            ErrorKind::BadStatus => "bad_status",
            ErrorKind::InvalidGxid => "invalid_gxid",
            ErrorKind::SnapshotMissingOwnGxid => "snapshot_missing_own_gxid",
            ErrorKind::SnapshotInconsistent => "snapshot_inconsistent",
            ErrorKind::Unsolicited => "unsolicited",
            ErrorKind::UnexpectedClose => "unexpected_close",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed exchange. `op` is the request that was outstanding (or, for
/// unsolicited bytes, the last one answered).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{op}: {kind}: {detail}")]
pub struct BackendError {
    pub kind: ErrorKind,
    pub op: Op,
    pub detail: String,
}

impl BackendError {
    pub fn new(kind: ErrorKind, op: Op, detail: impl Into<String>) -> Self {
        BackendError { kind, op, detail: detail.into() }
    }
}

/// A completed exchange. Latencies run from the moment the request was
/// encoded to the moment its answer was validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `R` received; the backend is idle and ready for [`Backend::begin`].
    Ready { client_id: u32, latency: Duration },
    /// Begin answered; the snapshot request has been queued.
    Began { gxid: u32, latency: Duration },
    /// Snapshot answered; the commit has been queued.
    Snapshot { gxid: u32, latency: Duration },
    /// Commit answered; the backend is idle. `txn` spans begin sent → commit answered.
    Committed { gxid: u32, latency: Duration, txn: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No connection (before `start`, or after `reset`).
    Disconnected,
    AwaitReady,
    Idle,
    AwaitBegin,
    AwaitSnapshot {
        gxid: u32,
    },
    AwaitCommit {
        gxid: u32,
    },
}

/// One simulated backend. Reusable across reconnects via [`Backend::start`].
#[derive(Debug, Clone)]
pub struct Backend {
    node_name: String,
    pid: u32,
    session_ids: bool,
    state: State,
    /// When the outstanding request was encoded.
    sent_at: Instant,
    /// When the current transaction's begin was encoded.
    txn_at: Instant,
    /// The last request answered (for attributing unsolicited bytes).
    last_op: Op,
    max_frame: usize,
}

impl Backend {
    /// `pid` is the process id used in session ids (`<node>_<pid>_<n>`);
    /// with `session_ids` false every begin carries a lone NUL, as a backend
    /// outside a distributed session does.
    pub fn new(node_name: &str, pid: u32, session_ids: bool) -> Self {
        let now = Instant::now();
        Backend {
            node_name: node_name.to_owned(),
            pid,
            session_ids,
            state: State::Disconnected,
            sent_at: now,
            txn_at: now,
            last_op: Op::Startup,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// A fresh connection: append the startup packet to `out`.
    pub fn start(&mut self, now: Instant, out: &mut BytesMut) {
        StartupPacket::new(&self.node_name, node_type::DEFAULT, false, 0).encode(out);
        self.state = State::AwaitReady;
        self.sent_at = now;
        self.last_op = Op::Startup;
    }

    /// The connection is gone; forget any transaction in progress (the GTM
    /// aborts it when the link closes).
    pub fn reset(&mut self) {
        self.state = State::Disconnected;
    }

    /// Idle on an established connection: a transaction may begin.
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// The request awaiting an answer and when it was sent.
    pub fn outstanding(&self) -> Option<(Op, Instant)> {
        let op = match self.state {
            State::Disconnected | State::Idle => return None,
            State::AwaitReady => Op::Startup,
            State::AwaitBegin => Op::Begin,
            State::AwaitSnapshot { .. } => Op::Snapshot,
            State::AwaitCommit { .. } => Op::Commit,
        };
        Some((op, self.sent_at))
    }

    /// The GXID of the open transaction, if one has been handed out.
    pub fn open_gxid(&self) -> Option<u32> {
        match self.state {
            State::AwaitSnapshot { gxid } | State::AwaitCommit { gxid } => Some(gxid),
            _ => None,
        }
    }

    /// The session id for transaction number `seq`, including its NUL (or a
    /// lone NUL without session ids).
    pub fn session_id(&self, seq: u64) -> Bytes {
        if self.session_ids {
            Bytes::from(format!("{}_{}_{}\0", self.node_name, self.pid, seq))
        } else {
            Bytes::from_static(b"\0")
        }
    }

    /// Start transaction `seq` (unique per process): append the begin
    /// request. Returns false, writing nothing, unless the backend is idle.
    pub fn begin(&mut self, seq: u64, now: Instant, out: &mut BytesMut) -> bool {
        if self.state != State::Idle {
            return false;
        }
        let req = Request::TxnBeginGetGxid(Begin {
            isolation: ISOLATION_RC,
            read_only: false,
            session_id: self.session_id(seq),
        });
        encode_command(out, None, &req);
        self.state = State::AwaitBegin;
        self.sent_at = now;
        self.txn_at = now;
        true
    }

    /// Consume the next whole frame from `input`, validate it against the
    /// outstanding request and queue the next request of the transaction in
    /// `out`. `Ok(None)`: no whole frame buffered yet.
    pub fn poll(
        &mut self,
        input: &mut BytesMut,
        now: Instant,
        out: &mut BytesMut,
    ) -> Result<Option<Outcome>, BackendError> {
        let op = self.outstanding().map(|(op, _)| op);
        let blame = op.unwrap_or(self.last_op);
        if op.is_none() && !input.is_empty() {
            return Err(BackendError::new(
                ErrorKind::Unsolicited,
                blame,
                format!("{} byte(s) received with no request outstanding", input.len()),
            ));
        }
        let raw = match frame::split(input, self.max_frame) {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(None),
            Err(e) => return Err(framing_error(blame, e)),
        };
        let outcome = self.answer(raw, now, out)?;
        Ok(Some(outcome))
    }

    fn answer(&mut self, raw: RawFrame, now: Instant, out: &mut BytesMut) -> Result<Outcome, BackendError> {
        let latency = now.saturating_duration_since(self.sent_at);
        match self.state {
            State::AwaitReady => {
                let client_id = match decode(Op::Startup, raw)? {
                    ServerFrame::Ready { client_id } => client_id,
                    other => return Err(unexpected(Op::Startup, &other)),
                };
                self.finish(Op::Startup, State::Idle, now);
                Ok(Outcome::Ready { client_id, latency })
            }
            State::AwaitBegin => {
                let payload = expect_result(Op::Begin, raw, ResultType::TXN_BEGIN_GETGXID_RESULT)?;
                if payload.len() != 12 {
                    return Err(BackendError::new(
                        ErrorKind::Malformed,
                        Op::Begin,
                        format!("begin result payload is {} bytes, expected 12", payload.len()),
                    ));
                }
                let gxid = match Response::decode(ResultType::TXN_BEGIN_GETGXID_RESULT, payload) {
                    Ok(Response::TxnBeginGetGxid { gxid, .. }) => gxid,
                    Ok(other) => return Err(BackendError::new(ErrorKind::Malformed, Op::Begin, format!("{other:?}"))),
                    Err(e) => return Err(decode_error(Op::Begin, e)),
                };
                if gxid == 0 {
                    return Err(BackendError::new(ErrorKind::InvalidGxid, Op::Begin, "begin returned GXID 0"));
                }
                encode_command(out, None, &Request::SnapshotGetMulti(vec![gxid]));
                self.finish(Op::Begin, State::AwaitSnapshot { gxid }, now);
                Ok(Outcome::Began { gxid, latency })
            }
            State::AwaitSnapshot { gxid } => {
                let payload = expect_result(Op::Snapshot, raw, ResultType::SNAPSHOT_GET_MULTI_RESULT)?;
                let (statuses, snapshot) = match Response::decode(ResultType::SNAPSHOT_GET_MULTI_RESULT, payload) {
                    Ok(Response::SnapshotGetMulti { statuses, snapshot }) => (statuses, snapshot),
                    Ok(other) => {
                        return Err(BackendError::new(ErrorKind::Malformed, Op::Snapshot, format!("{other:?}")))
                    }
                    Err(e) => return Err(decode_error(Op::Snapshot, e)),
                };
                check_single_status(Op::Snapshot, &statuses)?;
                check_snapshot(gxid, &snapshot)?;
                encode_command(out, None, &Request::TxnCommitMulti(vec![gxid]));
                self.finish(Op::Snapshot, State::AwaitCommit { gxid }, now);
                Ok(Outcome::Snapshot { gxid, latency })
            }
            State::AwaitCommit { gxid } => {
                let payload = expect_result(Op::Commit, raw, ResultType::TXN_COMMIT_MULTI_RESULT)?;
                let statuses = match Response::decode(ResultType::TXN_COMMIT_MULTI_RESULT, payload) {
                    Ok(Response::TxnCommitMulti { statuses }) => statuses,
                    Ok(other) => return Err(BackendError::new(ErrorKind::Malformed, Op::Commit, format!("{other:?}"))),
                    Err(e) => return Err(decode_error(Op::Commit, e)),
                };
                check_single_status(Op::Commit, &statuses)?;
                let txn = now.saturating_duration_since(self.txn_at);
                self.finish(Op::Commit, State::Idle, now);
                Ok(Outcome::Committed { gxid, latency, txn })
            }
            // `poll` rejects input in these states before splitting.
            State::Disconnected | State::Idle => Err(BackendError::new(
                ErrorKind::Unsolicited,
                self.last_op,
                format!("frame '{}' received with no request outstanding", char::from(raw.tag)),
            )),
        }
    }

    fn finish(&mut self, answered: Op, next: State, now: Instant) {
        self.last_op = answered;
        self.state = next;
        self.sent_at = now;
    }
}

fn framing_error(op: Op, e: FrameError) -> BackendError {
    let kind = match e {
        FrameError::UnknownTag(_) => ErrorKind::UnexpectedFrame,
        _ => ErrorKind::Malformed,
    };
    BackendError::new(kind, op, e.to_string())
}

fn decode_error(op: Op, e: DecodeError) -> BackendError {
    let kind = match e {
        DecodeError::UnexpectedFrame(_) => ErrorKind::UnexpectedFrame,
        DecodeError::Insufficient | DecodeError::Invalid(_) => ErrorKind::Malformed,
    };
    BackendError::new(kind, op, e.to_string())
}

fn decode(op: Op, raw: RawFrame) -> Result<ServerFrame, BackendError> {
    ServerFrame::decode(raw, false).map_err(|e| decode_error(op, e))
}

fn unexpected(op: Op, frame: &ServerFrame) -> BackendError {
    match frame {
        ServerFrame::Error { fields, .. } => {
            BackendError::new(ErrorKind::ServerError, op, format!("{}: {}", fields.severity(), fields.message()))
        }
        ServerFrame::Notice { fields, .. } => {
            BackendError::new(ErrorKind::UnexpectedFrame, op, format!("notice: {}", fields.message()))
        }
        ServerFrame::Ready { client_id } => {
            BackendError::new(ErrorKind::UnexpectedFrame, op, format!("'R' (client id {client_id}) mid-session"))
        }
        ServerFrame::Result(r) => {
            BackendError::new(ErrorKind::UnexpectedFrame, op, format!("result {} before startup", r.result_type))
        }
    }
}

/// The payload of an `S` frame of the expected result type.
fn expect_result(op: Op, raw: RawFrame, want: ResultType) -> Result<Bytes, BackendError> {
    match decode(op, raw)? {
        ServerFrame::Result(r) if r.result_type == want => Ok(r.payload),
        ServerFrame::Result(r) => Err(BackendError::new(
            ErrorKind::WrongResultType,
            op,
            format!("got result {}, expected {}", r.result_type, want),
        )),
        other => Err(unexpected(op, &other)),
    }
}

fn check_single_status(op: Op, statuses: &[i32]) -> Result<(), BackendError> {
    match statuses {
        [status::OK] => Ok(()),
        [s] => Err(BackendError::new(ErrorKind::BadStatus, op, format!("status {s}"))),
        v => Err(BackendError::new(ErrorKind::BadCount, op, format!("count {}, expected 1", v.len()))),
    }
}

/// `a` precedes `b` in GXID order (modulo 2^32, as the GTM compares normal GXIDs).
fn precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The snapshot invariants of protocol doc 5.2: xip lists every open GXID
/// below xmax, so the requester's own GXID is listed iff it precedes xmax;
/// xmin is the smallest of xmax and the xip entries.
pub fn check_snapshot(gxid: u32, s: &Snapshot) -> Result<(), BackendError> {
    let listed = s.xip.contains(&gxid);
    let below = precedes(gxid, s.xmax);
    let err = |kind, detail: String| Err(BackendError::new(kind, Op::Snapshot, detail));
    if below && !listed {
        return err(
            ErrorKind::SnapshotMissingOwnGxid,
            format!("own gxid {gxid} < xmax {} but not in xip ({} entries)", s.xmax, s.xip.len()),
        );
    }
    if !below && listed {
        return err(ErrorKind::SnapshotInconsistent, format!("own gxid {gxid} listed in xip but xmax is {}", s.xmax));
    }
    if precedes(s.xmax, s.xmin) {
        return err(ErrorKind::SnapshotInconsistent, format!("xmin {} > xmax {}", s.xmin, s.xmax));
    }
    if let Some(&x) = s.xip.iter().find(|&&x| precedes(x, s.xmin) || !precedes(x, s.xmax)) {
        return err(
            ErrorKind::SnapshotInconsistent,
            format!("xip entry {x} outside [xmin {}, xmax {})", s.xmin, s.xmax),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode_error, encode_result, startup, ErrorFields};

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    fn result(resp: &Response) -> BytesMut {
        let mut b = BytesMut::new();
        encode_result(&mut b, None, resp);
        b
    }

    fn ready() -> BytesMut {
        let mut b = BytesMut::new();
        startup::encode_ready(&mut b, 0);
        b
    }

    fn began(gxid: u32) -> BytesMut {
        result(&Response::TxnBeginGetGxid { gxid, timestamp: 848615791432038 })
    }

    fn snap(statuses: Vec<i32>, xmin: u32, xmax: u32, xip: Vec<u32>) -> BytesMut {
        result(&Response::SnapshotGetMulti { statuses, snapshot: Snapshot { xmin, xmax, xip } })
    }

    fn committed(statuses: Vec<i32>) -> BytesMut {
        result(&Response::TxnCommitMulti { statuses })
    }

    struct Harness {
        b: Backend,
        t0: Instant,
        out: BytesMut,
    }

    impl Harness {
        fn new(session_ids: bool) -> Self {
            let mut h =
                Harness { b: Backend::new("cn1", 18515, session_ids), t0: Instant::now(), out: BytesMut::new() };
            h.b.start(h.t0, &mut h.out);
            h
        }

        fn at(&self, us: u64) -> Instant {
            self.t0 + Duration::from_micros(us)
        }

        fn feed(&mut self, mut input: BytesMut, us: u64) -> Result<Option<Outcome>, BackendError> {
            self.out.clear();
            let now = self.at(us);
            let r = self.b.poll(&mut input, now, &mut self.out);
            assert!(r.is_err() || input.is_empty(), "one frame per feed");
            r
        }

        /// Startup, then begin `seq`: leaves the begin request in `out`.
        fn ready_and_begin(&mut self, seq: u64) {
            assert!(matches!(self.feed(ready(), 10), Ok(Some(Outcome::Ready { client_id: 0, .. }))));
            assert!(self.out.is_empty());
            assert!(self.b.begin(seq, self.at(20), &mut self.out));
        }
    }

    #[test]
    fn startup_is_dump1_bytes() {
        let h = Harness::new(true);
        let mut want = hex("41 00 00 00 50 63 6e 31");
        want.extend([0u8; 61]);
        want.extend(hex("06 00 00 00 00 00 00 00 00 00 00 00"));
        assert_eq!(&h.out[..], &want[..]);
        assert_eq!(h.b.outstanding(), Some((Op::Startup, h.t0)));
    }

    #[test]
    fn full_transaction_produces_the_xl_request_sequence() {
        let mut h = Harness::new(true);
        h.ready_and_begin(17);
        // Dump 1: begin with session id "cn1_18515_17\0".
        let mut want = hex("43 00 00 00 1e 00 00 00 10 00 00 00 01 00 00 00 00 0d");
        want.extend(b"cn1_18515_17\0");
        assert_eq!(&h.out[..], &want[..]);
        assert_eq!(h.b.outstanding().map(|o| o.0), Some(Op::Begin));

        let r = h.feed(began(10019), 120).unwrap();
        assert_eq!(r, Some(Outcome::Began { gxid: 10019, latency: Duration::from_micros(100) }));
        assert_eq!(&h.out[..], &hex("43 00 00 00 10 00 00 00 28 00 00 00 01 23 27 00 00")[..]);
        assert_eq!(h.b.open_gxid(), Some(10019));

        // xmax above the own gxid: must be listed.
        let r = h.feed(snap(vec![0], 10003, 10020, vec![10003, 10019]), 150).unwrap();
        assert_eq!(r, Some(Outcome::Snapshot { gxid: 10019, latency: Duration::from_micros(30) }));
        assert_eq!(&h.out[..], &hex("43 00 00 00 10 00 00 00 18 00 00 00 01 23 27 00 00")[..]);

        let r = h.feed(committed(vec![0]), 200).unwrap();
        assert_eq!(
            r,
            Some(Outcome::Committed {
                gxid: 10019,
                latency: Duration::from_micros(50),
                txn: Duration::from_micros(180)
            })
        );
        assert!(h.out.is_empty());
        assert!(h.b.is_idle());
        assert_eq!(h.b.open_gxid(), None);
        assert_eq!(h.b.outstanding(), None);
    }

    #[test]
    fn no_session_id_sends_a_lone_nul() {
        let mut h = Harness::new(false);
        h.ready_and_begin(1);
        assert_eq!(&h.out[..], &hex("43 00 00 00 12 00 00 00 10 00 00 00 01 00 00 00 00 01 00")[..]);
    }

    #[test]
    fn session_ids_are_unique_per_transaction() {
        let b = Backend::new("dn1", 7, true);
        assert_eq!(&b.session_id(1)[..], b"dn1_7_1\0");
        assert_ne!(b.session_id(1), b.session_id(2));
    }

    #[test]
    fn begin_only_when_idle() {
        let mut h = Harness::new(true);
        let mut out = BytesMut::new();
        assert!(!h.b.begin(1, h.t0, &mut out));
        assert!(out.is_empty());
        h.ready_and_begin(1);
        assert!(!h.b.begin(2, h.t0, &mut out));
    }

    #[test]
    fn snapshot_without_own_gxid_above_xmax_is_fine() {
        let mut h = Harness::new(true);
        h.ready_and_begin(1);
        h.feed(began(10005), 30).unwrap();
        // Nothing committed since: xmax = 10005 <= gxid, empty xip.
        assert!(matches!(h.feed(snap(vec![0], 10005, 10005, vec![]), 40), Ok(Some(Outcome::Snapshot { .. }))));
    }

    fn after_begin(gxid: u32) -> Harness {
        let mut h = Harness::new(true);
        h.ready_and_begin(1);
        h.feed(began(gxid), 30).unwrap();
        h
    }

    fn kind(r: Result<Option<Outcome>, BackendError>) -> (ErrorKind, Op) {
        let e = r.expect_err("should fail");
        (e.kind, e.op)
    }

    #[test]
    fn snapshot_validation() {
        use ErrorKind::*;
        let cases: Vec<(BytesMut, ErrorKind)> = vec![
            (snap(vec![0], 10003, 10020, vec![10003]), SnapshotMissingOwnGxid),
            (snap(vec![0], 10003, 10005, vec![10003, 10010]), SnapshotInconsistent),
            (snap(vec![0], 10030, 10020, vec![10010]), SnapshotInconsistent),
            (snap(vec![0], 10011, 10020, vec![10003, 10010]), SnapshotInconsistent),
            (snap(vec![3], 10003, 10020, vec![10010]), BadStatus),
            (snap(vec![0, 0], 10003, 10020, vec![10010]), BadCount),
            (snap(vec![], 10003, 10020, vec![10010]), BadCount),
            (began(10010), WrongResultType),
        ];
        for (input, want) in cases {
            let mut h = after_begin(10010);
            assert_eq!(kind(h.feed(input, 50)), (want, Op::Snapshot));
            assert!(h.out.is_empty(), "no commit after a failed snapshot");
        }
    }

    #[test]
    fn gxid_order_wraps() {
        assert!(precedes(u32::MAX - 1, 5));
        let s = Snapshot { xmin: u32::MAX - 1, xmax: 5, xip: vec![u32::MAX - 1] };
        assert_eq!(check_snapshot(u32::MAX - 1, &s), Ok(()));
    }

    #[test]
    fn begin_validation() {
        use ErrorKind::*;
        let mut short = BytesMut::new();
        encode_result(&mut short, None, &Response::TxnPrepare { gxid: 10 });
        let mut short11 = BytesMut::new();
        crate::codec::encode_result_raw(&mut short11, None, ResultType::TXN_BEGIN_GETGXID_RESULT, &[1, 0, 0, 0]);
        let mut long11 = BytesMut::new();
        crate::codec::encode_result_raw(&mut long11, None, ResultType::TXN_BEGIN_GETGXID_RESULT, &[1; 16]);
        let mut err = BytesMut::new();
        encode_error(&mut err, None, &ErrorFields::new("ERROR", "Max global transactions limit reached (16384)"));
        let cases: Vec<(BytesMut, ErrorKind)> = vec![
            (began(0), InvalidGxid),
            (short, WrongResultType),
            (short11, Malformed),
            (long11, Malformed),
            (err, ServerError),
            (ready(), UnexpectedFrame),
            (BytesMut::from(&b"Z\0\0\0\x04"[..]), UnexpectedFrame),
            (BytesMut::from(&b"S\0\0\0\x02"[..]), Malformed),
            (BytesMut::from(&b"C\0\0\0\x08\0\0\0\x10"[..]), UnexpectedFrame),
        ];
        for (input, want) in cases {
            let mut h = Harness::new(true);
            h.ready_and_begin(1);
            assert_eq!(kind(h.feed(input, 50)), (want, Op::Begin));
        }
    }

    #[test]
    fn server_error_detail_carries_the_message() {
        let mut h = after_begin(10010);
        let mut err = BytesMut::new();
        encode_error(&mut err, None, &ErrorFields::new("ERROR", "boom"));
        let e = h.feed(err, 40).unwrap_err();
        assert_eq!(e.detail, "ERROR: boom");
        assert_eq!(e.to_string(), "snapshot: server_error: ERROR: boom");
    }

    #[test]
    fn commit_validation() {
        use ErrorKind::*;
        for (input, want) in [
            (committed(vec![-1]), BadStatus),
            (committed(vec![]), BadCount),
            (committed(vec![0, 0]), BadCount),
            (snap(vec![0], 1, 1, vec![]), WrongResultType),
        ] {
            let mut h = after_begin(10010);
            h.feed(snap(vec![0], 10010, 10011, vec![10010]), 40).unwrap();
            assert_eq!(kind(h.feed(input, 50)), (want, Op::Commit));
        }
    }

    #[test]
    fn startup_validation() {
        let mut err = BytesMut::new();
        encode_error(&mut err, None, &ErrorFields::new("FATAL", "Expecting a startup message"));
        let mut h = Harness::new(true);
        assert_eq!(kind(h.feed(err, 5)), (ErrorKind::ServerError, Op::Startup));
        let mut h = Harness::new(true);
        assert_eq!(kind(h.feed(began(1), 5)), (ErrorKind::UnexpectedFrame, Op::Startup));
        let mut h = Harness::new(true);
        assert_eq!(kind(h.feed(BytesMut::from(&b"R\0\0\0\x06\0\0"[..]), 5)), (ErrorKind::Malformed, Op::Startup));
    }

    #[test]
    fn bytes_while_idle_are_unsolicited() {
        let mut h = Harness::new(true);
        h.feed(ready(), 10).unwrap();
        assert_eq!(kind(h.feed(committed(vec![0]), 20)), (ErrorKind::Unsolicited, Op::Startup));
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut h = Harness::new(true);
        h.ready_and_begin(1);
        let whole = began(10010);
        let mut input = BytesMut::from(&whole[..7]);
        let mut out = BytesMut::new();
        assert_eq!(h.b.poll(&mut input, h.at(30), &mut out), Ok(None));
        input.extend_from_slice(&whole[7..]);
        assert!(matches!(h.b.poll(&mut input, h.at(40), &mut out), Ok(Some(Outcome::Began { gxid: 10010, .. }))));
        assert!(input.is_empty());
        assert_eq!(out.len(), 17);
    }

    #[test]
    fn absurd_length_is_malformed_not_a_huge_allocation() {
        let mut h = Harness::new(true);
        h.ready_and_begin(1);
        assert_eq!(kind(h.feed(BytesMut::from(&b"S\x7f\xff\xff\xff"[..]), 50)), (ErrorKind::Malformed, Op::Begin));
    }

    #[test]
    fn reset_forgets_the_transaction() {
        let mut h = after_begin(10010);
        h.b.reset();
        assert_eq!(h.b.open_gxid(), None);
        assert_eq!(h.b.outstanding(), None);
        let mut out = BytesMut::new();
        h.b.start(h.at(100), &mut out);
        assert_eq!(out.len(), 81);
        assert_eq!(h.b.outstanding(), Some((Op::Startup, h.at(100))));
    }
}
