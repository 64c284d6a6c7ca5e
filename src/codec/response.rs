//! Typed results: the payload of an `S` frame after its result type (and,
//! on a proxy link, after the proxy header), plus the fields of `E` frames.

use bytes::{Bytes, BytesMut};

use super::types::ResultType;
use super::wire::{Put, Reader};
use super::DecodeError;

/// A snapshot: `xmin u32le`, `xmax u32le`, `xcnt i32be`, `xcnt × u32le`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub xmin: u32,
    pub xmax: u32,
    pub xip: Vec<u32>,
}

impl Snapshot {
    pub fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let xmin = r.u32le()?;
        let xmax = r.u32le()?;
        let n = r.i32be()?;
        let n = r.count(n, 4)?;
        Ok(Snapshot { xmin, xmax, xip: r.u32le_vec(n)? })
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        dst.u32le(self.xmin);
        dst.u32le(self.xmax);
        dst.i32be(self.xip.len() as i32);
        for &x in &self.xip {
            dst.u32le(x);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    NodeRegister {
        node_type: i32,
        name: Bytes,
    },
    NodeUnregister {
        node_type: i32,
        name: Bytes,
    },
    RegisterSession,
    ReportXmin {
        latest_completed: u32,
        global_xmin: u32,
        errcode: i32,
    },
    TxnBegin {
        handle: i32,
        timestamp: i64,
    },
    TxnBeginGetGxid {
        gxid: u32,
        timestamp: i64,
    },
    TxnBeginGetGxidMulti {
        gxids: Vec<u32>,
        timestamp: i64,
    },
    TxnPrepare {
        gxid: u32,
    },
    TxnStartPrepared {
        gxid: u32,
    },
    TxnCommitPrepared {
        gxid: u32,
        status: i32,
    },
    TxnCommit {
        gxid: u32,
        status: i32,
    },
    TxnCommitMulti {
        statuses: Vec<i32>,
    },
    /// The GTM appends a big-endian status; the XL proxy sends the GXID only.
    TxnRollback {
        gxid: u32,
        status: Option<i32>,
    },
    TxnRollbackMulti {
        statuses: Vec<i32>,
    },
    TxnGetGidData {
        gxid: u32,
        prepared_gxid: u32,
        nodes: Bytes,
    },
    TxnGetGxid {
        handle: i32,
        gxid: u32,
    },
    /// Big-endian on the wire.
    TxnGetNextGxid {
        gxid: u32,
    },
    SnapshotGet {
        gxid: u32,
        count: i32,
        status: i32,
        snapshot: Snapshot,
    },
    SnapshotGetMulti {
        statuses: Vec<i32>,
        snapshot: Snapshot,
    },
    SnapshotGxidGet {
        gxid: u32,
        count: i32,
        status: i32,
        snapshot: Snapshot,
    },
    SequenceInit {
        key: Bytes,
    },
    SequenceGetCurrent {
        key: Bytes,
        value: i64,
    },
    SequenceGetNext {
        key: Bytes,
        value: i64,
        range_max: i64,
    },
    SequenceSetVal {
        key: Bytes,
    },
    SequenceReset {
        key: Bytes,
    },
    SequenceClose {
        key: Bytes,
    },
    SequenceRename {
        key: Bytes,
    },
    SequenceAlter {
        key: Bytes,
    },
    TxnBeginGetGxidAutovacuum {
        gxid: u32,
    },
    Barrier,
    /// A result type not modelled above, payload untouched.
    Other {
        result_type: ResultType,
        payload: Bytes,
    },
}

fn status_list(r: &mut Reader) -> Result<Vec<i32>, DecodeError> {
    let n = r.i32le()?;
    let n = r.count(n, 4)?;
    r.i32le_vec(n)
}

fn put_status_list(dst: &mut BytesMut, v: &[i32]) {
    dst.i32le(v.len() as i32);
    for &s in v {
        dst.i32le(s);
    }
}

impl Response {
    pub fn result_type(&self) -> ResultType {
        use Response::*;
        match self {
            NodeRegister { .. } => ResultType::NODE_REGISTER_RESULT,
            NodeUnregister { .. } => ResultType::NODE_UNREGISTER_RESULT,
            RegisterSession => ResultType::REGISTER_SESSION_RESULT,
            ReportXmin { .. } => ResultType::REPORT_XMIN_RESULT,
            TxnBegin { .. } => ResultType::TXN_BEGIN_RESULT,
            TxnBeginGetGxid { .. } => ResultType::TXN_BEGIN_GETGXID_RESULT,
            TxnBeginGetGxidMulti { .. } => ResultType::TXN_BEGIN_GETGXID_MULTI_RESULT,
            TxnPrepare { .. } => ResultType::TXN_PREPARE_RESULT,
            TxnStartPrepared { .. } => ResultType::TXN_START_PREPARED_RESULT,
            TxnCommitPrepared { .. } => ResultType::TXN_COMMIT_PREPARED_RESULT,
            TxnCommit { .. } => ResultType::TXN_COMMIT_RESULT,
            TxnCommitMulti { .. } => ResultType::TXN_COMMIT_MULTI_RESULT,
            TxnRollback { .. } => ResultType::TXN_ROLLBACK_RESULT,
            TxnRollbackMulti { .. } => ResultType::TXN_ROLLBACK_MULTI_RESULT,
            TxnGetGidData { .. } => ResultType::TXN_GET_GID_DATA_RESULT,
            TxnGetGxid { .. } => ResultType::TXN_GET_GXID_RESULT,
            TxnGetNextGxid { .. } => ResultType::TXN_GET_NEXT_GXID_RESULT,
            SnapshotGet { .. } => ResultType::SNAPSHOT_GET_RESULT,
            SnapshotGetMulti { .. } => ResultType::SNAPSHOT_GET_MULTI_RESULT,
            SnapshotGxidGet { .. } => ResultType::SNAPSHOT_GXID_GET_RESULT,
            SequenceInit { .. } => ResultType::SEQUENCE_INIT_RESULT,
            SequenceGetCurrent { .. } => ResultType::SEQUENCE_GET_CURRENT_RESULT,
            SequenceGetNext { .. } => ResultType::SEQUENCE_GET_NEXT_RESULT,
            SequenceSetVal { .. } => ResultType::SEQUENCE_SET_VAL_RESULT,
            SequenceReset { .. } => ResultType::SEQUENCE_RESET_RESULT,
            SequenceClose { .. } => ResultType::SEQUENCE_CLOSE_RESULT,
            SequenceRename { .. } => ResultType::SEQUENCE_RENAME_RESULT,
            SequenceAlter { .. } => ResultType::SEQUENCE_ALTER_RESULT,
            TxnBeginGetGxidAutovacuum { .. } => ResultType::TXN_BEGIN_GETGXID_AUTOVACUUM_RESULT,
            Barrier => ResultType::BARRIER_RESULT,
            Other { result_type, .. } => *result_type,
        }
    }

    /// Decode the payload after the result type (and proxy header).
    pub fn decode(result_type: ResultType, payload: Bytes) -> Result<Response, DecodeError> {
        use Response::*;
        let mut r = Reader::new(payload);
        let resp = match result_type {
            ResultType::NODE_REGISTER_RESULT => NodeRegister { node_type: r.i32le()?, name: r.str_i32be()? },
            ResultType::NODE_UNREGISTER_RESULT => NodeUnregister { node_type: r.i32le()?, name: r.str_i32be()? },
            ResultType::REGISTER_SESSION_RESULT => RegisterSession,
            ResultType::REPORT_XMIN_RESULT => {
                ReportXmin { latest_completed: r.u32le()?, global_xmin: r.u32le()?, errcode: r.i32le()? }
            }
            ResultType::TXN_BEGIN_RESULT => TxnBegin { handle: r.i32le()?, timestamp: r.i64le()? },
            ResultType::TXN_BEGIN_GETGXID_RESULT => TxnBeginGetGxid { gxid: r.u32le()?, timestamp: r.i64le()? },
            ResultType::TXN_BEGIN_GETGXID_MULTI_RESULT => {
                let n = r.i32le()?;
                let n = r.count(n, 4)?;
                TxnBeginGetGxidMulti { gxids: r.u32le_vec(n)?, timestamp: r.i64le()? }
            }
            ResultType::TXN_PREPARE_RESULT => TxnPrepare { gxid: r.u32le()? },
            ResultType::TXN_START_PREPARED_RESULT => TxnStartPrepared { gxid: r.u32le()? },
            ResultType::TXN_COMMIT_PREPARED_RESULT => TxnCommitPrepared { gxid: r.u32le()?, status: r.i32le()? },
            ResultType::TXN_COMMIT_RESULT => TxnCommit { gxid: r.u32le()?, status: r.i32le()? },
            ResultType::TXN_COMMIT_MULTI_RESULT => TxnCommitMulti { statuses: status_list(&mut r)? },
            ResultType::TXN_ROLLBACK_RESULT => {
                let gxid = r.u32le()?;
                let status = if r.remaining() > 0 { Some(r.i32be()?) } else { None };
                TxnRollback { gxid, status }
            }
            ResultType::TXN_ROLLBACK_MULTI_RESULT => TxnRollbackMulti { statuses: status_list(&mut r)? },
            ResultType::TXN_GET_GID_DATA_RESULT => {
                TxnGetGidData { gxid: r.u32le()?, prepared_gxid: r.u32le()?, nodes: r.str_i32be()? }
            }
            ResultType::TXN_GET_GXID_RESULT => TxnGetGxid { handle: r.i32le()?, gxid: r.u32le()? },
            ResultType::TXN_GET_NEXT_GXID_RESULT => TxnGetNextGxid { gxid: r.u32be()? },
            ResultType::SNAPSHOT_GET_RESULT => SnapshotGet {
                gxid: r.u32le()?,
                count: r.i32le()?,
                status: r.i32le()?,
                snapshot: Snapshot::decode(&mut r)?,
            },
            ResultType::SNAPSHOT_GET_MULTI_RESULT => {
                let statuses = status_list(&mut r)?;
                SnapshotGetMulti { statuses, snapshot: Snapshot::decode(&mut r)? }
            }
            ResultType::SNAPSHOT_GXID_GET_RESULT => SnapshotGxidGet {
                gxid: r.u32le()?,
                count: r.i32le()?,
                status: r.i32le()?,
                snapshot: Snapshot::decode(&mut r)?,
            },
            ResultType::SEQUENCE_INIT_RESULT => SequenceInit { key: r.str_i32be()? },
            ResultType::SEQUENCE_GET_CURRENT_RESULT => SequenceGetCurrent { key: r.str_i32be()?, value: r.i64le()? },
            ResultType::SEQUENCE_GET_NEXT_RESULT => {
                SequenceGetNext { key: r.str_i32be()?, value: r.i64le()?, range_max: r.i64le()? }
            }
            ResultType::SEQUENCE_SET_VAL_RESULT => SequenceSetVal { key: r.str_i32be()? },
            ResultType::SEQUENCE_RESET_RESULT => SequenceReset { key: r.str_i32be()? },
            ResultType::SEQUENCE_CLOSE_RESULT => SequenceClose { key: r.str_i32be()? },
            ResultType::SEQUENCE_RENAME_RESULT => SequenceRename { key: r.str_i32be()? },
            ResultType::SEQUENCE_ALTER_RESULT => SequenceAlter { key: r.str_i32be()? },
            ResultType::TXN_BEGIN_GETGXID_AUTOVACUUM_RESULT => TxnBeginGetGxidAutovacuum { gxid: r.u32le()? },
            ResultType::BARRIER_RESULT => Barrier,
            other => return Ok(Other { result_type: other, payload: r.rest() }),
        };
        r.end()?;
        Ok(resp)
    }

    pub fn encode_payload(&self, dst: &mut BytesMut) {
        use Response::*;
        match self {
            NodeRegister { node_type, name } | NodeUnregister { node_type, name } => {
                dst.i32le(*node_type);
                dst.str_i32be(name);
            }
            RegisterSession | Barrier => {}
            ReportXmin { latest_completed, global_xmin, errcode } => {
                dst.u32le(*latest_completed);
                dst.u32le(*global_xmin);
                dst.i32le(*errcode);
            }
            TxnBegin { handle, timestamp } => {
                dst.i32le(*handle);
                dst.i64le(*timestamp);
            }
            TxnBeginGetGxid { gxid, timestamp } => {
                dst.u32le(*gxid);
                dst.i64le(*timestamp);
            }
            TxnBeginGetGxidMulti { gxids, timestamp } => {
                dst.i32le(gxids.len() as i32);
                for &g in gxids {
                    dst.u32le(g);
                }
                dst.i64le(*timestamp);
            }
            TxnPrepare { gxid } | TxnStartPrepared { gxid } | TxnBeginGetGxidAutovacuum { gxid } => dst.u32le(*gxid),
            TxnCommitPrepared { gxid, status } | TxnCommit { gxid, status } => {
                dst.u32le(*gxid);
                dst.i32le(*status);
            }
            TxnCommitMulti { statuses } | TxnRollbackMulti { statuses } => put_status_list(dst, statuses),
            TxnRollback { gxid, status } => {
                dst.u32le(*gxid);
                if let Some(s) = status {
                    dst.i32be(*s);
                }
            }
            TxnGetGidData { gxid, prepared_gxid, nodes } => {
                dst.u32le(*gxid);
                dst.u32le(*prepared_gxid);
                dst.str_i32be(nodes);
            }
            TxnGetGxid { handle, gxid } => {
                dst.i32le(*handle);
                dst.u32le(*gxid);
            }
            TxnGetNextGxid { gxid } => dst.u32be(*gxid),
            SnapshotGet { gxid, count, status, snapshot } | SnapshotGxidGet { gxid, count, status, snapshot } => {
                dst.u32le(*gxid);
                dst.i32le(*count);
                dst.i32le(*status);
                snapshot.encode(dst);
            }
            SnapshotGetMulti { statuses, snapshot } => {
                put_status_list(dst, statuses);
                snapshot.encode(dst);
            }
            SequenceInit { key }
            | SequenceSetVal { key }
            | SequenceReset { key }
            | SequenceClose { key }
            | SequenceRename { key }
            | SequenceAlter { key } => dst.str_i32be(key),
            SequenceGetCurrent { key, value } => {
                dst.str_i32be(key);
                dst.i64le(*value);
            }
            SequenceGetNext { key, value, range_max } => {
                dst.str_i32be(key);
                dst.i64le(*value);
                dst.i64le(*range_max);
            }
            Other { payload, .. } => dst.raw(payload),
        }
    }
}

/// The fields of an `E` (or `N`) frame: code byte + NUL-terminated string,
/// repeated, then a lone NUL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    pub fields: Vec<(u8, Bytes)>,
}

impl ErrorFields {
    /// An error with severity and message, the two fields the GTM always sends.
    pub fn new(severity: &str, message: &str) -> Self {
        ErrorFields {
            fields: vec![
                (b'S', Bytes::copy_from_slice(severity.as_bytes())),
                (b'M', Bytes::copy_from_slice(message.as_bytes())),
            ],
        }
    }

    pub fn with_detail(mut self, detail: &str) -> Self {
        self.fields.push((b'D', Bytes::copy_from_slice(detail.as_bytes())));
        self
    }

    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.fields.iter().find(|(c, _)| *c == code).map(|(_, v)| &v[..])
    }

    pub fn severity(&self) -> String {
        String::from_utf8_lossy(self.get(b'S').unwrap_or(b"")).into_owned()
    }

    pub fn message(&self) -> String {
        String::from_utf8_lossy(self.get(b'M').unwrap_or(b"")).into_owned()
    }

    pub fn decode(body: Bytes) -> Result<Self, DecodeError> {
        let mut fields = Vec::new();
        let mut rest = body;
        loop {
            let Some(&code) = rest.first() else {
                return Err(DecodeError::Invalid("unterminated error fields"));
            };
            if code == 0 {
                if rest.len() != 1 {
                    return Err(DecodeError::Invalid("invalid message format"));
                }
                return Ok(ErrorFields { fields });
            }
            let Some(nul) = rest[1..].iter().position(|&b| b == 0) else {
                return Err(DecodeError::Invalid("unterminated error field"));
            };
            let value = rest.slice(1..1 + nul);
            fields.push((code, value));
            rest = rest.slice(2 + nul..);
        }
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        for (code, value) in &self.fields {
            dst.u8_(*code);
            dst.raw(value);
            dst.u8_(0);
        }
        dst.u8_(0);
    }
}
