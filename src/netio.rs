//! Socket plumbing shared by the proxy, the simulator and the benchmark:
//! the open-file limit, non-blocking read and write loops, and TCP keepalive.
//!
//! Everything here is mechanism only; what a connection does with the bytes
//! is its owner's business.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use socket2::{SockRef, TcpKeepalive};

/// Ceiling for the open-file limit when the hard limit is "unlimited" and
/// `/proc/sys/fs/nr_open` cannot be read (the kernel's own default).
const NR_OPEN_FALLBACK: u64 = 1 << 20;

/// Raise the soft `RLIMIT_NOFILE` as far as the hard limit allows, so that
/// thousands of connections fit. An unlimited hard limit is capped at
/// `fs.nr_open`, since the kernel refuses "unlimited" for this resource.
/// Returns the soft limit in force afterwards.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 only on some targets
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let Some(want) = soft_limit_target(lim.rlim_cur as u64, lim.rlim_max as u64, nr_open) else {
        return Ok(lim.rlim_cur as u64);
    };
    let new = libc::rlimit { rlim_cur: want as libc::rlim_t, rlim_max: lim.rlim_max };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        return Err(io::Error::last_os_error());
    }
    log::debug!("raised the open-file limit from {} to {want}", lim.rlim_cur);
    Ok(want)
}

/// The soft limit to ask for, or None when the current one is already as
/// high as it can go. `nr_open` is only consulted for an unlimited hard limit.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 only on some targets
fn soft_limit_target(cur: u64, max: u64, nr_open: impl FnOnce() -> u64) -> Option<u64> {
    let ceiling = if max == libc::RLIM_INFINITY as u64 { nr_open() } else { max };
    (cur < ceiling).then_some(ceiling)
}

fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(NR_OPEN_FALLBACK)
}

/// How a read burst ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The socket has nothing more for now; a new readiness edge will come.
    Drained,
    /// The buffer reached its cap. The socket may still hold data, and with
    /// edge-triggered readiness the caller must come back by itself.
    Full,
    /// The peer closed its side.
    Eof,
}

/// Read from `sock` into `buf` until it would block, the peer closes, or
/// `buf` holds `cap` bytes. Reads go through a caller-owned `scratch` buffer
/// so idle connections keep small buffers. With `short_read_drains`, a read
/// that returns less than `scratch` holds ends the burst: the socket buffer
/// is empty and new data raises a new edge, which saves a read that would
/// only say WouldBlock. Without it (e.g. when the end of stream must be
/// seen) reading goes on until WouldBlock.
pub fn read_into<R: Read>(
    sock: &mut R,
    buf: &mut BytesMut,
    scratch: &mut [u8],
    cap: usize,
    short_read_drains: bool,
) -> io::Result<ReadOutcome> {
    loop {
        if buf.len() >= cap {
            return Ok(ReadOutcome::Full);
        }
        match sock.read(scratch) {
            Ok(0) => return Ok(ReadOutcome::Eof),
            Ok(n) => {
                buf.extend_from_slice(&scratch[..n]);
                if short_read_drains && n < scratch.len() {
                    return Ok(ReadOutcome::Drained);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Write `buf` to `sock` until it is empty or the socket would block.
/// Ok(true) when everything went out. A socket that accepts no bytes is an
/// error (`WriteZero`).
pub fn write_from<W: Write>(sock: &mut W, buf: &mut BytesMut) -> io::Result<bool> {
    while !buf.is_empty() {
        match sock.write(buf) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes")),
            Ok(n) => buf.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// TCP keepalive parameters; 0 keeps the OS default for that parameter (as
/// `keepalives_*` in XL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle seconds before the first probe.
    pub idle: u32,
    /// Seconds between probes.
    pub interval: u32,
    /// Unanswered probes before the connection is dropped.
    pub count: u32,
}

/// Turn on TCP keepalive with `k`. A failure is logged and otherwise
/// ignored: the connection works without it.
pub fn set_keepalive<S: AsFd>(sock: &S, k: Keepalive) {
    let mut ka = TcpKeepalive::new();
    if k.idle > 0 {
        ka = ka.with_time(Duration::from_secs(k.idle.into()));
    }
    if k.interval > 0 {
        ka = ka.with_interval(Duration::from_secs(k.interval.into()));
    }
    if k.count > 0 {
        ka = ka.with_retries(k.count);
    }
    if let Err(e) = SockRef::from(sock).set_tcp_keepalive(&ka) {
        log::debug!("cannot set keepalive: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader handing out scripted results, one per call.
    struct Script(Vec<io::Result<Vec<u8>>>);

    impl Read for Script {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let bytes = self.0.remove(0)?;
            out[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        }
    }

    #[test]
    fn unlimited_hard_limit_is_capped_at_nr_open() {
        #[allow(clippy::unnecessary_cast)]
        let inf = libc::RLIM_INFINITY as u64;
        assert_eq!(soft_limit_target(1024, inf, || 1_048_576), Some(1_048_576));
        assert_eq!(soft_limit_target(1024, 4096, || unreachable!()), Some(4096));
        assert_eq!(soft_limit_target(4096, 4096, || unreachable!()), None);
        assert_eq!(soft_limit_target(2_000_000, inf, || 1_048_576), None);
    }

    #[test]
    fn fd_limit_can_be_raised() {
        assert!(raise_fd_limit().unwrap() >= 64);
    }

    #[test]
    fn short_read_ends_the_burst_only_when_asked() {
        let mut scratch = [0u8; 4];
        let mut buf = BytesMut::new();
        let mut s = Script(vec![Ok(b"ab".to_vec()), Ok(b"cd".to_vec())]);
        assert_eq!(read_into(&mut s, &mut buf, &mut scratch, 100, true).unwrap(), ReadOutcome::Drained);
        assert_eq!(&buf[..], b"ab");
        assert_eq!(read_into(&mut s, &mut buf, &mut scratch, 100, false).unwrap(), ReadOutcome::Drained);
        assert_eq!(&buf[..], b"abcd");
    }

    #[test]
    fn read_stops_at_the_cap_and_sees_eof() {
        let mut scratch = [0u8; 2];
        let mut buf = BytesMut::new();
        let mut s = Script(vec![Ok(b"ab".to_vec()), Ok(b"cd".to_vec()), Ok(vec![])]);
        assert_eq!(read_into(&mut s, &mut buf, &mut scratch, 2, true).unwrap(), ReadOutcome::Full);
        assert_eq!(read_into(&mut s, &mut buf, &mut scratch, 10, true).unwrap(), ReadOutcome::Eof);
        assert_eq!(&buf[..], b"abcd");
    }

    #[test]
    fn read_retries_interrupts_and_reports_errors() {
        let mut scratch = [0u8; 2];
        let mut buf = BytesMut::new();
        let mut s = Script(vec![Err(io::ErrorKind::Interrupted.into()), Err(io::ErrorKind::ConnectionReset.into())]);
        let e = read_into(&mut s, &mut buf, &mut scratch, 10, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }

    struct Sink {
        room: usize,
        got: Vec<u8>,
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.room).min(3);
            self.room -= n;
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_goes_until_empty_or_blocked() {
        let mut buf = BytesMut::from(&b"hello world"[..]);
        let mut s = Sink { room: 5, got: Vec::new() };
        assert!(!write_from(&mut s, &mut buf).unwrap());
        assert_eq!((&s.got[..], &buf[..]), (&b"hello"[..], &b" world"[..]));
        s.room = 100;
        assert!(write_from(&mut s, &mut buf).unwrap());
        assert_eq!(&s.got[..], b"hello world");
    }

    #[test]
    fn keepalive_applies_to_a_real_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        set_keepalive(&s, Keepalive { idle: 30, interval: 5, count: 3 });
        assert!(SockRef::from(&s).keepalive().unwrap());
        assert_eq!(SockRef::from(&s).keepalive_time().unwrap(), Duration::from_secs(30));
    }
}
