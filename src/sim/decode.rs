//! What the real GTM does with a payload the codec refuses.
//!
//! The codec is strict: any short field, negative length or trailing byte is an
//! error. The GTM reads fields one by one with `pq_getmsg*` and acts on the way:
//! some handlers never check for trailing bytes, some check only after they
//! changed state, some validate a length before reading the rest, negative
//! counts are not errors, and so on. This module re-reads a refused payload in
//! the GTM's order and returns the GTM's answer: either a request to run
//! (possibly followed by "invalid message format") or the exact error.
//!
//! Error texts are those of `pqformat.c`: "insufficient data left in message"
//! for any short read or negative length, "no data left in message" for a
//! missing one-byte field, "invalid message format" for trailing bytes.

use bytes::Bytes;

use super::state::Gtm;
use super::*;
use crate::codec::types::MsgType;
use crate::codec::{Begin, BeginElem, NodeRegister, Request, SeqSession};

const INSUFFICIENT: &str = "insufficient data left in message";
const NO_DATA: &str = "no data left in message";
const BAD_FORMAT: &str = "invalid message format";
/// `MaxAllocSize`.
const MAX_ALLOC: u64 = 0x3fff_ffff;

/// A `pq_getmsg*` cursor.
struct Msg {
    buf: Bytes,
    pos: usize,
}

type R<T> = Result<T, Outcome>;

fn err(msg: impl Into<String>) -> Outcome {
    Outcome::Error(msg.into())
}

impl Msg {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// `pq_getmsgbytes(msg, int datalen)`.
    fn bytes(&mut self, n: i32) -> R<Bytes> {
        if n < 0 || n as usize > self.left() {
            return Err(err(INSUFFICIENT));
        }
        let b = self.buf.slice(self.pos..self.pos + n as usize);
        self.pos += n as usize;
        Ok(b)
    }

    fn arr<const N: usize>(&mut self) -> R<[u8; N]> {
        let b = self.bytes(N as i32)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&b);
        Ok(a)
    }

    /// `pq_getmsgint(msg, 4)`: network order.
    fn int4(&mut self) -> R<u32> {
        Ok(u32::from_be_bytes(self.arr()?))
    }

    fn i32be(&mut self) -> R<i32> {
        Ok(self.int4()? as i32)
    }

    fn int2(&mut self) -> R<i16> {
        Ok(i16::from_be_bytes(self.arr()?))
    }

    /// A raw 4-byte copy (little-endian on x86-64).
    fn raw4(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn raw8(&mut self) -> R<i64> {
        Ok(i64::from_le_bytes(self.arr()?))
    }

    /// `pq_getmsgbyte`.
    fn byte(&mut self) -> R<bool> {
        if self.left() == 0 {
            return Err(err(NO_DATA));
        }
        self.pos += 1;
        Ok(self.buf[self.pos - 1] != 0)
    }

    /// `pq_getmsgend`.
    fn end(&self) -> R<()> {
        if self.left() != 0 {
            return Err(err(BAD_FORMAT));
        }
        Ok(())
    }

    /// A `uint32` length then that many bytes (read through an `int`).
    fn str_u32(&mut self) -> R<Bytes> {
        let n = self.int4()?;
        self.bytes(n as i32)
    }

    fn begin(&mut self) -> R<Begin> {
        Ok(Begin { isolation: self.i32be()?, read_only: self.byte()?, session_id: self.str_u32()? })
    }

    /// A GID as the 2PC handlers read it: `palloc(len + 1)` first, with `len` an
    /// `int` (`signed`) or a `GTM_StrLen`.
    fn gid(&mut self, len: u32, signed: bool) -> R<Bytes> {
        let size = if signed { (len as i32).wrapping_add(1) as i64 as u64 } else { u64::from(len.wrapping_add(1)) };
        if size > MAX_ALLOC {
            return Err(err(format!("invalid memory alloc request size {size}")));
        }
        self.bytes(len as i32)
    }

    /// A count and that many raw GXIDs (the loop does not run for count ≤ 0).
    fn gxids(&mut self, count: i32) -> R<Vec<u32>> {
        (0..count.max(0)).map(|_| self.raw4()).collect()
    }

    fn session(&mut self) -> R<SeqSession> {
        let n = self.int4()?;
        let coord_name = if n > 0 { self.bytes(n as i32)? } else { Bytes::new() };
        Ok(SeqSession { coord_name, coord_pid: self.int4()? })
    }
}

/// How a leniently parsed request continues.
enum Then {
    /// Run it.
    Run,
    /// Run it, then fail with "invalid message format" if it succeeded: the GTM
    /// checks for trailing bytes only after acting.
    RunThenBadFormat,
}

impl Gtm {
    /// A `C` payload the codec refused: answer as the real GTM does.
    pub(crate) fn handle_malformed(&mut self, link: &LinkCtx, msg_type: MsgType, payload: Bytes) -> Outcome {
        let mut m = Msg { buf: payload, pos: 0 };
        if msg_type == MsgType::BACKEND_DISCONNECT {
            // The transactions go before the payload is even looked at.
            self.remove_all(link.client_id, link.conn_id);
            return match backend_disconnect(&mut m) {
                Ok(Some((t, name))) => {
                    self.backend_disconnect_node(link, t, &name);
                    Outcome::NoReply
                }
                Ok(None) => Outcome::NoReply,
                Err(o) => o,
            };
        }
        let (req, then) = match parse(&mut m, msg_type) {
            Ok(v) => v,
            Err(o) => return o,
        };
        let out = self.handle(link, req);
        match (then, out) {
            (Then::RunThenBadFormat, Outcome::Reply { .. }) => err(BAD_FORMAT),
            (_, out) => out,
        }
    }
}

/// For handlers that check for trailing bytes only after acting.
fn then_end(m: &Msg) -> Then {
    if m.left() != 0 {
        Then::RunThenBadFormat
    } else {
        Then::Run
    }
}

/// `ProcessPGXCNodeBackendDisconnect`'s reading; `None`: nothing more to do.
fn backend_disconnect(m: &mut Msg) -> R<Option<(i32, Bytes)>> {
    if !m.byte()? {
        m.end()?;
        return Ok(None);
    }
    let t = m.raw4()? as i32;
    let len = m.i32be()?;
    if len >= NI_MAXHOST as i32 {
        log::info!("invalid node name length {len} in MSG_BACKEND_DISCONNECT");
        return Ok(None);
    }
    let name = m.bytes(len)?;
    m.end()?;
    Ok(Some((t, name)))
}

/// Re-read a payload the way the GTM's handler for `msg_type` does.
fn parse(m: &mut Msg, msg_type: MsgType) -> R<(Request, Then)> {
    use Request as Q;
    use Then::*;
    let run = |q: Request| Ok((q, Run));
    match msg_type {
        MsgType::NODE_REGISTER => {
            let node_type = m.raw4()? as i32;
            let len = m.i32be()?;
            if len >= NI_MAXHOST as i32 {
                return Err(err("Invalid name length."));
            }
            let name = m.bytes(len)?;
            let host_len = m.i32be()?;
            let host = m.bytes(host_len)?;
            let port = m.raw4()?;
            let proxy_len = m.int4()? as i32;
            if proxy_len >= NI_MAXHOST as i32 {
                return Err(err("Invalid proxy name length."));
            }
            let proxy_name = m.bytes(proxy_len)?;
            let data_folder = m.str_u32()?;
            let status = m.i32be()?;
            let n = NodeRegister { node_type, name, host, port, proxy_name, data_folder, status };
            Ok((Q::NodeRegister(n), then_end(m)))
        }
        MsgType::NODE_UNREGISTER => {
            let node_type = m.raw4()? as i32;
            let len = m.i32be()?;
            if len >= NI_MAXHOST as i32 {
                return Err(err("Invalid node name length"));
            }
            Ok((Q::NodeUnregister { node_type, name: m.bytes(len)? }, then_end(m)))
        }
        MsgType::REGISTER_SESSION => {
            let len = m.i32be()?;
            if len >= 64 {
                return Err(err("Invalid name length."));
            }
            let coord_name = m.bytes(len)?;
            run(Q::RegisterSession { coord_name, coord_pid: m.i32be()?, backend_id: m.i32be()? })
        }
        MsgType::REPORT_XMIN => {
            let gxid = m.raw4()?;
            let node_type = m.i32be()?;
            let name = m.str_u32()?;
            m.end()?;
            run(Q::ReportXmin { gxid, node_type, name })
        }
        MsgType::TXN_BEGIN => run(Q::TxnBegin(m.begin()?)),
        MsgType::TXN_BEGIN_GETGXID => run(Q::TxnBeginGetGxid(m.begin()?)),
        MsgType::TXN_BEGIN_GETGXID_MULTI => {
            let count = m.i32be()?;
            if count <= 0 {
                return Err(Outcome::Panic("Zero or less transaction count".into()));
            }
            let mut v = Vec::with_capacity((count as usize).min(MAX_TXNS));
            for i in 0..count as usize {
                if i == MAX_TXNS {
                    return Err(overflow(msg_type, count));
                }
                let begin = m.begin()?;
                v.push(BeginElem { begin, conn_id: m.int2()? });
            }
            run(Q::TxnBeginGetGxidMulti(v))
        }
        MsgType::TXN_BEGIN_GETGXID_AUTOVACUUM => {
            run(Q::TxnBeginGetGxidAutovacuum { isolation: m.i32be()?, read_only: m.byte()? })
        }
        MsgType::TXN_START_PREPARED => {
            let gxid = m.raw4()?;
            let gid_len = m.int4()?;
            let gid = m.gid(gid_len, false)?;
            let nodes = m.str_u32()?;
            m.end()?;
            run(Q::TxnStartPrepared { gxid, gid, nodes })
        }
        MsgType::TXN_COMMIT => {
            let gxid = m.raw4()?;
            let waited = waited(m)?;
            m.end()?;
            run(Q::TxnCommit { gxid, waited })
        }
        MsgType::TXN_COMMIT_PREPARED => {
            let gxid = m.raw4()?;
            let prepared_gxid = m.raw4()?;
            let waited = waited(m)?;
            m.end()?;
            run(Q::TxnCommitPrepared { gxid, prepared_gxid, waited })
        }
        MsgType::TXN_COMMIT_MULTI | MsgType::TXN_ROLLBACK_MULTI | MsgType::SNAPSHOT_GET_MULTI => {
            let count = m.i32be()?;
            let v = m.gxids(count)?;
            m.end()?;
            if count < 0 {
                return Err(negative_multi(msg_type, count));
            }
            run(match msg_type {
                MsgType::TXN_COMMIT_MULTI => Q::TxnCommitMulti(v),
                MsgType::TXN_ROLLBACK_MULTI => Q::TxnRollbackMulti(v),
                _ => Q::SnapshotGetMulti(v),
            })
        }
        MsgType::TXN_PREPARE | MsgType::TXN_ROLLBACK => {
            let gxid = m.raw4()?;
            m.end()?;
            run(if msg_type == MsgType::TXN_PREPARE { Q::TxnPrepare { gxid } } else { Q::TxnRollback { gxid } })
        }
        MsgType::TXN_GET_GID_DATA => {
            let isolation = m.i32be()?;
            let read_only = m.byte()?;
            let len = m.int4()?;
            let gid = m.gid(len, true)?;
            m.end()?;
            run(Q::TxnGetGidData { isolation, read_only, gid })
        }
        MsgType::TXN_GET_GXID => {
            let handle = m.raw4()? as i32;
            m.end()?;
            run(Q::TxnGetGxid { handle })
        }
        MsgType::TXN_GET_NEXT_GXID => {
            m.end()?;
            run(Q::TxnGetNextGxid)
        }
        MsgType::SNAPSHOT_GET | MsgType::SNAPSHOT_GXID_GET => {
            let count = m.i32be()?;
            let gxid = m.raw4()?;
            m.end()?;
            run(if msg_type == MsgType::SNAPSHOT_GET {
                Q::SnapshotGet { count, gxid }
            } else {
                Q::SnapshotGxidGet { count, gxid }
            })
        }
        MsgType::SEQUENCE_INIT => {
            let key = m.str_u32()?;
            let (increment, min, max, start) = (m.raw8()?, m.raw8()?, m.raw8()?, m.raw8()?);
            let cycle = m.byte()?;
            let gxid = m.raw4()?;
            Ok((Q::SequenceInit { key, increment, min, max, start, cycle, gxid }, then_end(m)))
        }
        MsgType::SEQUENCE_ALTER => {
            let key = m.str_u32()?;
            let (increment, min, max, start, last) = (m.raw8()?, m.raw8()?, m.raw8()?, m.raw8()?, m.raw8()?);
            let cycle = m.byte()?;
            let restart = m.byte()?;
            Ok((Q::SequenceAlter { key, increment, min, max, start, last, cycle, restart }, then_end(m)))
        }
        MsgType::SEQUENCE_GET_CURRENT => {
            let key = m.str_u32()?;
            run(Q::SequenceGetCurrent { key, session: m.session()? })
        }
        MsgType::SEQUENCE_GET_NEXT => {
            let key = m.str_u32()?;
            let session = m.session()?;
            run(Q::SequenceGetNext { key, session, range: m.raw8()? })
        }
        MsgType::SEQUENCE_SET_VAL => {
            let key = m.str_u32()?;
            let session = m.session()?;
            let value = m.raw8()?;
            let is_called = m.byte()?;
            Ok((Q::SequenceSetVal { key, session, value, is_called }, then_end(m)))
        }
        MsgType::SEQUENCE_RESET => run(Q::SequenceReset { key: m.str_u32()? }),
        MsgType::SEQUENCE_CLOSE => {
            let key = m.str_u32()?;
            run(Q::SequenceClose { key, key_type: m.raw4()? as i32, gxid: m.raw4()? })
        }
        MsgType::SEQUENCE_RENAME => {
            let key = m.str_u32()?;
            let new_key = m.str_u32()?;
            let gxid = m.raw4()?;
            Ok((Q::SequenceRename { key, new_key, gxid }, then_end(m)))
        }
        // No handler: the payload is never read.
        MsgType::SEQUENCE_GET_LAST => Err(Outcome::NoReply),
        MsgType::BARRIER => {
            let len = m.i32be()?;
            let id = m.bytes(len)?;
            m.end()?;
            run(Q::Barrier { id })
        }
        // The codec models every other type the GTM reads as `Other`, which
        // never fails to decode.
        other => Err(Outcome::Error(format!("unexpected payload for message type {}", other.0))),
    }
}

fn overflow(msg_type: MsgType, count: i32) -> Outcome {
    Outcome::Crash(format!(
        "message type {} with count {count} overflows the real GTM's {MAX_TXNS}-entry arrays",
        msg_type.0
    ))
}

/// Most negative count of `MSG_TXN_COMMIT_MULTI` the real GTM was seen to survive
/// (it sizes stack arrays with the count; how far that goes depends on its stack
/// layout: -100 always survived, -100000 did not).
const COMMIT_MULTI_NEGATIVE_SURVIVED: i32 = -100;

/// The waited-GXID list of commit requests: read only for a positive count.
fn waited(m: &mut Msg) -> R<Vec<u32>> {
    let count = m.i32be()?;
    if count <= 0 {
        return Ok(Vec::new());
    }
    let bytes = (count as i64) * 4;
    if bytes > i64::from(i32::MAX) {
        return Err(err(INSUFFICIENT));
    }
    m.gxids(count)
}

/// MULTI requests with a negative count. The real GTM sizes stack arrays with
/// the count: snapshot requests crash at once (`memset` of a negative size), a
/// rollback survives only -1, a commit small negative counts (see
/// [`COMMIT_MULTI_NEGATIVE_SURVIVED`]). Survivors fail when the reply asks for
/// `count * 4` status bytes.
fn negative_multi(msg_type: MsgType, count: i32) -> Outcome {
    let survives = match msg_type {
        MsgType::TXN_COMMIT_MULTI => count >= COMMIT_MULTI_NEGATIVE_SURVIVED,
        MsgType::TXN_ROLLBACK_MULTI => count == -1,
        _ => false,
    };
    if !survives {
        return Outcome::Crash(format!(
            "message type {} with count {count} sizes the real GTM's stack arrays negatively",
            msg_type.0
        ));
    }
    let words = count.wrapping_mul(4);
    if words < 0 {
        return err(format!("invalid string enlargement request size: {words}"));
    }
    // count * 4 wrapped to 0 or a positive size: an empty status list.
    let result_type = if msg_type == MsgType::TXN_COMMIT_MULTI {
        crate::codec::ResultType::TXN_COMMIT_MULTI_RESULT
    } else {
        crate::codec::ResultType::TXN_ROLLBACK_MULTI_RESULT
    };
    let mut p = bytes::BytesMut::new();
    bytes::BufMut::put_i32_le(&mut p, count);
    Outcome::reply(crate::codec::Response::Other { result_type, payload: p.freeze() })
}
