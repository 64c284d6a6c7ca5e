//! Frame splitting: `tag u8`, `length u32be` (counting itself and the body),
//! body. Two phases, as for any length-prefixed protocol: [`check`] looks at
//! the header only and says how many bytes the next frame takes (or that more
//! are needed, or that the stream is broken); [`split`] then cuts the frame off
//! the buffer without copying its body.

use bytes::{BufMut, Bytes, BytesMut};

use super::FrameError;

pub const TAG_STARTUP: u8 = b'A';
pub const TAG_COMMAND: u8 = b'C';
pub const TAG_FLUSH: u8 = b'F';
pub const TAG_CLOSE: u8 = b'X';
pub const TAG_READY: u8 = b'R';
pub const TAG_RESULT: u8 = b'S';
pub const TAG_ERROR: u8 = b'E';
pub const TAG_NOTICE: u8 = b'N';

/// Bytes before the body: tag + length.
pub const HEADER_LEN: usize = 5;
/// Default cap on a frame's length field. A snapshot of 16384 xids is about
/// 64 KiB; nothing legitimate comes near 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// One frame as it came off the wire: its tag and its body (shared, no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub tag: u8,
    pub body: Bytes,
}

impl RawFrame {
    /// Bytes the frame occupies on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.wire_len());
        dst.put_u8(self.tag);
        dst.put_u32(self.body.len() as u32 + 4);
        dst.extend_from_slice(&self.body);
    }
}

fn known_tag(tag: u8) -> bool {
    matches!(tag, TAG_STARTUP | TAG_COMMAND | TAG_FLUSH | TAG_CLOSE | TAG_READY | TAG_RESULT | TAG_ERROR | TAG_NOTICE)
}

/// Phase one: the total size of the frame at the start of `buf`.
pub fn check(buf: &[u8], max_len: usize) -> Result<usize, FrameError> {
    let Some(&tag) = buf.first() else {
        return Err(FrameError::Incomplete);
    };
    if !known_tag(tag) {
        return Err(FrameError::UnknownTag(tag));
    }
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Incomplete);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(FrameError::LengthTooShort(len));
    }
    if len > max_len {
        return Err(FrameError::TooLong { len, max: max_len });
    }
    let total = 1 + len;
    if buf.len() < total {
        return Err(FrameError::Incomplete);
    }
    Ok(total)
}

/// How many bytes `buf` must hold for its first frame to be whole: the
/// header's size while the header is incomplete, the frame's total size once
/// it is known, 0 when the header is invalid (the next [`split`] reports why).
/// A reader that stops at a fixed cap must read at least this far, or a
/// frame larger than the cap could never complete.
pub fn wanted(buf: &[u8], max_len: usize) -> usize {
    if buf.len() < HEADER_LEN {
        return HEADER_LEN;
    }
    match check(buf, max_len) {
        Ok(total) => total,
        Err(FrameError::Incomplete) => 1 + u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize,
        Err(_) => 0,
    }
}

/// Phase two: cut the next whole frame off `buf`. `Ok(None)` means wait for
/// more bytes; an error means the stream cannot be resynchronised.
pub fn split(buf: &mut BytesMut, max_len: usize) -> Result<Option<RawFrame>, FrameError> {
    match check(buf, max_len) {
        Ok(total) => {
            let mut frame = buf.split_to(total).freeze();
            let tag = frame[0];
            let body = frame.split_off(HEADER_LEN);
            Ok(Some(RawFrame { tag, body }))
        }
        Err(FrameError::Incomplete) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Start a frame in `dst`: writes the tag and a placeholder length. Returns
/// the offset to hand to [`finish`] once the body is written.
#[inline]
pub fn begin(dst: &mut BytesMut, tag: u8) -> usize {
    let start = dst.len();
    dst.put_u8(tag);
    dst.put_u32(0);
    start
}

/// Fill in the length of the frame started at `start`.
#[inline]
pub fn finish(dst: &mut BytesMut, start: usize) {
    let len = (dst.len() - start - 1) as u32;
    dst[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}
