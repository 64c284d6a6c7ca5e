//! Wire codec for the Postgres-XL 10 GTM protocol. Pure: bytes in, typed
//! messages out, and back; no sockets, no clocks.
//!
//! Layers:
//! * [`frame`] splits a byte stream into [`RawFrame`]s (tag + body);
//! * [`ClientFrame`] / [`ServerFrame`] give a frame its meaning for one
//!   direction of one link, including the 2-byte proxy header that exists
//!   only on links whose startup said remote type 1;
//! * [`Request`] / [`Response`] are the typed payloads of `C` and `S` frames.
//!
//! The protocol mixes byte orders field by field; see [`wire`].

pub mod frame;
pub mod request;
pub mod response;
pub mod startup;
pub mod types;
pub mod wire;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

pub use frame::RawFrame;
pub use request::{Begin, BeginElem, NodeRegister, Request, SeqSession};
pub use response::{ErrorFields, Response, Snapshot};
pub use startup::StartupPacket;
pub use types::{MsgType, ResultType};

use frame::*;

/// Errors of the framing layer. `Incomplete` only means "wait for more
/// bytes"; every other variant means the stream cannot be resynchronised and
/// the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("incomplete frame")]
    Incomplete,
    #[error("invalid frame type byte 0x{0:02x}")]
    UnknownTag(u8),
    #[error("invalid frame length {0} (minimum is 4)")]
    LengthTooShort(usize),
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
}

/// Errors decoding the body of a whole frame. The frame boundary is intact,
/// so the connection could in principle continue; what to do is the
/// caller's policy.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("insufficient data left in message")]
    Insufficient,
    #[error("{0}")]
    Invalid(&'static str),
    #[error("unexpected frame type '{}'", char::from(*.0))]
    UnexpectedFrame(u8),
}

/// A `C` frame: optional proxy header, message type, untouched payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub header: Option<i16>,
    pub msg_type: MsgType,
    pub payload: Bytes,
}

impl Command {
    pub fn request(&self) -> Result<Request, DecodeError> {
        Request::decode(self.msg_type, self.payload.clone())
    }
}

/// Frames a client (backend, or proxy worker) sends to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Startup(StartupPacket),
    Command(Command),
    Flush,
    Close,
}

/// An `S` frame: result type, optional proxy header, untouched payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultFrame {
    pub header: Option<i16>,
    pub result_type: ResultType,
    pub payload: Bytes,
}

impl ResultFrame {
    pub fn response(&self) -> Result<Response, DecodeError> {
        Response::decode(self.result_type, self.payload.clone())
    }
}

/// Frames a server (GTM, or proxy) sends to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    Ready { client_id: u32 },
    Result(ResultFrame),
    Error { header: Option<i16>, fields: ErrorFields },
    Notice { header: Option<i16>, fields: ErrorFields },
}

fn take_i32be(body: &mut Bytes) -> Result<i32, DecodeError> {
    if body.len() < 4 {
        return Err(DecodeError::Insufficient);
    }
    let v = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    *body = body.slice(4..);
    Ok(v)
}

fn take_header(body: &mut Bytes, proxied: bool) -> Result<Option<i16>, DecodeError> {
    if !proxied {
        return Ok(None);
    }
    if body.len() < 2 {
        return Err(DecodeError::Insufficient);
    }
    let v = i16::from_le_bytes([body[0], body[1]]);
    *body = body.slice(2..);
    Ok(Some(v))
}

impl ClientFrame {
    /// Give a raw frame its client-side meaning. `proxied` is true on a link
    /// whose startup said remote type 1 (proxy header present).
    pub fn decode(raw: RawFrame, proxied: bool) -> Result<ClientFrame, DecodeError> {
        let mut body = raw.body;
        match raw.tag {
            TAG_STARTUP => Ok(ClientFrame::Startup(StartupPacket::decode(&body)?)),
            TAG_COMMAND => {
                let header = take_header(&mut body, proxied)?;
                let msg_type = MsgType(take_i32be(&mut body)?);
                Ok(ClientFrame::Command(Command { header, msg_type, payload: body }))
            }
            TAG_FLUSH => {
                if take_i32be(&mut body)? != MsgType::DATA_FLUSH.0 || !body.is_empty() {
                    return Err(DecodeError::Invalid("invalid flush frame"));
                }
                Ok(ClientFrame::Flush)
            }
            TAG_CLOSE => Ok(ClientFrame::Close),
            other => Err(DecodeError::UnexpectedFrame(other)),
        }
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            ClientFrame::Startup(s) => s.encode(dst),
            ClientFrame::Command(c) => encode_command_raw(dst, c.header, c.msg_type, &c.payload),
            ClientFrame::Flush => encode_flush(dst),
            ClientFrame::Close => encode_close(dst),
        }
    }
}

impl ServerFrame {
    pub fn decode(raw: RawFrame, proxied: bool) -> Result<ServerFrame, DecodeError> {
        let mut body = raw.body;
        match raw.tag {
            TAG_READY => Ok(ServerFrame::Ready { client_id: startup::decode_ready(&body)? }),
            TAG_RESULT => {
                let result_type = ResultType(take_i32be(&mut body)?);
                let header = take_header(&mut body, proxied)?;
                Ok(ServerFrame::Result(ResultFrame { header, result_type, payload: body }))
            }
            TAG_ERROR | TAG_NOTICE => {
                let header = take_header(&mut body, proxied)?;
                let fields = ErrorFields::decode(body)?;
                Ok(if raw.tag == TAG_ERROR {
                    ServerFrame::Error { header, fields }
                } else {
                    ServerFrame::Notice { header, fields }
                })
            }
            other => Err(DecodeError::UnexpectedFrame(other)),
        }
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            ServerFrame::Ready { client_id } => startup::encode_ready(dst, *client_id),
            ServerFrame::Result(r) => encode_result_raw(dst, r.header, r.result_type, &r.payload),
            ServerFrame::Error { header, fields } => encode_error(dst, *header, fields),
            ServerFrame::Notice { header, fields } => {
                let start = begin(dst, TAG_NOTICE);
                if let Some(h) = header {
                    dst.put_i16_le(*h);
                }
                fields.encode(dst);
                finish(dst, start);
            }
        }
    }
}

/// `C` frame around an already-encoded payload (forwarding path).
#[inline]
pub fn encode_command_raw(dst: &mut BytesMut, header: Option<i16>, msg_type: MsgType, payload: &[u8]) {
    dst.reserve(HEADER_LEN + 6 + payload.len());
    let start = begin(dst, TAG_COMMAND);
    if let Some(h) = header {
        dst.put_i16_le(h);
    }
    dst.put_i32(msg_type.0);
    dst.extend_from_slice(payload);
    finish(dst, start);
}

/// `C` frame for a typed request.
pub fn encode_command(dst: &mut BytesMut, header: Option<i16>, req: &Request) {
    let start = begin(dst, TAG_COMMAND);
    if let Some(h) = header {
        dst.put_i16_le(h);
    }
    dst.put_i32(req.msg_type().0);
    req.encode_payload(dst);
    finish(dst, start);
}

/// `C` frame `MSG_TXN_BEGIN_GETGXID_MULTI` from borrowed elements (begin,
/// backend connection id): the same bytes as encoding
/// [`Request::TxnBeginGetGxidMulti`], without building the request.
pub fn encode_begin_multi<'a>(
    dst: &mut BytesMut,
    header: Option<i16>,
    elems: impl ExactSizeIterator<Item = (&'a Begin, i16)>,
) {
    let start = begin(dst, TAG_COMMAND);
    if let Some(h) = header {
        dst.put_i16_le(h);
    }
    dst.put_i32(MsgType::TXN_BEGIN_GETGXID_MULTI.0);
    request::put_begin_multi(dst, elems);
    finish(dst, start);
}

/// `C` frame of a GXID-list MULTI (`MSG_TXN_COMMIT_MULTI`,
/// `MSG_TXN_ROLLBACK_MULTI`, `MSG_SNAPSHOT_GET_MULTI`): the same bytes as
/// encoding the matching [`Request`], without building it.
pub fn encode_gxid_multi(
    dst: &mut BytesMut,
    header: Option<i16>,
    msg_type: MsgType,
    gxids: impl ExactSizeIterator<Item = u32>,
) {
    debug_assert!(matches!(
        msg_type,
        MsgType::TXN_COMMIT_MULTI | MsgType::TXN_ROLLBACK_MULTI | MsgType::SNAPSHOT_GET_MULTI
    ));
    dst.reserve(HEADER_LEN + 10 + 4 * gxids.len());
    let start = begin(dst, TAG_COMMAND);
    if let Some(h) = header {
        dst.put_i16_le(h);
    }
    dst.put_i32(msg_type.0);
    request::put_gxid_multi(dst, gxids);
    finish(dst, start);
}

/// `S` frame around an already-encoded payload.
#[inline]
pub fn encode_result_raw(dst: &mut BytesMut, header: Option<i16>, result_type: ResultType, payload: &[u8]) {
    dst.reserve(HEADER_LEN + 6 + payload.len());
    let start = begin(dst, TAG_RESULT);
    dst.put_i32(result_type.0);
    if let Some(h) = header {
        dst.put_i16_le(h);
    }
    dst.extend_from_slice(payload);
    finish(dst, start);
}

/// `S` frame for a typed result.
pub fn encode_result(dst: &mut BytesMut, header: Option<i16>, resp: &Response) {
    let start = begin(dst, TAG_RESULT);
    dst.put_i32(resp.result_type().0);
    if let Some(h) = header {
        dst.put_i16_le(h);
    }
    resp.encode_payload(dst);
    finish(dst, start);
}

pub fn encode_error(dst: &mut BytesMut, header: Option<i16>, fields: &ErrorFields) {
    let start = begin(dst, TAG_ERROR);
    if let Some(h) = header {
        dst.put_i16_le(h);
    }
    fields.encode(dst);
    finish(dst, start);
}

/// `F`: `MSG_DATA_FLUSH`, never with a proxy header.
#[inline]
pub fn encode_flush(dst: &mut BytesMut) {
    dst.put_u8(TAG_FLUSH);
    dst.put_u32(8);
    dst.put_i32(MsgType::DATA_FLUSH.0);
}

#[inline]
pub fn encode_close(dst: &mut BytesMut) {
    dst.put_u8(TAG_CLOSE);
    dst.put_u32(4);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_encoders_match_the_typed_requests() {
        let b1 = Begin { isolation: 1, read_only: false, session_id: Bytes::from_static(b"s1\0") };
        let b2 = Begin { isolation: 2, read_only: true, session_id: Bytes::from_static(b"\0") };
        let mut want = BytesMut::new();
        let elems = vec![BeginElem { begin: b1.clone(), conn_id: 3 }, BeginElem { begin: b2.clone(), conn_id: 300 }];
        encode_command(&mut want, Some(-1), &Request::TxnBeginGetGxidMulti(elems));
        let mut got = BytesMut::new();
        encode_begin_multi(&mut got, Some(-1), [(&b1, 3), (&b2, 300)].into_iter());
        assert_eq!(got, want);

        for (t, req) in [
            (MsgType::TXN_COMMIT_MULTI, Request::TxnCommitMulti(vec![7, 8, 9])),
            (MsgType::TXN_ROLLBACK_MULTI, Request::TxnRollbackMulti(vec![7, 8, 9])),
            (MsgType::SNAPSHOT_GET_MULTI, Request::SnapshotGetMulti(vec![7, 8, 9])),
        ] {
            let mut want = BytesMut::new();
            encode_command(&mut want, Some(-1), &req);
            let mut got = BytesMut::new();
            encode_gxid_multi(&mut got, Some(-1), t, [7u32, 8, 9].into_iter());
            assert_eq!(got, want, "{t:?}");
        }
    }
}
