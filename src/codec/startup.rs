//! The startup packet (`A`) and the server's answer (`R`).

use bytes::{BufMut, BytesMut};

use super::frame::{self, TAG_READY, TAG_STARTUP};
use super::types::{SP_NODE_NAME, STARTUP_BODY_LEN};
use super::DecodeError;

/// `GTM_StartupPacket`, 76 bytes copied raw (little-endian integers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupPacket {
    /// The 64-byte name field as sent (NUL-padded; a 64-character name has no NUL).
    pub node_name: [u8; SP_NODE_NAME],
    pub remote_type: i32,
    pub is_postmaster: bool,
    /// 0 asks the GTM for a fresh id; a proxy worker re-presents its old id.
    pub client_id: u32,
}

impl StartupPacket {
    pub fn new(name: &str, remote_type: i32, is_postmaster: bool, client_id: u32) -> Self {
        let mut node_name = [0u8; SP_NODE_NAME];
        let n = name.len().min(SP_NODE_NAME);
        node_name[..n].copy_from_slice(&name.as_bytes()[..n]);
        StartupPacket { node_name, remote_type, is_postmaster, client_id }
    }

    /// The node name up to its first NUL.
    pub fn name(&self) -> &[u8] {
        let end = self.node_name.iter().position(|&b| b == 0).unwrap_or(SP_NODE_NAME);
        &self.node_name[..end]
    }

    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(self.name()).into_owned()
    }

    /// Decode the body of an `A` frame. A body of the wrong size is rejected
    /// with the same texts the GTM uses.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() < STARTUP_BODY_LEN {
            return Err(DecodeError::Insufficient);
        }
        if body.len() > STARTUP_BODY_LEN {
            return Err(DecodeError::Invalid("invalid message format"));
        }
        let mut node_name = [0u8; SP_NODE_NAME];
        node_name.copy_from_slice(&body[..SP_NODE_NAME]);
        let le = |o: usize| [body[o], body[o + 1], body[o + 2], body[o + 3]];
        Ok(StartupPacket {
            node_name,
            remote_type: i32::from_le_bytes(le(64)),
            is_postmaster: body[68] != 0,
            client_id: u32::from_le_bytes(le(72)),
        })
    }

    /// Append the whole `A` frame.
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = frame::begin(dst, TAG_STARTUP);
        dst.extend_from_slice(&self.node_name);
        dst.put_i32_le(self.remote_type);
        dst.put_u8(self.is_postmaster as u8);
        dst.put_bytes(0, 3);
        dst.put_u32_le(self.client_id);
        frame::finish(dst, start);
    }
}

/// Append the server's `R` answer carrying `client_id` (big-endian).
pub fn encode_ready(dst: &mut BytesMut, client_id: u32) {
    dst.put_u8(TAG_READY);
    dst.put_u32(8);
    dst.put_u32(client_id);
}

/// Decode the body of an `R` frame.
pub fn decode_ready(body: &[u8]) -> Result<u32, DecodeError> {
    if body.len() != 4 {
        return Err(DecodeError::Invalid("invalid startup answer length"));
    }
    Ok(u32::from_be_bytes([body[0], body[1], body[2], body[3]]))
}
