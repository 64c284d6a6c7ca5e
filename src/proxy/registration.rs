//! The proxy's registration link to the GTM (remote type 2, no proxy
//! header): `MSG_NODE_REGISTER` at start-up and after a reconnect order,
//! `MSG_NODE_UNREGISTER` at shutdown. Blocking with timeouts, outside the
//! request path: at start-up and shutdown on the main thread, and for a
//! reconnect order on a thread of its own ([`register_in_background`]) so
//! that the main loop keeps accepting meanwhile.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use log::{info, warn};

use crate::codec::frame::{self, DEFAULT_MAX_FRAME};
use crate::codec::types::node_type;
use crate::codec::{encode_close, encode_command, NodeRegister, Request, ServerFrame, StartupPacket};

/// The C proxy waits 20 s for the registration answer.
const REG_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum RegError {
    #[error("can not connect to GTM {0}: {1}")]
    Connect(String, io::Error),
    #[error("GTM {0}: {1}")]
    Io(String, io::Error),
    #[error("GTM {0} sent an unexpected answer: {1}")]
    Protocol(String, String),
}

/// What the proxy tells the GTM about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    pub nodename: String,
    pub listen_addresses: String,
    pub port: u16,
    pub data_dir: String,
}

pub struct RegLink {
    addr: String,
    sock: TcpStream,
    buf: BytesMut,
}

/// Most time a stop spends unregistering, in every stop mode: on the
/// registration link, or on a fresh one if that link is dead.
pub const UNREGISTER_BUDGET: Duration = Duration::from_millis(400);

impl RegLink {
    /// Connect and start up as `GTM_NODE_GTM_PROXY_POSTMASTER` named
    /// `nodename`, every step before `deadline`.
    fn open(host: &str, port: u16, nodename: &str, deadline: Instant) -> Result<RegLink, RegError> {
        let addr = format!("{host}:{port}");
        let sa = (host, port)
            .to_socket_addrs()
            .map_err(|e| RegError::Connect(addr.clone(), e))?
            .next()
            .ok_or_else(|| RegError::Connect(addr.clone(), io::Error::other("no address")))?;
        let wait = remaining(deadline).map_err(|e| RegError::Connect(addr.clone(), e))?;
        let sock = TcpStream::connect_timeout(&sa, wait).map_err(|e| RegError::Connect(addr.clone(), e))?;
        let _ = sock.set_nodelay(true);
        let mut link = RegLink { addr, sock, buf: BytesMut::new() };
        let mut out = BytesMut::new();
        StartupPacket::new(nodename, node_type::GTM_PROXY_POSTMASTER, true, 0).encode(&mut out);
        link.send(&out, deadline)?;
        match link.recv(deadline)? {
            ServerFrame::Ready { client_id } => {
                info!("registration link to GTM {} has client id {client_id}", link.addr);
                Ok(link)
            }
            ServerFrame::Error { fields, .. } => Err(RegError::Protocol(link.addr.clone(), fields.message())),
            other => Err(RegError::Protocol(link.addr.clone(), format!("{other:?}"))),
        }
    }

    /// Connect and register as a proxy node. An `E` answer ("Failed to
    /// Register node": the GTM still has a proxy of this name, or a
    /// promoted standby already knows us) is logged and accepted, as the C
    /// proxy does.
    pub fn register(host: &str, port: u16, me: &Identity) -> Result<RegLink, RegError> {
        let deadline = Instant::now() + REG_TIMEOUT;
        let mut link = RegLink::open(host, port, &me.nodename, deadline)?;
        let req = Request::NodeRegister(NodeRegister {
            node_type: node_type::GTM_PROXY,
            name: Bytes::copy_from_slice(me.nodename.as_bytes()),
            host: Bytes::copy_from_slice(me.listen_addresses.as_bytes()),
            port: u32::from(me.port),
            proxy_name: Bytes::new(),
            data_folder: Bytes::copy_from_slice(me.data_dir.as_bytes()),
            status: 0,
        });
        let mut out = BytesMut::new();
        encode_command(&mut out, None, &req);
        link.send(&out, deadline)?;
        match link.recv(deadline)? {
            ServerFrame::Result(_) => info!("registered as GTM proxy \"{}\" on GTM {}", me.nodename, link.addr),
            ServerFrame::Error { fields, .. } => warn!(
                "GTM {} refused to register GTM proxy \"{}\": {}; the GTM still lists a proxy of this name, \
                 most likely an earlier gtm_proxy that was killed before it could unregister (or, after a \
                 failover, the promoted standby's copy of this one); carrying on",
                link.addr,
                me.nodename,
                fields.message()
            ),
            other => return Err(RegError::Protocol(link.addr.clone(), format!("{other:?}"))),
        }
        Ok(link)
    }

    fn send(&mut self, b: &[u8], deadline: Instant) -> Result<(), RegError> {
        let io_err = |e| RegError::Io(self.addr.clone(), e);
        let wait = remaining(deadline).map_err(io_err)?;
        self.sock.set_write_timeout(Some(wait)).map_err(|e| RegError::Io(self.addr.clone(), e))?;
        self.sock.write_all(b).map_err(|e| RegError::Io(self.addr.clone(), e))
    }

    fn recv(&mut self, deadline: Instant) -> Result<ServerFrame, RegError> {
        let mut chunk = [0u8; 4096];
        loop {
            match frame::split(&mut self.buf, DEFAULT_MAX_FRAME) {
                Ok(Some(raw)) => {
                    return ServerFrame::decode(raw, false)
                        .map_err(|e| RegError::Protocol(self.addr.clone(), e.to_string()))
                }
                Ok(None) => {}
                Err(e) => return Err(RegError::Protocol(self.addr.clone(), e.to_string())),
            }
            let wait = remaining(deadline).map_err(|e| RegError::Io(self.addr.clone(), e))?;
            self.sock.set_read_timeout(Some(wait)).map_err(|e| RegError::Io(self.addr.clone(), e))?;
            let n = self.sock.read(&mut chunk).map_err(|e| RegError::Io(self.addr.clone(), e))?;
            if n == 0 {
                return Err(RegError::Io(self.addr.clone(), io::ErrorKind::UnexpectedEof.into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `MSG_NODE_UNREGISTER` before `deadline`. Ok(false) when the GTM
    /// answered with an error (it does not know this proxy).
    fn unregister(&mut self, nodename: &str, deadline: Instant) -> Result<bool, RegError> {
        let mut out = BytesMut::new();
        let req = Request::NodeUnregister {
            node_type: node_type::GTM_PROXY,
            name: Bytes::copy_from_slice(nodename.as_bytes()),
        };
        encode_command(&mut out, None, &req);
        self.send(&out, deadline)?;
        match self.recv(deadline)? {
            ServerFrame::Result(_) => Ok(true),
            ServerFrame::Error { fields, .. } => {
                warn!("GTM {}: unregister refused: {}", self.addr, fields.message());
                Ok(false)
            }
            other => Err(RegError::Protocol(self.addr.clone(), format!("{other:?}"))),
        }
    }

    /// Close with `X`.
    pub fn close(mut self) {
        let mut out = BytesMut::new();
        encode_close(&mut out);
        let _ = self.sock.set_write_timeout(Some(Duration::from_millis(100)));
        let _ = self.sock.write_all(&out);
    }
}

/// Time left before `deadline`, or a timeout error.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// Unregister from the GTM at `gtm` within `budget`: on `link` if it still
/// works, else on a fresh link (the registration link may have died with
/// the GTM it was made to, or a registration may still be under way).
/// Failures are logged; the stop goes on either way.
pub fn unregister_within(link: Option<RegLink>, gtm: &(String, u16), nodename: &str, budget: Duration) {
    let deadline = Instant::now() + budget;
    let on_old = link.map(|mut l| l.unregister(nodename, deadline).map(|done| (l, done)));
    let outcome = match on_old {
        Some(Ok(done)) => Ok(done),
        // The old link is dead or silent: a fresh one, with the time left.
        _ => RegLink::open(&gtm.0, gtm.1, nodename, deadline)
            .and_then(|mut l| l.unregister(nodename, deadline).map(|done| (l, done))),
    };
    match outcome {
        Ok((l, done)) => finish_unregister(l, done),
        Err(e) => warn!(
            "could not unregister GTM proxy \"{nodename}\" from GTM {}:{} within {budget:?}: {e}; \
             the next start of this proxy will find it still registered",
            gtm.0, gtm.1
        ),
    }
}

fn finish_unregister(link: RegLink, done: bool) {
    if done {
        info!("unregistered from GTM {}", link.addr);
    }
    link.close();
}

/// The outcome of a registration run by [`register_in_background`].
pub struct Registered {
    /// Which reconnect order it answers (a later order makes it stale).
    pub generation: u64,
    pub result: Result<RegLink, RegError>,
}

/// Close `old` (if any) and register on `host:port` on a thread of its own;
/// the outcome goes to `tx` and `waker` is woken. Each step is bounded by
/// the registration timeout. With `retry_every`, a failed attempt is tried
/// again after that pause (only the success is sent) until `current` no
/// longer holds `generation`: a later order has made this one stale.
pub fn register_in_background(
    old: Option<RegLink>,
    target: (String, u16),
    me: Identity,
    (generation, current): (u64, Arc<AtomicU64>),
    retry_every: Option<Duration>,
    tx: crossbeam_channel::Sender<Registered>,
    waker: Arc<mio::Waker>,
) -> io::Result<()> {
    std::thread::Builder::new().name("gtm_proxy registration".into()).spawn(move || {
        if let Some(o) = old {
            o.close();
        }
        let stale = || current.load(Ordering::Relaxed) != generation;
        let result = loop {
            let result = RegLink::register(&target.0, target.1, &me);
            match (result, retry_every) {
                (Err(e), Some(pause)) => {
                    log::debug!("registration on GTM {}:{} failed again: {e}", target.0, target.1);
                    std::thread::sleep(pause);
                    if stale() {
                        return;
                    }
                }
                (result, _) => break result,
            }
        };
        let _ = tx.send(Registered { generation, result });
        let _ = waker.wake();
    })?;
    Ok(())
}
