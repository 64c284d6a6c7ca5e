//! Socket options and process limits.

use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

use crate::config::Keepalives;

/// Turn on TCP keepalive with `k` (from the configuration in force, so that a
/// SIGHUP changing `keepalives_*` applies to the next connections).
pub fn set_keepalive<S: AsFd>(sock: &S, k: Keepalives) {
    let s = SockRef::from(sock);
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
    if let Err(e) = s.set_tcp_keepalive(&ka) {
        log::debug!("cannot set keepalive: {e}");
    }
}

/// Raise the soft open-file limit to the hard limit so that many thousands of
/// backends fit. Returns the limit in force afterwards.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}
