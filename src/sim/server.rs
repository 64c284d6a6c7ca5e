//! The simulator's network side: one mio loop, one thread, a slab of links.
//!
//! Each loop iteration:
//! 1. poll;
//! 2. accept new links (each takes a client id at once, as on the GTM) and read
//!    everything readable;
//! 3. run every complete frame through the state machine, appending answers to
//!    the links' output buffers;
//! 4. with `--persist`, if anything durable changed, write the state file
//!    (group commit) — before any answer of this iteration leaves;
//! 5. write output, then close links that are done.
//!
//! Output follows the GTM's socket buffering. On a proxy link (startup remote
//! type 1) results collect in an emulated 8 KiB send buffer and go out only when
//! an `F` frame arrives, the buffer overflows, or an `E` / REPORT_XMIN result
//! forces a flush. On other links every answer is flushed at once. Unflushed
//! output is discarded when a link closes, as the GTM's thread does.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use thiserror::Error;

use super::persist::{self, PersistError};
use super::state::Gtm;
use super::{LinkCtx, Outcome};
use crate::codec::frame::{TAG_CLOSE, TAG_COMMAND, TAG_FLUSH, TAG_STARTUP};
use crate::codec::types::MsgType;
use crate::codec::{encode_error, encode_result, startup, ErrorFields, StartupPacket};
use crate::netio::{self, ReadOutcome};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// The GTM's per-connection send buffer (`PQ_BUFFER_SIZE`).
const SEND_BUFFER: usize = 8192;
/// `MaxAllocSize`: the GTM cannot hold a bigger message.
const MAX_FRAME_LEN: usize = 0x3fff_ffff;
const READ_CHUNK: usize = 16 * 1024;
/// Bytes read from one link per loop iteration, so one busy link cannot starve
/// the others; the rest is read in the next iteration.
const READ_PER_TURN: usize = 1 << 20;
const LISTEN_BACKLOG: i32 = 4096;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("could not {action}: {source}")]
    Io { action: &'static str, source: io::Error },
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error("a request would abort the real GTM: {0}")]
    WouldCrash(String),
}

fn io_err(action: &'static str) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { action, source }
}

/// Stops a running [`Server`] from another thread (e.g. a signal handler thread).
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            log::error!("could not wake the event loop: {e}");
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the `A` frame.
    Startup,
    Ready(LinkCtx),
    /// Done: write what was flushed, then close.
    Closing,
}

struct Conn {
    stream: TcpStream,
    link_id: i64,
    /// Client id taken at accept time (the startup may replace it).
    assigned_id: u32,
    phase: Phase,
    input: BytesMut,
    /// Flushed output, waiting for the socket.
    out: BytesMut,
    /// Output still in the emulated GTM send buffer (proxy links).
    unflushed: BytesMut,
    /// Peer closed or the socket failed.
    eof: bool,
    /// Reading stopped at the per-iteration budget with data still waiting.
    more_input: bool,
    writable_interest: bool,
}

impl Conn {
    fn is_proxy(&self) -> bool {
        matches!(&self.phase, Phase::Ready(l) if l.is_proxy())
    }

    /// `pq_putbytes`: fill the 8 KiB send buffer, sending it whenever it is full
    /// and more bytes come.
    fn put(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.unflushed.len() >= SEND_BUFFER {
                self.flush();
            }
            let n = (SEND_BUFFER - self.unflushed.len()).min(data.len());
            self.unflushed.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
    }

    /// `pq_flush`.
    fn flush(&mut self) {
        if !self.unflushed.is_empty() {
            let b = self.unflushed.split();
            self.out.extend_from_slice(&b);
        }
    }

    fn header(&self) -> Option<i16> {
        match &self.phase {
            Phase::Ready(l) if l.is_proxy() => Some(l.conn_id),
            _ => None,
        }
    }

    /// `E` frame: always flushed at once.
    fn send_error(&mut self, severity: &str, msg: &str) {
        self.send_fields(&ErrorFields::new(severity, msg));
    }

    fn send_fields(&mut self, fields: &ErrorFields) {
        let mut b = BytesMut::new();
        encode_error(&mut b, self.header(), fields);
        self.put(&b);
        self.flush();
    }

    fn close(&mut self) {
        self.unflushed.clear();
        self.phase = Phase::Closing;
    }
}

/// The simulator's server.
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    waker: Arc<Waker>,
    shutdown: Arc<AtomicBool>,
    conns: Slab<Conn>,
    gtm: Gtm,
    persist_dir: Option<PathBuf>,
    next_link_id: i64,
    accept_blocked: bool,
}

impl Server {
    /// Listen on `addr` (port 0: any free port). With `persist_dir`, state changes
    /// are written there before answers go out.
    pub fn bind(addr: SocketAddr, gtm: Gtm, persist_dir: Option<PathBuf>) -> Result<Server, ServerError> {
        let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
            .map_err(io_err("create the listen socket"))?;
        sock.set_reuse_address(true).map_err(io_err("set SO_REUSEADDR"))?;
        sock.bind(&addr.into()).map_err(io_err("bind the listen address"))?;
        sock.listen(LISTEN_BACKLOG).map_err(io_err("listen"))?;
        sock.set_nonblocking(true).map_err(io_err("set the listen socket non-blocking"))?;
        let mut listener = TcpListener::from_std(sock.into());
        let poll = Poll::new().map_err(io_err("create the poll instance"))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(io_err("register the listen socket"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_err("create the waker"))?);
        Ok(Server {
            poll,
            listener,
            waker,
            shutdown: Arc::new(AtomicBool::new(false)),
            conns: Slab::new(),
            gtm,
            persist_dir,
            next_link_id: 1,
            accept_blocked: false,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener.local_addr().map_err(io_err("read the listen address"))
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { flag: self.shutdown.clone(), waker: self.waker.clone() }
    }

    pub fn gtm(&self) -> &Gtm {
        &self.gtm
    }

    /// Serve until shut down (`Ok`) or until a request would have crashed the
    /// real GTM (`Err(WouldCrash)`).
    pub fn run(&mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        let mut touched: Vec<usize> = Vec::new();
        let mut carry: Vec<usize> = Vec::new();
        loop {
            let timeout = if !carry.is_empty() {
                Some(Duration::ZERO)
            } else {
                self.accept_blocked.then(|| Duration::from_millis(100))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io_err("poll")(e));
            }
            if self.shutdown.load(Ordering::SeqCst) {
                log::info!("shutting down");
                return Ok(());
            }
            touched.clear();
            for key in carry.drain(..) {
                if let Some(c) = self.conns.get_mut(key) {
                    read_all(c);
                    touched.push(key);
                }
            }
            if self.accept_blocked {
                self.accept(&mut touched);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(&mut touched),
                    WAKER => {}
                    Token(t) => {
                        let key = t - FIRST_CONN;
                        if let Some(c) = self.conns.get_mut(key) {
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                read_all(c);
                            }
                            touched.push(key);
                        }
                    }
                }
            }
            touched.sort_unstable();
            touched.dedup();
            for &key in &touched {
                if let Err(e) = self.process(key) {
                    // What the real GTM had flushed before dying was already sent.
                    self.write_everything();
                    return Err(e);
                }
            }
            if self.gtm.take_dirty() {
                if let Some(dir) = &self.persist_dir {
                    persist::save(&self.gtm, dir)?;
                }
            }
            for &key in &touched {
                if self.conns.get(key).is_some_and(|c| c.more_input) {
                    carry.push(key);
                }
                self.write_and_reap(key);
            }
            // A failed write closes its link, which aborts transactions: make that
            // durable now rather than at some later iteration.
            if self.gtm.take_dirty() {
                if let Some(dir) = &self.persist_dir {
                    persist::save(&self.gtm, dir)?;
                }
            }
        }
    }

    fn accept(&mut self, touched: &mut Vec<usize>) {
        self.accept_blocked = false;
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        log::debug!("TCP_NODELAY on a link from {peer}: {e}");
                    }
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    let reg = self.poll.registry().register(&mut stream, Token(key + FIRST_CONN), Interest::READABLE);
                    if let Err(e) = reg {
                        log::error!("could not register a link from {peer}: {e}");
                        continue;
                    }
                    let link_id = self.next_link_id;
                    self.next_link_id += 1;
                    let assigned_id = self.gtm.accept();
                    log::debug!("link {link_id} from {peer}, client id {assigned_id}");
                    entry.insert(Conn {
                        stream,
                        link_id,
                        assigned_id,
                        phase: Phase::Startup,
                        input: BytesMut::new(),
                        out: BytesMut::new(),
                        unflushed: BytesMut::new(),
                        eof: false,
                        more_input: false,
                        writable_interest: false,
                    });
                    // Data may already be there (edge-triggered registration).
                    if let Some(c) = self.conns.get_mut(key) {
                        read_all(c);
                    }
                    touched.push(key);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Typically out of file descriptors: retry shortly.
                    log::error!("accept failed: {e}");
                    self.accept_blocked = true;
                    return;
                }
            }
        }
    }

    /// Run every complete frame of one link through the GTM.
    fn process(&mut self, key: usize) -> Result<(), ServerError> {
        let Some(c) = self.conns.get_mut(key) else { return Ok(()) };
        loop {
            match &c.phase {
                Phase::Closing => break,
                Phase::Startup => {
                    if !startup_step(&self.gtm, c) {
                        break;
                    }
                }
                Phase::Ready(_) => match ready_step(&mut self.gtm, c)? {
                    true => continue,
                    false => break,
                },
            }
        }
        if c.eof && !matches!(c.phase, Phase::Closing) {
            if let Phase::Ready(link) = &c.phase {
                log::debug!("link {} (client {}) closed by peer", link.link_id, link.client_id);
                self.gtm.link_closed(link);
            }
            c.close();
        }
        Ok(())
    }

    /// Best-effort write of every link's flushed output (before exiting).
    fn write_everything(&mut self) {
        for (_, c) in self.conns.iter_mut() {
            let _ = netio::write_from(&mut c.stream, &mut c.out);
        }
    }

    fn write_and_reap(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if let Err(e) = netio::write_from(&mut c.stream, &mut c.out) {
            log::debug!("link {}: write failed: {e}", c.link_id);
            c.out.clear();
            c.eof = true;
        }
        if c.eof && !matches!(c.phase, Phase::Closing) {
            if let Phase::Ready(link) = &c.phase {
                self.gtm.link_closed(link);
            }
            c.close();
        }
        let want_write = !c.out.is_empty();
        if matches!(c.phase, Phase::Closing) && !want_write {
            let mut c = self.conns.remove(key);
            if let Err(e) = self.poll.registry().deregister(&mut c.stream) {
                log::debug!("deregister link {}: {e}", c.link_id);
            }
            return;
        }
        if want_write != c.writable_interest {
            let interest = if want_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if let Err(e) = self.poll.registry().reregister(&mut c.stream, Token(key + FIRST_CONN), interest) {
                log::error!("link {}: reregister failed: {e}", c.link_id);
            }
            c.writable_interest = want_write;
        }
    }
}

/// Read until the socket would block (or the per-iteration budget is spent).
fn read_all(c: &mut Conn) {
    if c.eof || matches!(c.phase, Phase::Closing) {
        return;
    }
    let mut buf = [0u8; READ_CHUNK];
    let cap = c.input.len() + READ_PER_TURN;
    c.more_input = false;
    match netio::read_into(&mut c.stream, &mut c.input, &mut buf, cap, false) {
        Ok(ReadOutcome::Drained) => {}
        Ok(ReadOutcome::Full) => c.more_input = true,
        Ok(ReadOutcome::Eof) => c.eof = true,
        Err(e) => {
            log::debug!("link {}: read failed: {e}", c.link_id);
            c.eof = true;
        }
    }
}

fn frame_len(input: &[u8]) -> Option<usize> {
    (input.len() >= 5).then(|| u32::from_be_bytes([input[1], input[2], input[3], input[4]]) as usize)
}

/// The startup packet; false when more bytes are needed or the link is done.
fn startup_step(gtm: &Gtm, c: &mut Conn) -> bool {
    let Some(&tag) = c.input.first() else { return false };
    if tag != TAG_STARTUP {
        let msg = format!("Expecting a startup message, but received {}", char::from(tag));
        c.send_error("FATAL", &msg);
        c.close();
        return false;
    }
    let Some(len) = frame_len(&c.input) else { return false };
    if !(4..=MAX_FRAME_LEN).contains(&len) {
        c.send_error("FATAL", "Expecting coordinator ID, but received EOF");
        c.close();
        return false;
    }
    if c.input.len() < 1 + len {
        return false;
    }
    let frame = c.input.split_to(1 + len);
    let body = &frame[5..];
    let sp = match StartupPacket::decode(body) {
        Ok(sp) => sp,
        Err(e) => {
            c.send_error("FATAL", &e.to_string());
            c.close();
            return false;
        }
    };
    let client_id = gtm.startup(c.assigned_id, &sp);
    log::debug!(
        "link {}: startup node \"{}\" type {} postmaster {} client id {}",
        c.link_id,
        sp.name_lossy(),
        sp.remote_type,
        sp.is_postmaster,
        client_id
    );
    let mut b = BytesMut::new();
    startup::encode_ready(&mut b, client_id);
    c.put(&b);
    c.flush();
    c.phase = Phase::Ready(LinkCtx {
        link_id: c.link_id,
        client_id,
        remote_type: sp.remote_type,
        is_postmaster: sp.is_postmaster,
        node_name: sp.name().to_vec(),
        conn_id: -1,
    });
    true
}

/// One frame on an established link; false when more bytes are needed or the
/// link is done.
fn ready_step(gtm: &mut Gtm, c: &mut Conn) -> Result<bool, ServerError> {
    let Some(&tag) = c.input.first() else { return Ok(false) };
    if tag != TAG_COMMAND && tag != TAG_CLOSE && tag != TAG_FLUSH {
        // Only the type byte is consumed: the rest is read as new frames.
        c.input.advance(1);
        c.send_error("ERROR", &format!("invalid frontend message type {tag}"));
        return Ok(true);
    }
    let Some(len) = frame_len(&c.input) else { return Ok(false) };
    if !(4..=MAX_FRAME_LEN).contains(&len) {
        log::info!("link {}: invalid message length {len}, closing", c.link_id);
        c.eof = true;
        c.input.clear();
        return Ok(false);
    }
    if c.input.len() < 1 + len {
        return Ok(false);
    }
    let frame = c.input.split_to(1 + len).freeze();
    let mut body = frame.slice(5..);
    match tag {
        TAG_CLOSE => {
            if let Phase::Ready(link) = &c.phase {
                log::debug!("link {} (client {}) sent X", link.link_id, link.client_id);
                gtm.link_closed(link);
            }
            c.close();
            Ok(false)
        }
        TAG_FLUSH => {
            if body.len() < 4 {
                c.send_error("ERROR", "insufficient data left in message");
            } else if body.len() > 4 {
                c.send_error("ERROR", "invalid message format");
            } else {
                c.flush();
            }
            Ok(true)
        }
        _ => {
            let proxy = c.is_proxy();
            if proxy {
                if body.len() < 2 {
                    c.send_error("ERROR", "insufficient data left in message");
                    return Ok(true);
                }
                let h = i16::from_le_bytes([body[0], body[1]]);
                if let Phase::Ready(link) = &mut c.phase {
                    link.conn_id = h;
                }
                body.advance(2);
            }
            if body.len() < 4 {
                c.send_error("ERROR", "insufficient data left in message");
                return Ok(true);
            }
            let msg_type = MsgType(body.get_i32());
            let Phase::Ready(link) = &c.phase else { return Ok(false) };
            let outcome = gtm.handle_command(link, msg_type, body);
            apply(c, outcome, proxy)
        }
    }
}

fn apply(c: &mut Conn, outcome: Outcome, proxy: bool) -> Result<bool, ServerError> {
    match outcome {
        Outcome::Reply { resp, flush } => {
            let mut b = BytesMut::new();
            encode_result(&mut b, c.header(), &resp);
            c.put(&b);
            if flush || !proxy {
                c.flush();
            }
            Ok(true)
        }
        Outcome::NoReply => Ok(true),
        Outcome::Error(msg) => {
            c.send_error("ERROR", &msg);
            Ok(true)
        }
        Outcome::ErrorDetail { message, detail } => {
            c.send_fields(&ErrorFields::new("ERROR", &message).with_detail(&detail));
            Ok(true)
        }
        Outcome::Fatal(msg) => {
            c.send_error("FATAL", &msg);
            c.close();
            Ok(false)
        }
        Outcome::Crash(msg) => {
            log::error!("would abort the real GTM: {msg}");
            Err(ServerError::WouldCrash(msg))
        }
        Outcome::Panic(msg) => {
            c.send_error("PANIC", &msg);
            log::error!("would abort the real GTM: PANIC {msg}");
            Err(ServerError::WouldCrash(msg))
        }
    }
}
