//! A worker's link to the GTM: connection state machine, buffers, and the
//! FIFO of frames that owe an answer.
//!
//! States: `Down` (no socket; a retry timer decides when to try again) →
//! `Resolving` (host name lookup on the resolver thread, skipped for
//! literal addresses) → `Connecting` (non-blocking connect in progress) → `Starting` (startup
//! packet sent, waiting for `R`) → `Ready`. Any error returns to `Down`; the
//! owner decides what happens to the answers that were owed.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::batch::{Batcher, Pending, SyncError};
use crate::codec::frame;
use crate::codec::types::node_type;
use crate::codec::{DecodeError, FrameError, ServerFrame, StartupPacket};
use crate::netio::{self, Keepalive, ReadOutcome};

/// The GTM's frames are at most ~64 KiB; this bounds one read burst.
const UPSTREAM_READ_CAP: usize = 4 << 20;
/// Largest frame accepted from the GTM.
const MAX_UPSTREAM_FRAME: usize = frame::DEFAULT_MAX_FRAME * 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Down,
    /// The GTM host name is being looked up (off this thread).
    Resolving,
    Connecting,
    Starting,
    Ready,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot resolve GTM address {0}: {1}")]
    Resolve(String, io::Error),
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("GTM link I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("GTM closed the connection")]
    Eof,
    #[error("GTM refused the link: {0}")]
    Refused(String),
    /// A loopback connect to a port nobody listens on can meet itself (TCP
    /// simultaneous open when the kernel picks that very port as the source);
    /// held, it would keep a GTM restarting there from binding its port.
    #[error("connected to itself: nothing listens on {0}")]
    SelfConnect(SocketAddr),
    #[error("protocol error on the GTM link: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol error on the GTM link: {0}")]
    Decode(#[from] DecodeError),
    #[error("protocol error on the GTM link: expected the startup answer")]
    NotStartupAnswer,
    #[error("protocol error on the GTM link: answer received while none was owed")]
    Unsolicited,
    #[error("protocol error on the GTM link: {0}")]
    OutOfStep(#[from] SyncError),
    #[error("GTM silent for {0:?} while {1} answers are owed")]
    Silent(Duration, usize),
    #[error("no startup answer from the GTM within {0:?}")]
    StartupTimeout(Duration),
    /// Not a failure: `gtm_ctl reconnect` moved the link to another GTM.
    #[error("reconnect ordered")]
    ReconnectOrdered,
}

/// What the GTM sent, as far as the link is concerned.
#[derive(Debug)]
pub enum Incoming {
    /// The startup answer: the link is ready now. `same_client_id` is true
    /// when the GTM granted the client id this link had before.
    Ready { client_id: u32, same_client_id: bool },
    /// An answer to the oldest owed frame.
    Answer(ServerFrame),
}

pub struct Upstream {
    host: String,
    port: u16,
    state: LinkState,
    sock: Option<TcpStream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Client id the GTM gave this link; re-presented on reconnect.
    client_id: u32,
    /// Frames sent and not yet answered, oldest first.
    fifo: VecDeque<Pending>,
    /// When each frame of `fifo` was written (same order and length), for
    /// the round-trip figures.
    sent_at: VecDeque<Instant>,
    /// Last time bytes arrived from the GTM (or the link became ready).
    last_read: Instant,
    node_name: String,
    read_paused: bool,
    /// When the current connection attempt started.
    attempt_started: Instant,
    keepalive: Keepalive,
}

impl Upstream {
    pub fn new(host: String, port: u16, node_name: String, keepalive: Keepalive) -> Self {
        Upstream {
            host,
            port,
            state: LinkState::Down,
            sock: None,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(64 * 1024),
            client_id: 0,
            fifo: VecDeque::new(),
            sent_at: VecDeque::new(),
            last_read: Instant::now(),
            node_name,
            read_paused: false,
            attempt_started: Instant::now(),
            keepalive,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state == LinkState::Ready
    }

    pub fn is_down(&self) -> bool {
        self.state == LinkState::Down
    }

    pub fn addr_string(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_resolving(&self) -> bool {
        self.state == LinkState::Resolving
    }

    /// A connection attempt starts with a host name lookup elsewhere.
    pub fn start_resolving(&mut self, registry: &Registry) {
        self.close(registry);
        self.state = LinkState::Resolving;
        self.attempt_started = Instant::now();
    }

    /// Keepalive settings for the next connections (SIGHUP).
    pub fn set_keepalive(&mut self, k: Keepalive) {
        self.keepalive = k;
    }

    /// Use another GTM from the next connection attempt on.
    pub fn retarget(&mut self, host: String, port: u16) {
        self.host = host;
        self.port = port;
    }

    /// Answers owed by the GTM.
    pub fn owed(&self) -> usize {
        self.fifo.len()
    }

    /// The frames that owe an answer, oldest first.
    pub fn owed_frames(&self) -> impl Iterator<Item = &Pending> {
        self.fifo.iter()
    }

    /// The oldest frame that owes an answer, and when it was written.
    pub fn pop_owed(&mut self) -> Option<(Pending, Instant)> {
        let p = self.fifo.pop_front()?;
        Some((p, self.sent_at.pop_front().unwrap_or_else(Instant::now)))
    }

    /// Put back a frame taken with [`Upstream::pop_owed`].
    pub fn unpop_owed(&mut self, p: Pending, sent: Instant) {
        self.fifo.push_front(p);
        self.sent_at.push_front(sent);
    }

    /// Take every owed frame, oldest first (the link is gone; the owner
    /// decides which are sent again).
    pub fn take_owed(&mut self) -> Vec<Pending> {
        self.sent_at.clear();
        self.fifo.drain(..).collect()
    }

    /// Ready, owing answers, and nothing heard for longer than `limit`.
    pub fn silent_longer_than(&self, now: Instant, limit: Duration) -> bool {
        self.is_ready() && !self.fifo.is_empty() && now.duration_since(self.last_read) > limit
    }

    /// A connection attempt has been under way for longer than `limit`.
    pub fn attempt_longer_than(&self, now: Instant, limit: Duration) -> bool {
        matches!(self.state, LinkState::Resolving | LinkState::Connecting | LinkState::Starting)
            && now.duration_since(self.attempt_started) > limit
    }
    /// Start a non-blocking connect to `addr` (the GTM host, resolved). The
    /// startup packet is queued at once; it goes out when the socket
    /// becomes writable.
    pub fn connect(&mut self, registry: &Registry, token: Token, addr: SocketAddr) -> Result<(), LinkError> {
        let started = if self.state == LinkState::Resolving { self.attempt_started } else { Instant::now() };
        self.close(registry);
        let mut sock = TcpStream::connect(addr).map_err(|e| LinkError::Connect(addr, e))?;
        registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        let _ = sock.set_nodelay(true);
        netio::set_keepalive(&sock, self.keepalive);
        self.sock = Some(sock);
        self.state = LinkState::Connecting;
        self.attempt_started = started;
        self.rbuf.clear();
        self.wbuf.clear();
        StartupPacket::new(&self.node_name, node_type::GTM_PROXY, false, self.client_id).encode(&mut self.wbuf);
        Ok(())
    }

    /// Close the socket (if any) and go `Down`. Owed answers stay in `fifo`
    /// for the owner to deal with.
    pub fn close(&mut self, registry: &Registry) {
        if let Some(mut s) = self.sock.take() {
            let _ = registry.deregister(&mut s);
        }
        self.state = LinkState::Down;
        self.rbuf.clear();
        self.wbuf.clear();
    }

    /// Writable event while connecting: the connect finished (or failed).
    pub fn on_writable(&mut self) -> Result<(), LinkError> {
        if self.state == LinkState::Connecting {
            let Some(sock) = self.sock.as_ref() else { return Ok(()) };
            if let Some(e) = sock.take_error()? {
                return Err(LinkError::Io(e));
            }
            match sock.peer_addr() {
                Ok(peer) if sock.local_addr().is_ok_and(|local| local == peer) => {
                    return Err(LinkError::SelfConnect(peer))
                }
                Ok(_) => self.state = LinkState::Starting,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(LinkError::Io(e)),
            }
        }
        self.flush()
    }

    /// Push buffered output.
    pub fn flush(&mut self) -> Result<(), LinkError> {
        if self.state == LinkState::Connecting {
            return Ok(());
        }
        if let Some(sock) = self.sock.as_mut() {
            netio::write_from(sock, &mut self.wbuf)?;
        }
        Ok(())
    }

    /// Read what the GTM sent into `rbuf`.
    pub fn read(&mut self, scratch: &mut [u8]) -> Result<(), LinkError> {
        let Some(sock) = self.sock.as_mut() else { return Ok(()) };
        if self.state == LinkState::Connecting {
            return Ok(());
        }
        let before = self.rbuf.len();
        // Read at least as far as the frame at the front needs: a frame
        // larger than the cap (up to the frame limit) must be able to
        // complete, or the worker would come back for ever to a full buffer.
        let cap = UPSTREAM_READ_CAP.max(frame::wanted(&self.rbuf, MAX_UPSTREAM_FRAME));
        let outcome = netio::read_into(sock, &mut self.rbuf, scratch, cap, true)?;
        self.read_paused = outcome == ReadOutcome::Full;
        if self.rbuf.len() > before {
            self.last_read = Instant::now();
        }
        match outcome {
            ReadOutcome::Eof => Err(LinkError::Eof),
            ReadOutcome::Drained | ReadOutcome::Full => Ok(()),
        }
    }

    /// Write everything `batch` collected, then push it out.
    pub fn send_batch(&mut self, batch: &mut Batcher, max: usize) -> Result<(), LinkError> {
        let n = batch.flush(max, &mut self.wbuf, &mut self.fifo);
        if n > 0 {
            let now = Instant::now();
            self.sent_at.extend(std::iter::repeat_n(now, n));
            if self.fifo.len() == n {
                // Nothing was owed before: the silence clock starts now.
                self.last_read = now;
            }
        }
        self.flush()
    }

    /// Queue the goodbye (`X`) and push out what is buffered, best effort.
    pub fn say_goodbye(&mut self) {
        crate::codec::encode_close(&mut self.wbuf);
        let _ = self.flush();
    }

    /// The next whole frame from the GTM, if one is buffered. While
    /// starting, the startup answer makes the link ready; a refusal or any
    /// other frame is an error.
    pub fn next_frame(&mut self) -> Result<Option<Incoming>, LinkError> {
        let Some(raw) = frame::split(&mut self.rbuf, MAX_UPSTREAM_FRAME)? else { return Ok(None) };
        let f = ServerFrame::decode(raw, self.state == LinkState::Ready)?;
        if self.state != LinkState::Starting {
            return Ok(Some(Incoming::Answer(f)));
        }
        match f {
            ServerFrame::Ready { client_id } => {
                let same_client_id = self.client_id != 0 && self.client_id == client_id;
                self.client_id = client_id;
                self.state = LinkState::Ready;
                self.last_read = Instant::now();
                Ok(Some(Incoming::Ready { client_id, same_client_id }))
            }
            ServerFrame::Error { fields, .. } => Err(LinkError::Refused(fields.message())),
            _ => Err(LinkError::NotStartupAnswer),
        }
    }

    /// True when a read stopped at the cap and data may still be waiting.
    pub fn read_paused(&self) -> bool {
        self.read_paused
    }
}
