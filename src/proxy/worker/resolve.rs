//! Name resolution of the GTM host off the worker's event loop.
//!
//! `getaddrinfo` blocks, for as long as DNS takes. A worker therefore hands
//! a host name to its resolver thread and goes on serving backends; the
//! thread sends the address back over a channel and wakes the worker's
//! poll. Literal addresses need no lookup and never reach the thread.
//!
//! Bounded: one lookup is queued at most (a worker starts the next
//! connection attempt only after the previous one ended, so a second
//! request while one is queued means the thread is stuck in a slow lookup:
//! the attempt fails at once and the failover stages retry later), and
//! results that do not fit are dropped (the attempt then times out like any
//! connection attempt). Each lookup carries a number, so a late answer to
//! an earlier attempt is ignored.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use mio::Waker;

/// A lookup's number and its outcome.
pub type Resolved = (u64, io::Result<SocketAddr>);

pub struct Resolver {
    tx: Sender<(u64, String, u16)>,
    rx: Receiver<Resolved>,
    next: u64,
}

impl Resolver {
    /// Start the resolver thread of worker `id`; it wakes `waker` when an
    /// answer is ready and ends with the worker.
    pub fn spawn(id: usize, waker: Arc<Waker>) -> io::Result<Resolver> {
        let (tx, jobs) = bounded::<(u64, String, u16)>(1);
        let (done, rx) = bounded::<Resolved>(4);
        std::thread::Builder::new().name(format!("resolver-{id}")).spawn(move || {
            for (n, host, port) in jobs.iter() {
                let res = (host.as_str(), port)
                    .to_socket_addrs()
                    .and_then(|mut a| a.next().ok_or_else(|| io::Error::other("no address")));
                if done.try_send((n, res)).is_ok() {
                    let _ = waker.wake();
                }
            }
        })?;
        Ok(Resolver { tx, rx, next: 0 })
    }

    /// `host` as an address, when it is one (no lookup needed).
    pub fn literal(host: &str, port: u16) -> Option<SocketAddr> {
        host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, port))
    }

    /// Ask for `host`; returns the lookup's number.
    pub fn request(&mut self, host: &str, port: u16) -> io::Result<u64> {
        self.next += 1;
        match self.tx.try_send((self.next, host.to_string(), port)) {
            Ok(()) => Ok(self.next),
            Err(TrySendError::Full(_)) => Err(io::Error::other("an earlier lookup has not finished")),
            Err(TrySendError::Disconnected(_)) => Err(io::Error::other("the resolver thread has gone")),
        }
    }

    /// The next finished lookup, if any.
    pub fn try_result(&self) -> Option<Resolved> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::time::Duration;

    #[test]
    fn literal_addresses_need_no_lookup() {
        assert_eq!(Resolver::literal("127.0.0.1", 5), Some("127.0.0.1:5".parse().unwrap()));
        assert_eq!(Resolver::literal("::1", 5), Some("[::1]:5".parse().unwrap()));
        assert_eq!(Resolver::literal("localhost", 5), None);
    }

    #[test]
    fn a_lookup_wakes_the_poll_with_its_number() {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let mut r = Resolver::spawn(0, waker).unwrap();
        let n = r.request("localhost", 6666).unwrap();
        let mut events = Events::with_capacity(4);
        let mut got = None;
        for _ in 0..100 {
            poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
            if let Some(x) = r.try_result() {
                got = Some(x);
                break;
            }
        }
        let (m, res) = got.expect("no answer from the resolver");
        assert_eq!(m, n);
        let addr = res.expect("localhost resolves");
        assert_eq!(addr.port(), 6666);
        assert!(addr.ip().is_loopback());
    }
}
