//! One backend connection: its socket, buffers and protocol state.
//!
//! A backend (a coordinator or datanode process) talks strictly
//! request/answer. The proxy keeps at most one request of each backend
//! outstanding; further frames the backend pipelined stay in its read buffer
//! until the answer has been queued, which keeps every backend's answers in
//! order even though grouping reorders requests across backends.

use std::io;

use bytes::BytesMut;
use mio::net::TcpStream;

use crate::codec::{ErrorFields, Request, StartupPacket};
use crate::netio::{self, ReadOutcome};

/// Size of a worker's shared read buffer.
pub const READ_CHUNK: usize = 64 * 1024;
/// Stop reading a busy backend once this much unprocessed input is buffered.
pub const READ_PAUSE: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the `A` frame.
    Startup,
    /// Startup answered; requests flow.
    Ready,
}

/// Who the backend said it is in its startup packet.
#[derive(Debug, Clone)]
pub struct Peer {
    pub name: bytes::Bytes,
    pub remote_type: i32,
    pub is_postmaster: bool,
}

impl Peer {
    pub fn from_startup(sp: &StartupPacket) -> Self {
        Peer {
            name: bytes::Bytes::copy_from_slice(sp.name()),
            remote_type: sp.remote_type,
            is_postmaster: sp.is_postmaster,
        }
    }

    /// The `MSG_BACKEND_DISCONNECT` the GTM expects when this backend leaves.
    pub fn disconnect_request(&self) -> Request {
        Request::BackendDisconnect {
            is_postmaster: self.is_postmaster,
            node: self.is_postmaster.then(|| (self.remote_type, self.name.clone())),
        }
    }
}

pub struct Backend {
    pub sock: TcpStream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub phase: Phase,
    pub conn: i16,
    pub gen: u32,
    pub peer: Option<Peer>,
    /// A request is outstanding upstream.
    pub busy: bool,
    /// EOF or `X` seen: close once nothing is owed.
    pub closing: bool,
    /// The backend said goodbye with `X` (rather than vanishing).
    pub clean_close: bool,
    /// When the outstanding request was received.
    pub since: std::time::Instant,
    /// Reading stopped because `rbuf` is full; resume when it drains.
    pub read_paused: bool,
    /// Queued in the worker's to-process list this round.
    pub queued: bool,
    /// Queued in the worker's to-write list this round.
    pub write_queued: bool,
    /// Registered for writable events (output is waiting for room).
    pub want_write: bool,
}

impl Backend {
    pub fn new(sock: TcpStream, conn: i16, gen: u32) -> Self {
        Backend {
            sock,
            rbuf: BytesMut::with_capacity(512),
            wbuf: BytesMut::new(),
            phase: Phase::Startup,
            conn,
            gen,
            peer: None,
            busy: false,
            closing: false,
            clean_close: false,
            since: std::time::Instant::now(),
            read_paused: false,
            queued: false,
            write_queued: false,
            want_write: false,
        }
    }

    /// Read until the socket would block, EOF, or the input cap.
    pub fn read(&mut self, scratch: &mut [u8]) -> io::Result<ReadOutcome> {
        let outcome = netio::read_into(&mut self.sock, &mut self.rbuf, scratch, READ_PAUSE, true)?;
        self.read_paused = outcome == ReadOutcome::Full;
        Ok(outcome)
    }

    /// Write as much buffered output as the socket takes. Ok(true) when all
    /// of it went out.
    pub fn flush(&mut self) -> io::Result<bool> {
        netio::write_from(&mut self.sock, &mut self.wbuf)
    }

    pub fn send_error(&mut self, severity: &str, message: &str) {
        crate::codec::encode_error(&mut self.wbuf, None, &ErrorFields::new(severity, message));
    }
}
