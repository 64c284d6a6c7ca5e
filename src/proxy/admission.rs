//! Admission: what the proxy does with one decoded backend request. Pure: a
//! request goes in, one decision comes out; no sockets, no clock.
//!
//! * [`Admission::Group`]: the request joins a `*_MULTI` with other
//!   backends' requests of the same type (begin, single commit, rollback,
//!   single snapshot);
//! * [`Admission::Forward`]: sent 1:1 with the backend's identifier in the
//!   proxy header, payload untouched, except a backend's own begin MULTI,
//!   whose elements get the backend's identifier;
//! * [`Admission::Refuse`]: answered with an `E` at once, with the reason.
//!
//! Whether the GTM link can take the request at all is the worker's
//! business; admission looks at the request only.

use std::fmt;

use bytes::{Bytes, BytesMut};

use crate::codec::types::MAX_GLOBAL_TRANSACTIONS;
use crate::codec::{Begin, MsgType, Request};

/// One element of a grouped request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouped {
    Begin(Begin),
    Commit(u32),
    Rollback(u32),
    Snapshot(u32),
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Group(Grouped),
    /// Send `payload` 1:1 under the request's message type. `ends` are the
    /// GXIDs a commit or commit-prepared ends (0 = none), so that its answer
    /// can close them in the ledger.
    Forward {
        payload: Bytes,
        ends: [u32; 2],
    },
    Refuse(Refusal),
}

/// Why a request is answered with an `E` instead of reaching the GTM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The real GTM would crash or corrupt memory on it; no XL backend sends
    /// it, so refusing costs nothing and protects the cluster's GTM.
    Dangerous(MsgType, &'static str),
    /// A GTM message no backend may send through a proxy.
    NotProxied(MsgType, &'static str),
    /// Not an XL 10 message type.
    Unknown(MsgType),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Dangerous(t, why) => write!(f, "{t} refused by gtm_proxy: {why}"),
            Refusal::NotProxied(t, why) => write!(f, "{t} is not accepted by gtm_proxy: {why}"),
            Refusal::Unknown(t) => write!(f, "invalid frontend message type {}", t.0),
        }
    }
}

/// Decide what happens to `req`, which arrived as `msg_type` with `payload`
/// from the backend holding identifier `conn`.
pub fn admit(msg_type: MsgType, payload: Bytes, req: Request, conn: i16) -> Admission {
    use Request::*;
    if let Some(why) = endangers_gtm(&req) {
        return Admission::Refuse(Refusal::Dangerous(msg_type, why));
    }
    let forward = |ends| Admission::Forward { payload, ends };
    match req {
        TxnBeginGetGxid(b) => Admission::Group(Grouped::Begin(b)),
        TxnRollback { gxid } => Admission::Group(Grouped::Rollback(gxid)),
        TxnCommitMulti(v) if v.len() == 1 => Admission::Group(Grouped::Commit(v[0])),
        SnapshotGetMulti(v) if v.len() == 1 => Admission::Group(Grouped::Snapshot(v[0])),
        TxnBeginGetGxidMulti(mut elems) => {
            // The GTM keys each begun transaction by the element's connection
            // id: make every element the backend's own.
            for e in &mut elems {
                e.conn_id = conn;
            }
            let mut rewritten = BytesMut::new();
            TxnBeginGetGxidMulti(elems).encode_payload(&mut rewritten);
            Admission::Forward { payload: rewritten.freeze(), ends: [0; 2] }
        }
        TxnCommit { gxid, .. } => forward([gxid, 0]),
        TxnCommitPrepared { gxid, prepared_gxid, .. } => forward([gxid, prepared_gxid]),
        BackendDisconnect { .. } => Admission::Refuse(Refusal::NotProxied(msg_type, "only the proxy sends it")),
        SequenceGetLast { .. } => Admission::Refuse(Refusal::NotProxied(msg_type, "the GTM never answers it")),
        Other { msg_type: t, .. } => match t {
            MsgType::TXN_GET_STATUS | MsgType::TXN_GET_ALL_PREPARED => {
                Admission::Refuse(Refusal::NotProxied(msg_type, "the GTM never answers it"))
            }
            MsgType::NODE_LIST | MsgType::TXN_GXID_LIST | MsgType::SEQUENCE_LIST => forward([0; 2]),
            t if t.name().is_some() => {
                Admission::Refuse(Refusal::NotProxied(msg_type, "standby and internal messages are not proxied"))
            }
            _ => Admission::Refuse(Refusal::Unknown(msg_type)),
        },
        _ => forward([0; 2]),
    }
}

/// Call `f` with every GXID whose end `req` asks for (commit, rollback,
/// prepare), so the ledger knows the outcome may be under way.
pub fn for_each_ending(req: &Request, mut f: impl FnMut(u32)) {
    use Request::*;
    match req {
        TxnCommitMulti(v) | TxnRollbackMulti(v) => v.iter().for_each(|g| f(*g)),
        TxnRollback { gxid } | TxnCommit { gxid, .. } | TxnPrepare { gxid } | TxnStartPrepared { gxid, .. } => f(*gxid),
        TxnCommitPrepared { gxid, prepared_gxid, .. } => {
            f(*gxid);
            f(*prepared_gxid);
        }
        _ => {}
    }
}

/// Requests the real GTM answers by crashing or corrupting memory (see the
/// simulator's notes).
fn endangers_gtm(req: &Request) -> Option<&'static str> {
    use Request::*;
    const COUNT: &str = "the element count must be between 1 and 16384";
    match req {
        TxnCommitMulti(v) | TxnRollbackMulti(v) | SnapshotGetMulti(v)
            if v.is_empty() || v.len() > MAX_GLOBAL_TRANSACTIONS =>
        {
            Some(COUNT)
        }
        TxnBeginGetGxidMulti(v) if v.is_empty() || v.len() > MAX_GLOBAL_TRANSACTIONS => Some(COUNT),
        SnapshotGet { count, .. } | SnapshotGxidGet { count, .. } if *count != 1 => Some("the count must be 1"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::BeginElem;

    fn begin() -> Begin {
        Begin { isolation: 1, read_only: false, session_id: Bytes::from_static(b"\0") }
    }

    /// Admit `req` as it would arrive: its own message type and payload.
    fn decide(req: Request) -> Admission {
        let mut payload = BytesMut::new();
        req.encode_payload(&mut payload);
        admit(req.msg_type(), payload.freeze(), req, 7)
    }

    fn other(t: i32) -> Request {
        Request::Other { msg_type: MsgType(t), payload: Bytes::new() }
    }

    fn is_forward(a: &Admission) -> bool {
        matches!(a, Admission::Forward { .. })
    }

    #[test]
    fn single_transaction_requests_are_grouped() {
        assert_eq!(decide(Request::TxnBeginGetGxid(begin())), Admission::Group(Grouped::Begin(begin())));
        assert_eq!(decide(Request::TxnCommitMulti(vec![5])), Admission::Group(Grouped::Commit(5)));
        assert_eq!(decide(Request::TxnRollback { gxid: 6 }), Admission::Group(Grouped::Rollback(6)));
        assert_eq!(decide(Request::SnapshotGetMulti(vec![0])), Admission::Group(Grouped::Snapshot(0)));
    }

    #[test]
    fn other_requests_are_forwarded_untouched() {
        for req in [
            Request::TxnCommitMulti(vec![1, 2]),
            Request::TxnBegin(begin()),
            Request::TxnGetGxid { handle: 1 },
            Request::SnapshotGxidGet { count: 1, gxid: 3 },
            other(9),
        ] {
            let mut payload = BytesMut::new();
            req.encode_payload(&mut payload);
            let payload = payload.freeze();
            assert_eq!(
                admit(req.msg_type(), payload.clone(), req.clone(), 7),
                Admission::Forward { payload, ends: [0; 2] },
                "{req:?}"
            );
        }
    }

    #[test]
    fn forwarded_commits_name_the_gxids_they_end() {
        let a = decide(Request::TxnCommit { gxid: 10, waited: vec![] });
        assert!(matches!(a, Admission::Forward { ends: [10, 0], .. }));
        let a = decide(Request::TxnCommitPrepared { gxid: 11, prepared_gxid: 12, waited: vec![] });
        assert!(matches!(a, Admission::Forward { ends: [11, 12], .. }));
    }

    #[test]
    fn a_backends_begin_multi_gets_its_identifier_in_every_element() {
        let e = |conn_id| BeginElem { begin: begin(), conn_id };
        let Admission::Forward { payload, .. } = decide(Request::TxnBeginGetGxidMulti(vec![e(1), e(2)])) else {
            panic!("not forwarded")
        };
        let got = Request::decode(MsgType::TXN_BEGIN_GETGXID_MULTI, payload).unwrap();
        assert_eq!(got, Request::TxnBeginGetGxidMulti(vec![e(7), e(7)]));
    }

    #[test]
    fn requests_that_would_crash_the_gtm_are_refused() {
        let dangerous = |a| matches!(a, Admission::Refuse(Refusal::Dangerous(..)));
        assert!(dangerous(decide(Request::TxnCommitMulti(vec![]))));
        assert!(dangerous(decide(Request::TxnRollbackMulti(vec![1; MAX_GLOBAL_TRANSACTIONS + 1]))));
        assert!(dangerous(decide(Request::TxnBeginGetGxidMulti(vec![]))));
        assert!(dangerous(decide(Request::SnapshotGet { count: 2, gxid: 3 })));
        assert!(is_forward(&decide(Request::TxnRollbackMulti(vec![1; MAX_GLOBAL_TRANSACTIONS]))));
        let a = decide(Request::SnapshotGxidGet { count: 0, gxid: 3 });
        let Admission::Refuse(r) = a else { panic!() };
        assert_eq!(r.to_string(), "MSG_SNAPSHOT_GXID_GET (41) refused by gtm_proxy: the count must be 1");
    }

    #[test]
    fn messages_no_backend_may_send_are_refused() {
        let not_proxied = |a| matches!(a, Admission::Refuse(Refusal::NotProxied(..)));
        assert!(not_proxied(decide(Request::SequenceGetLast { key: Bytes::new() })));
        assert!(not_proxied(decide(Request::BackendDisconnect { is_postmaster: false, node: None })));
        assert!(not_proxied(decide(other(59))));
        assert!(not_proxied(decide(other(12))));
        assert_eq!(decide(other(99)), Admission::Refuse(Refusal::Unknown(MsgType(99))));
        assert_eq!(Refusal::Unknown(MsgType(99)).to_string(), "invalid frontend message type 99");
    }

    #[test]
    fn endings_are_listed() {
        let ends = |req: Request| {
            let mut v = Vec::new();
            for_each_ending(&req, |g| v.push(g));
            v
        };
        assert_eq!(ends(Request::TxnRollbackMulti(vec![1, 2])), vec![1, 2]);
        assert_eq!(ends(Request::TxnPrepare { gxid: 3 }), vec![3]);
        assert_eq!(ends(Request::TxnCommitPrepared { gxid: 4, prepared_gxid: 5, waited: vec![] }), vec![4, 5]);
        assert_eq!(ends(Request::TxnBeginGetGxid(begin())), Vec::<u32>::new());
    }
}
