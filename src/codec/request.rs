//! Typed requests: the payload of a `C` frame after its message type.
//!
//! Every variant decodes from and encodes to exactly the bytes an XL 10
//! peer produces (protocol doc section 5). String fields stay zero-copy
//! slices of the frame. Types the codec does not model keep their payload
//! untouched in [`Request::Other`].

use bytes::{Bytes, BytesMut};

use super::types::MsgType;
use super::wire::{Put, Reader};
use super::DecodeError;

/// One begin request: `isolation i32be`, `read_only u8`, session id with a
/// `u32be` length (XL includes the NUL; "no session" is a lone NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    pub isolation: i32,
    pub read_only: bool,
    pub session_id: Bytes,
}

impl Begin {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Begin { isolation: r.i32be()?, read_only: r.bool()?, session_id: r.str_u32be()? })
    }
    fn encode(&self, dst: &mut BytesMut) {
        dst.i32be(self.isolation);
        dst.bool_(self.read_only);
        dst.str_u32be(&self.session_id);
    }
    /// The session id as the GTM compares it: up to the first NUL, and
    /// None when empty (an empty id never matches another transaction).
    pub fn session_key(&self) -> Option<&[u8]> {
        let s = &self.session_id[..];
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        if end == 0 {
            None
        } else {
            Some(&s[..end])
        }
    }
}

/// One element of `MSG_TXN_BEGIN_GETGXID_MULTI`: a begin plus the backend's
/// proxy connection id (`i16be`, unlike the little-endian proxy header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginElem {
    pub begin: Begin,
    pub conn_id: i16,
}

/// `MSG_NODE_REGISTER` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRegister {
    pub node_type: i32,
    pub name: Bytes,
    pub host: Bytes,
    pub port: u32,
    pub proxy_name: Bytes,
    pub data_folder: Bytes,
    pub status: i32,
}

/// Fields shared by the sequence requests that name the asking session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSession {
    pub coord_name: Bytes,
    pub coord_pid: u32,
}

impl SeqSession {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(SeqSession { coord_name: r.str_u32be()?, coord_pid: r.u32be()? })
    }
    fn encode(&self, dst: &mut BytesMut) {
        dst.str_u32be(&self.coord_name);
        dst.u32be(self.coord_pid);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    NodeRegister(NodeRegister),
    NodeUnregister {
        node_type: i32,
        name: Bytes,
    },
    RegisterSession {
        coord_name: Bytes,
        coord_pid: i32,
        backend_id: i32,
    },
    ReportXmin {
        gxid: u32,
        node_type: i32,
        name: Bytes,
    },
    TxnBegin(Begin),
    TxnBeginGetGxid(Begin),
    TxnBeginGetGxidMulti(Vec<BeginElem>),
    TxnStartPrepared {
        gxid: u32,
        gid: Bytes,
        nodes: Bytes,
    },
    TxnCommit {
        gxid: u32,
        waited: Vec<u32>,
    },
    TxnCommitMulti(Vec<u32>),
    TxnCommitPrepared {
        gxid: u32,
        prepared_gxid: u32,
        waited: Vec<u32>,
    },
    TxnPrepare {
        gxid: u32,
    },
    TxnRollback {
        gxid: u32,
    },
    TxnRollbackMulti(Vec<u32>),
    TxnGetGidData {
        isolation: i32,
        read_only: bool,
        gid: Bytes,
    },
    TxnGetGxid {
        handle: i32,
    },
    TxnGetNextGxid,
    /// `count` is sent as 1 and otherwise ignored by the GTM; it is kept so
    /// the frame re-encodes exactly.
    SnapshotGet {
        count: i32,
        gxid: u32,
    },
    SnapshotGetMulti(Vec<u32>),
    SnapshotGxidGet {
        count: i32,
        gxid: u32,
    },
    SequenceInit {
        key: Bytes,
        increment: i64,
        min: i64,
        max: i64,
        start: i64,
        cycle: bool,
        gxid: u32,
    },
    SequenceGetCurrent {
        key: Bytes,
        session: SeqSession,
    },
    SequenceGetNext {
        key: Bytes,
        session: SeqSession,
        range: i64,
    },
    SequenceGetLast {
        key: Bytes,
    },
    SequenceSetVal {
        key: Bytes,
        session: SeqSession,
        value: i64,
        is_called: bool,
    },
    SequenceReset {
        key: Bytes,
    },
    SequenceClose {
        key: Bytes,
        key_type: i32,
        gxid: u32,
    },
    SequenceRename {
        key: Bytes,
        new_key: Bytes,
        gxid: u32,
    },
    SequenceAlter {
        key: Bytes,
        increment: i64,
        min: i64,
        max: i64,
        start: i64,
        last: i64,
        cycle: bool,
        restart: bool,
    },
    TxnBeginGetGxidAutovacuum {
        isolation: i32,
        read_only: bool,
    },
    /// Proxy → GTM: the backend in the proxy header has gone.
    BackendDisconnect {
        is_postmaster: bool,
        node: Option<(i32, Bytes)>,
    },
    Barrier {
        id: Bytes,
    },
    /// Any message type not modelled above, payload untouched.
    Other {
        msg_type: MsgType,
        payload: Bytes,
    },
}

fn gxid_list(r: &mut Reader) -> Result<Vec<u32>, DecodeError> {
    let n = r.i32be()?;
    let n = r.count(n, 4)?;
    r.u32le_vec(n)
}

fn put_gxid_list(dst: &mut BytesMut, v: &[u32]) {
    put_gxid_multi(dst, v.iter().copied());
}

/// Payload of `MSG_TXN_COMMIT_MULTI`, `MSG_TXN_ROLLBACK_MULTI` or
/// `MSG_SNAPSHOT_GET_MULTI` (and of the waited-for lists): a count, then the
/// GXIDs. Takes an iterator so a caller's own element list needs no copy.
pub fn put_gxid_multi(dst: &mut BytesMut, gxids: impl ExactSizeIterator<Item = u32>) {
    dst.i32be(gxids.len() as i32);
    for g in gxids {
        dst.u32le(g);
    }
}

/// Payload of `MSG_TXN_BEGIN_GETGXID_MULTI`: a count, then each begin with
/// its backend's connection id. Takes borrowed elements so a caller's own
/// element list needs no copy.
pub fn put_begin_multi<'a>(dst: &mut BytesMut, elems: impl ExactSizeIterator<Item = (&'a Begin, i16)>) {
    dst.i32be(elems.len() as i32);
    for (b, conn_id) in elems {
        b.encode(dst);
        dst.i16be(conn_id);
    }
}

impl Request {
    pub fn msg_type(&self) -> MsgType {
        use Request::*;
        match self {
            NodeRegister(_) => MsgType::NODE_REGISTER,
            NodeUnregister { .. } => MsgType::NODE_UNREGISTER,
            RegisterSession { .. } => MsgType::REGISTER_SESSION,
            ReportXmin { .. } => MsgType::REPORT_XMIN,
            TxnBegin(_) => MsgType::TXN_BEGIN,
            TxnBeginGetGxid(_) => MsgType::TXN_BEGIN_GETGXID,
            TxnBeginGetGxidMulti(_) => MsgType::TXN_BEGIN_GETGXID_MULTI,
            TxnStartPrepared { .. } => MsgType::TXN_START_PREPARED,
            TxnCommit { .. } => MsgType::TXN_COMMIT,
            TxnCommitMulti(_) => MsgType::TXN_COMMIT_MULTI,
            TxnCommitPrepared { .. } => MsgType::TXN_COMMIT_PREPARED,
            TxnPrepare { .. } => MsgType::TXN_PREPARE,
            TxnRollback { .. } => MsgType::TXN_ROLLBACK,
            TxnRollbackMulti(_) => MsgType::TXN_ROLLBACK_MULTI,
            TxnGetGidData { .. } => MsgType::TXN_GET_GID_DATA,
            TxnGetGxid { .. } => MsgType::TXN_GET_GXID,
            TxnGetNextGxid => MsgType::TXN_GET_NEXT_GXID,
            SnapshotGet { .. } => MsgType::SNAPSHOT_GET,
            SnapshotGetMulti(_) => MsgType::SNAPSHOT_GET_MULTI,
            SnapshotGxidGet { .. } => MsgType::SNAPSHOT_GXID_GET,
            SequenceInit { .. } => MsgType::SEQUENCE_INIT,
            SequenceGetCurrent { .. } => MsgType::SEQUENCE_GET_CURRENT,
            SequenceGetNext { .. } => MsgType::SEQUENCE_GET_NEXT,
            SequenceGetLast { .. } => MsgType::SEQUENCE_GET_LAST,
            SequenceSetVal { .. } => MsgType::SEQUENCE_SET_VAL,
            SequenceReset { .. } => MsgType::SEQUENCE_RESET,
            SequenceClose { .. } => MsgType::SEQUENCE_CLOSE,
            SequenceRename { .. } => MsgType::SEQUENCE_RENAME,
            SequenceAlter { .. } => MsgType::SEQUENCE_ALTER,
            TxnBeginGetGxidAutovacuum { .. } => MsgType::TXN_BEGIN_GETGXID_AUTOVACUUM,
            BackendDisconnect { .. } => MsgType::BACKEND_DISCONNECT,
            Barrier { .. } => MsgType::BARRIER,
            Other { msg_type, .. } => *msg_type,
        }
    }

    /// Decode the payload that follows the message type. Trailing bytes are
    /// an error, as on the GTM.
    pub fn decode(msg_type: MsgType, payload: Bytes) -> Result<Request, DecodeError> {
        use Request::*;
        let mut r = Reader::new(payload);
        let req = match msg_type {
            MsgType::NODE_REGISTER => NodeRegister(self::NodeRegister {
                node_type: r.i32le()?,
                name: r.str_i32be()?,
                host: r.str_i32be()?,
                port: r.u32le()?,
                proxy_name: r.str_u32be()?,
                data_folder: r.str_u32be()?,
                status: r.i32be()?,
            }),
            MsgType::NODE_UNREGISTER => NodeUnregister { node_type: r.i32le()?, name: r.str_i32be()? },
            MsgType::REGISTER_SESSION => {
                RegisterSession { coord_name: r.str_i32be()?, coord_pid: r.i32be()?, backend_id: r.i32be()? }
            }
            MsgType::REPORT_XMIN => ReportXmin { gxid: r.u32le()?, node_type: r.i32be()?, name: r.str_u32be()? },
            MsgType::TXN_BEGIN => TxnBegin(Begin::decode(&mut r)?),
            MsgType::TXN_BEGIN_GETGXID => TxnBeginGetGxid(Begin::decode(&mut r)?),
            MsgType::TXN_BEGIN_GETGXID_MULTI => {
                let n = r.i32be()?;
                // Smallest element: 4 + 1 + 4 + 0 + 2 bytes.
                let n = r.count(n, 11)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let begin = Begin::decode(&mut r)?;
                    v.push(BeginElem { begin, conn_id: r.i16be()? });
                }
                TxnBeginGetGxidMulti(v)
            }
            MsgType::TXN_START_PREPARED => {
                TxnStartPrepared { gxid: r.u32le()?, gid: r.str_u32be()?, nodes: r.str_u32be()? }
            }
            MsgType::TXN_COMMIT => TxnCommit { gxid: r.u32le()?, waited: gxid_list(&mut r)? },
            MsgType::TXN_COMMIT_MULTI => TxnCommitMulti(gxid_list(&mut r)?),
            MsgType::TXN_COMMIT_PREPARED => {
                TxnCommitPrepared { gxid: r.u32le()?, prepared_gxid: r.u32le()?, waited: gxid_list(&mut r)? }
            }
            MsgType::TXN_PREPARE => TxnPrepare { gxid: r.u32le()? },
            MsgType::TXN_ROLLBACK => TxnRollback { gxid: r.u32le()? },
            MsgType::TXN_ROLLBACK_MULTI => TxnRollbackMulti(gxid_list(&mut r)?),
            MsgType::TXN_GET_GID_DATA => {
                TxnGetGidData { isolation: r.i32be()?, read_only: r.bool()?, gid: r.str_u32be()? }
            }
            MsgType::TXN_GET_GXID => TxnGetGxid { handle: r.i32le()? },
            MsgType::TXN_GET_NEXT_GXID => TxnGetNextGxid,
            MsgType::SNAPSHOT_GET => SnapshotGet { count: r.i32be()?, gxid: r.u32le()? },
            MsgType::SNAPSHOT_GET_MULTI => SnapshotGetMulti(gxid_list(&mut r)?),
            MsgType::SNAPSHOT_GXID_GET => SnapshotGxidGet { count: r.i32be()?, gxid: r.u32le()? },
            MsgType::SEQUENCE_INIT => SequenceInit {
                key: r.str_u32be()?,
                increment: r.i64le()?,
                min: r.i64le()?,
                max: r.i64le()?,
                start: r.i64le()?,
                cycle: r.bool()?,
                gxid: r.u32le()?,
            },
            MsgType::SEQUENCE_GET_CURRENT => {
                SequenceGetCurrent { key: r.str_u32be()?, session: SeqSession::decode(&mut r)? }
            }
            MsgType::SEQUENCE_GET_NEXT => {
                SequenceGetNext { key: r.str_u32be()?, session: SeqSession::decode(&mut r)?, range: r.i64le()? }
            }
            MsgType::SEQUENCE_GET_LAST => SequenceGetLast { key: r.str_u32be()? },
            MsgType::SEQUENCE_SET_VAL => SequenceSetVal {
                key: r.str_u32be()?,
                session: SeqSession::decode(&mut r)?,
                value: r.i64le()?,
                is_called: r.bool()?,
            },
            MsgType::SEQUENCE_RESET => SequenceReset { key: r.str_u32be()? },
            MsgType::SEQUENCE_CLOSE => SequenceClose { key: r.str_u32be()?, key_type: r.i32le()?, gxid: r.u32le()? },
            MsgType::SEQUENCE_RENAME => {
                SequenceRename { key: r.str_u32be()?, new_key: r.str_u32be()?, gxid: r.u32le()? }
            }
            MsgType::SEQUENCE_ALTER => SequenceAlter {
                key: r.str_u32be()?,
                increment: r.i64le()?,
                min: r.i64le()?,
                max: r.i64le()?,
                start: r.i64le()?,
                last: r.i64le()?,
                cycle: r.bool()?,
                restart: r.bool()?,
            },
            MsgType::TXN_BEGIN_GETGXID_AUTOVACUUM => {
                TxnBeginGetGxidAutovacuum { isolation: r.i32be()?, read_only: r.bool()? }
            }
            MsgType::BACKEND_DISCONNECT => {
                let is_postmaster = r.bool()?;
                let node = if is_postmaster { Some((r.i32le()?, r.str_i32be()?)) } else { None };
                BackendDisconnect { is_postmaster, node }
            }
            MsgType::BARRIER => Barrier { id: r.str_i32be()? },
            other => return Ok(Other { msg_type: other, payload: r.rest() }),
        };
        r.end()?;
        Ok(req)
    }

    /// Append the payload that follows the message type.
    pub fn encode_payload(&self, dst: &mut BytesMut) {
        use Request::*;
        match self {
            NodeRegister(n) => {
                dst.i32le(n.node_type);
                dst.str_i32be(&n.name);
                dst.str_i32be(&n.host);
                dst.u32le(n.port);
                dst.str_u32be(&n.proxy_name);
                dst.str_u32be(&n.data_folder);
                dst.i32be(n.status);
            }
            NodeUnregister { node_type, name } => {
                dst.i32le(*node_type);
                dst.str_i32be(name);
            }
            RegisterSession { coord_name, coord_pid, backend_id } => {
                dst.str_i32be(coord_name);
                dst.i32be(*coord_pid);
                dst.i32be(*backend_id);
            }
            ReportXmin { gxid, node_type, name } => {
                dst.u32le(*gxid);
                dst.i32be(*node_type);
                dst.str_u32be(name);
            }
            TxnBegin(b) | TxnBeginGetGxid(b) => b.encode(dst),
            TxnBeginGetGxidMulti(v) => put_begin_multi(dst, v.iter().map(|e| (&e.begin, e.conn_id))),
            TxnStartPrepared { gxid, gid, nodes } => {
                dst.u32le(*gxid);
                dst.str_u32be(gid);
                dst.str_u32be(nodes);
            }
            TxnCommit { gxid, waited } => {
                dst.u32le(*gxid);
                put_gxid_list(dst, waited);
            }
            TxnCommitMulti(v) | TxnRollbackMulti(v) | SnapshotGetMulti(v) => put_gxid_list(dst, v),
            TxnCommitPrepared { gxid, prepared_gxid, waited } => {
                dst.u32le(*gxid);
                dst.u32le(*prepared_gxid);
                put_gxid_list(dst, waited);
            }
            TxnPrepare { gxid } | TxnRollback { gxid } => dst.u32le(*gxid),
            TxnGetGidData { isolation, read_only, gid } => {
                dst.i32be(*isolation);
                dst.bool_(*read_only);
                dst.str_u32be(gid);
            }
            TxnGetGxid { handle } => dst.i32le(*handle),
            TxnGetNextGxid => {}
            SnapshotGet { count, gxid } | SnapshotGxidGet { count, gxid } => {
                dst.i32be(*count);
                dst.u32le(*gxid);
            }
            SequenceInit { key, increment, min, max, start, cycle, gxid } => {
                dst.str_u32be(key);
                for v in [increment, min, max, start] {
                    dst.i64le(*v);
                }
                dst.bool_(*cycle);
                dst.u32le(*gxid);
            }
            SequenceGetCurrent { key, session } => {
                dst.str_u32be(key);
                session.encode(dst);
            }
            SequenceGetNext { key, session, range } => {
                dst.str_u32be(key);
                session.encode(dst);
                dst.i64le(*range);
            }
            SequenceGetLast { key } | SequenceReset { key } => dst.str_u32be(key),
            SequenceSetVal { key, session, value, is_called } => {
                dst.str_u32be(key);
                session.encode(dst);
                dst.i64le(*value);
                dst.bool_(*is_called);
            }
            SequenceClose { key, key_type, gxid } => {
                dst.str_u32be(key);
                dst.i32le(*key_type);
                dst.u32le(*gxid);
            }
            SequenceRename { key, new_key, gxid } => {
                dst.str_u32be(key);
                dst.str_u32be(new_key);
                dst.u32le(*gxid);
            }
            SequenceAlter { key, increment, min, max, start, last, cycle, restart } => {
                dst.str_u32be(key);
                for v in [increment, min, max, start, last] {
                    dst.i64le(*v);
                }
                dst.bool_(*cycle);
                dst.bool_(*restart);
            }
            TxnBeginGetGxidAutovacuum { isolation, read_only } => {
                dst.i32be(*isolation);
                dst.bool_(*read_only);
            }
            BackendDisconnect { is_postmaster, node } => {
                dst.bool_(*is_postmaster);
                if let Some((t, name)) = node {
                    dst.i32le(*t);
                    dst.str_i32be(name);
                }
            }
            Barrier { id } => dst.str_i32be(id),
            Other { payload, .. } => dst.raw(payload),
        }
    }
}
