//! Field-level readers and writers.
//!
//! The GTM protocol mixes byte orders field by field (network order for the
//! "put int" helpers, host order — little-endian on every XL deployment — for
//! raw memory copies), so every accessor names its byte order explicitly.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::DecodeError;

/// A bounds-checked cursor over one frame body. Slices it hands out share the
/// frame's allocation (no copy).
#[derive(Debug, Clone)]
pub struct Reader {
    buf: Bytes,
}

macro_rules! getter {
    ($name:ident, $ty:ty, $get:ident, $n:expr) => {
        #[inline]
        pub fn $name(&mut self) -> Result<$ty, DecodeError> {
            self.need($n)?;
            Ok(self.buf.$get())
        }
    };
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    #[inline]
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(DecodeError::Insufficient)
        } else {
            Ok(())
        }
    }

    /// One byte. Reading past the end gives the GTM's `pq_getmsgbyte` text, "no
    /// data left in message", rather than the one of the wider reads.
    #[inline]
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(DecodeError::Invalid("no data left in message"));
        }
        Ok(self.buf.get_u8())
    }
    getter!(i16be, i16, get_i16, 2);
    getter!(i16le, i16, get_i16_le, 2);
    getter!(i32be, i32, get_i32, 4);
    getter!(i32le, i32, get_i32_le, 4);
    getter!(u32be, u32, get_u32, 4);
    getter!(u32le, u32, get_u32_le, 4);
    getter!(i64le, i64, get_i64_le, 8);

    /// A C `bool`: one byte, non-zero is true.
    #[inline]
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        Ok(self.u8()? != 0)
    }

    /// Exactly `n` bytes, zero-copy.
    #[inline]
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// A byte string preceded by a big-endian length (`GTM_StrLen` or a signed
    /// `int`).
    pub fn str_u32be(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u32be()? as usize;
        self.bytes(n)
    }

    /// A negative length fails like a length past the end: `pq_getmsgbytes`
    /// reports both as "insufficient data left in message".
    pub fn str_i32be(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.i32be()?;
        if n < 0 {
            return Err(DecodeError::Insufficient);
        }
        self.bytes(n as usize)
    }

    /// A count followed by that many elements must fit in what is left; this
    /// rejects absurd counts before anything is allocated for them.
    pub fn count(&mut self, n: i32, elem_size: usize) -> Result<usize, DecodeError> {
        if n < 0 {
            return Err(DecodeError::Invalid("negative count"));
        }
        let n = n as usize;
        if n.saturating_mul(elem_size) > self.remaining() {
            return Err(DecodeError::Insufficient);
        }
        Ok(n)
    }

    pub fn u32le_vec(&mut self, n: usize) -> Result<Vec<u32>, DecodeError> {
        self.need(n.saturating_mul(4))?;
        Ok((0..n).map(|_| self.buf.get_u32_le()).collect())
    }

    pub fn i32le_vec(&mut self, n: usize) -> Result<Vec<i32>, DecodeError> {
        self.need(n.saturating_mul(4))?;
        Ok((0..n).map(|_| self.buf.get_i32_le()).collect())
    }

    /// The rest of the body, zero-copy.
    pub fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }

    /// Every field has been read: anything left over is a format error, as
    /// on the GTM.
    pub fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Invalid("invalid message format"))
        }
    }
}

/// Writers used by the encoders. Thin, but they keep the byte order visible at
/// every call site.
pub trait Put {
    fn u8_(&mut self, v: u8);
    fn bool_(&mut self, v: bool);
    fn i16be(&mut self, v: i16);
    fn i16le(&mut self, v: i16);
    fn i32be(&mut self, v: i32);
    fn i32le(&mut self, v: i32);
    fn u32be(&mut self, v: u32);
    fn u32le(&mut self, v: u32);
    fn i64le(&mut self, v: i64);
    fn raw(&mut self, b: &[u8]);
    fn str_u32be(&mut self, b: &[u8]);
    fn str_i32be(&mut self, b: &[u8]);
}

impl Put for BytesMut {
    #[inline]
    fn u8_(&mut self, v: u8) {
        self.put_u8(v)
    }
    #[inline]
    fn bool_(&mut self, v: bool) {
        self.put_u8(v as u8)
    }
    #[inline]
    fn i16be(&mut self, v: i16) {
        self.put_i16(v)
    }
    #[inline]
    fn i16le(&mut self, v: i16) {
        self.put_i16_le(v)
    }
    #[inline]
    fn i32be(&mut self, v: i32) {
        self.put_i32(v)
    }
    #[inline]
    fn i32le(&mut self, v: i32) {
        self.put_i32_le(v)
    }
    #[inline]
    fn u32be(&mut self, v: u32) {
        self.put_u32(v)
    }
    #[inline]
    fn u32le(&mut self, v: u32) {
        self.put_u32_le(v)
    }
    #[inline]
    fn i64le(&mut self, v: i64) {
        self.put_i64_le(v)
    }
    #[inline]
    fn raw(&mut self, b: &[u8]) {
        self.extend_from_slice(b)
    }
    #[inline]
    fn str_u32be(&mut self, b: &[u8]) {
        self.put_u32(b.len() as u32);
        self.extend_from_slice(b)
    }
    #[inline]
    fn str_i32be(&mut self, b: &[u8]) {
        self.put_i32(b.len() as i32);
        self.extend_from_slice(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Error texts are the GTM's (`pqformat.c`), which the proxy passes on.
    #[test]
    fn error_texts_match_pqformat() {
        let mut r = Reader::new(Bytes::new());
        assert_eq!(r.bool().unwrap_err().to_string(), "no data left in message");
        assert_eq!(r.u8().unwrap_err().to_string(), "no data left in message");
        assert_eq!(r.i32be().unwrap_err().to_string(), "insufficient data left in message");
        let mut r = Reader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xfe, 1, 2]));
        assert_eq!(r.str_i32be().unwrap_err().to_string(), "insufficient data left in message");
        let mut r = Reader::new(Bytes::from_static(&[0, 0, 0, 1, 7, 9]));
        assert_eq!(r.str_i32be().unwrap(), Bytes::from_static(&[7]));
        assert_eq!(r.end().unwrap_err().to_string(), "invalid message format");
    }
}
