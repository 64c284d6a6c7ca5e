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
use std::time::Duration;

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

impl RegLink {
    /// Connect, start up as `GTM_NODE_GTM_PROXY_POSTMASTER` and register as a
    /// proxy node. An `E` answer ("Failed to Register node", e.g. on a
    /// promoted standby that already knows us) is logged and accepted, as the
    /// C proxy does.
    pub fn register(host: &str, port: u16, me: &Identity) -> Result<RegLink, RegError> {
        let addr = format!("{host}:{port}");
        let sa = (host, port)
            .to_socket_addrs()
            .map_err(|e| RegError::Connect(addr.clone(), e))?
            .next()
            .ok_or_else(|| RegError::Connect(addr.clone(), io::Error::other("no address")))?;
        let sock = TcpStream::connect_timeout(&sa, REG_TIMEOUT).map_err(|e| RegError::Connect(addr.clone(), e))?;
        let io_err = |e| RegError::Io(addr.clone(), e);
        sock.set_read_timeout(Some(REG_TIMEOUT)).map_err(io_err)?;
        sock.set_write_timeout(Some(REG_TIMEOUT)).map_err(|e| RegError::Io(addr.clone(), e))?;
        let _ = sock.set_nodelay(true);
        let mut link = RegLink { addr, sock, buf: BytesMut::new() };
        let mut out = BytesMut::new();
        StartupPacket::new(&me.nodename, node_type::GTM_PROXY_POSTMASTER, true, 0).encode(&mut out);
        link.send(&out)?;
        match link.recv()? {
            ServerFrame::Ready { client_id } => {
                info!("registration link to GTM {} has client id {client_id}", link.addr)
            }
            ServerFrame::Error { fields, .. } => {
                return Err(RegError::Protocol(link.addr.clone(), fields.message()));
            }
            other => return Err(RegError::Protocol(link.addr.clone(), format!("{other:?}"))),
        }
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
        link.send(&out)?;
        match link.recv()? {
            ServerFrame::Result(_) => info!("registered as GTM proxy \"{}\" on GTM {}", me.nodename, link.addr),
            ServerFrame::Error { fields, .. } => {
                warn!("GTM {} refused the proxy registration: {} (ignored)", link.addr, fields.message())
            }
            other => return Err(RegError::Protocol(link.addr.clone(), format!("{other:?}"))),
        }
        Ok(link)
    }

    fn send(&mut self, b: &[u8]) -> Result<(), RegError> {
        self.sock.write_all(b).map_err(|e| RegError::Io(self.addr.clone(), e))
    }

    fn recv(&mut self) -> Result<ServerFrame, RegError> {
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
            let n = self.sock.read(&mut chunk).map_err(|e| RegError::Io(self.addr.clone(), e))?;
            if n == 0 {
                return Err(RegError::Io(self.addr.clone(), io::ErrorKind::UnexpectedEof.into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `MSG_NODE_UNREGISTER` then `X`; failures are only logged.
    pub fn unregister(mut self, nodename: &str) {
        let mut out = BytesMut::new();
        let req = Request::NodeUnregister {
            node_type: node_type::GTM_PROXY,
            name: Bytes::copy_from_slice(nodename.as_bytes()),
        };
        encode_command(&mut out, None, &req);
        let res = self.send(&out).and_then(|_| self.recv());
        match res {
            Ok(ServerFrame::Result(_)) => info!("unregistered from GTM {}", self.addr),
            Ok(ServerFrame::Error { fields, .. }) => {
                warn!("GTM {}: unregister refused: {}", self.addr, fields.message())
            }
            Ok(_) => warn!("GTM {}: unexpected answer to unregister", self.addr),
            Err(e) => warn!("unregister failed: {e}"),
        }
        self.close();
    }

    /// Close with `X`.
    pub fn close(mut self) {
        let mut out = BytesMut::new();
        encode_close(&mut out);
        let _ = self.sock.write_all(&out);
    }
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
