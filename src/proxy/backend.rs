//! One backend connection: its socket, buffers and protocol state.
//!
//! A backend (a coordinator or datanode process) talks strictly
//! request/answer. The proxy keeps at most one request of each backend
//! outstanding; further frames the backend pipelined stay in its read buffer
//! until the answer has been queued, which keeps every backend's answers in
//! order even though grouping reorders requests across backends.

use std::io;
use std::time::Instant;

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::batch::Route;
use crate::codec::frame::{self, RawFrame};
use crate::codec::{ErrorFields, FrameError, Request, StartupPacket};
use crate::netio::{self, ReadOutcome};

/// Size of a worker's shared read buffer.
pub const READ_CHUNK: usize = 64 * 1024;
/// Stop reading a busy backend once this much unprocessed input is buffered.
pub const READ_PAUSE: usize = 256 * 1024;

/// Where the backend is in its conversation with the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the startup packet (`A`).
    Startup,
    /// Startup answered; no request outstanding.
    Idle,
    /// One request outstanding upstream since `since`; frames the backend
    /// pipelined wait in its read buffer.
    Waiting { since: Instant },
}

/// The read side of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Open,
    /// Reading stopped because the read buffer is full: with edge-triggered
    /// readiness the worker must resume by itself once it drains.
    Paused,
    /// Closing: EOF, `X` (`clean`), or an error ended the input. Frames
    /// already buffered are still served; the connection closes once nothing
    /// is owed to it.
    Closed {
        clean: bool,
    },
}

/// Marks of the worker's per-round work lists, so a backend is queued at
/// most once in each.
#[derive(Debug, Default, Clone, Copy)]
pub struct Queued {
    pub process: bool,
    pub write: bool,
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
    sock: TcpStream,
    rbuf: BytesMut,
    /// Output not yet written to the socket.
    pub wbuf: BytesMut,
    state: State,
    input: Input,
    /// Identifier on the GTM link and generation of this holder of it.
    pub conn: i16,
    pub gen: u32,
    pub peer: Option<Peer>,
    pub queued: Queued,
    /// The interest registered with mio.
    interest: Interest,
}

impl Backend {
    /// A backend whose socket is registered with `Interest::READABLE`.
    pub fn new(sock: TcpStream, conn: i16, gen: u32) -> Self {
        Backend {
            sock,
            rbuf: BytesMut::with_capacity(512),
            wbuf: BytesMut::new(),
            state: State::Startup,
            input: Input::Open,
            conn,
            gen,
            peer: None,
            queued: Queued::default(),
            interest: Interest::READABLE,
        }
    }

    /// The peer's address, for access control and logs.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.sock.peer_addr().ok()
    }

    pub fn route(&self) -> Route {
        Route { conn: self.conn, gen: self.gen }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_waiting(&self) -> bool {
        matches!(self.state, State::Waiting { .. })
    }

    /// When the outstanding request was received.
    pub fn waiting_since(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { since } => Some(since),
            _ => None,
        }
    }

    /// The backend said goodbye with `X` (rather than vanishing).
    pub fn closed_cleanly(&self) -> bool {
        self.input == Input::Closed { clean: true }
    }

    /// Read until the socket would block, EOF, or the input cap. EOF and
    /// errors close the input (an error is returned for logging).
    pub fn read(&mut self, scratch: &mut [u8]) -> io::Result<()> {
        match netio::read_into(&mut self.sock, &mut self.rbuf, scratch, READ_PAUSE, true) {
            Ok(ReadOutcome::Drained) => {
                if self.input == Input::Paused {
                    self.input = Input::Open;
                }
                Ok(())
            }
            Ok(ReadOutcome::Full) => {
                if self.input == Input::Open {
                    self.input = Input::Paused;
                }
                Ok(())
            }
            Ok(ReadOutcome::Eof) => {
                self.close_input(false);
                Ok(())
            }
            Err(e) => {
                self.close_input(false);
                Err(e)
            }
        }
    }

    /// Reading was paused and the buffer has room again.
    pub fn should_resume_reading(&self) -> bool {
        self.input == Input::Paused && self.rbuf.len() < READ_PAUSE
    }

    /// The next whole frame, unless a request is outstanding (answers must
    /// go out in request order).
    pub fn next_frame(&mut self, max: usize) -> Result<Option<RawFrame>, FrameError> {
        if self.is_waiting() {
            return Ok(None);
        }
        frame::split(&mut self.rbuf, max)
    }

    /// Buffered frames wait to be processed.
    pub fn has_input(&self) -> bool {
        !self.is_waiting() && !self.rbuf.is_empty()
    }

    /// The startup packet arrived: answer it; requests may flow.
    pub fn started(&mut self, peer: Peer) {
        self.peer = Some(peer);
        self.state = State::Idle;
        crate::codec::startup::encode_ready(&mut self.wbuf, 0);
    }

    /// A request went upstream (or is held for the link).
    pub fn request_sent(&mut self, now: Instant) {
        self.state = State::Waiting { since: now };
    }

    /// The outstanding request was answered (or failed).
    pub fn answered(&mut self) {
        if self.is_waiting() {
            self.state = State::Idle;
        }
    }

    /// No more input will be taken (`clean`: the backend sent `X`).
    pub fn close_input(&mut self, clean: bool) {
        if !matches!(self.input, Input::Closed { clean: true }) {
            self.input = Input::Closed { clean };
        }
    }

    /// Give up on the input after a protocol error: send `E` with
    /// `severity`, drop what is buffered, and close once that is written.
    pub fn abort(&mut self, severity: &str, message: &str) {
        self.send_error(severity, message);
        self.close_input(false);
        self.rbuf.clear();
    }

    /// A write failed: nothing more can be sent.
    pub fn broken(&mut self) {
        self.wbuf.clear();
        self.close_input(false);
    }

    /// Closing, and nothing is owed to it any more: time to drop it.
    pub fn finished(&self) -> bool {
        matches!(self.input, Input::Closed { .. }) && !self.is_waiting() && self.wbuf.is_empty()
    }

    /// Closing and no answer outstanding (output may still be buffered).
    pub fn closing_idle(&self) -> bool {
        matches!(self.input, Input::Closed { .. }) && !self.is_waiting()
    }

    /// Write as much buffered output as the socket takes. Ok(true) when all
    /// of it went out.
    pub fn flush(&mut self) -> io::Result<bool> {
        netio::write_from(&mut self.sock, &mut self.wbuf)
    }

    /// The interest this backend needs: always readable, writable while
    /// output waits for room in the socket.
    pub fn wanted_interest(&self) -> Interest {
        if self.wbuf.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }

    /// Re-register with mio if the needed interest changed.
    pub fn update_interest(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let want = self.wanted_interest();
        if want != self.interest {
            self.interest = want;
            registry.reregister(&mut self.sock, token, want)?;
        }
        Ok(())
    }

    /// Register the socket for the first time.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.sock, token, self.interest)
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.sock);
    }

    pub fn send_error(&mut self, severity: &str, message: &str) {
        crate::codec::encode_error(&mut self.wbuf, None, &ErrorFields::new(severity, message));
    }
}
