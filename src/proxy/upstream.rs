//! A worker's link to the GTM: connection state machine, buffers, and the
//! FIFO of frames that owe an answer.
//!
//! States: `Down` (no socket; a retry timer decides when to try again) →
//! `Connecting` (non-blocking connect in progress) → `Starting` (startup
//! packet sent, waiting for `R`) → `Ready`. Any error returns to `Down`; the
//! owner decides what happens to the answers that were owed.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Instant;

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::batch::Pending;
use crate::codec::types::node_type;
use crate::codec::StartupPacket;
use crate::netio::{self, Keepalive, ReadOutcome};

/// The GTM's frames are at most ~64 KiB; this bounds one read burst.
const UPSTREAM_READ_CAP: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Down,
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
    #[error("protocol error on the GTM link: {0}")]
    Protocol(String),
    #[error("GTM silent for {0:?} while {1} answers are owed")]
    Silent(std::time::Duration, usize),
    #[error("no startup answer from the GTM within {0:?}")]
    StartupTimeout(std::time::Duration),
}

pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub state: LinkState,
    sock: Option<TcpStream>,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    /// Client id the GTM gave this link; re-presented on reconnect.
    pub client_id: u32,
    /// Frames sent and not yet answered, oldest first.
    pub fifo: VecDeque<Pending>,
    /// Last time bytes arrived from the GTM (or the link became ready).
    pub last_read: Instant,
    pub node_name: String,
    read_paused: bool,
    /// When the current connection attempt started.
    pub attempt_started: Instant,
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

    pub fn addr_string(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Start a non-blocking connect. The startup packet is queued at once;
    /// it goes out when the socket becomes writable.
    pub fn connect(&mut self, registry: &Registry, token: Token) -> Result<(), LinkError> {
        self.close(registry);
        let target = self.addr_string();
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| LinkError::Resolve(target.clone(), e))?
            .next()
            .ok_or_else(|| LinkError::Resolve(target, io::Error::other("no address")))?;
        let mut sock = TcpStream::connect(addr).map_err(|e| LinkError::Connect(addr, e))?;
        registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        let _ = sock.set_nodelay(true);
        netio::set_keepalive(&sock, self.keepalive);
        self.sock = Some(sock);
        self.state = LinkState::Connecting;
        self.attempt_started = Instant::now();
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
        let outcome = netio::read_into(sock, &mut self.rbuf, scratch, UPSTREAM_READ_CAP, true)?;
        self.read_paused = outcome == ReadOutcome::Full;
        if self.rbuf.len() > before {
            self.last_read = Instant::now();
        }
        match outcome {
            ReadOutcome::Eof => Err(LinkError::Eof),
            ReadOutcome::Drained | ReadOutcome::Full => Ok(()),
        }
    }

    /// True when a read stopped at the cap and data may still be waiting.
    pub fn read_paused(&self) -> bool {
        self.read_paused
    }
}
