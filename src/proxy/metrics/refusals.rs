//! Connections turned away, counted by reason. The acceptor (main thread)
//! and the workers (start-up checks) count into [`Refusals`]; the metrics
//! endpoint adds them up per reason and always shows every reason, at 0
//! until it happens, so that alert rules can name any of them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a connection was turned away before it could send a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_backends` connections were already open.
    MaxBackends,
    /// Outside `allowed_client_networks`, `allowed_node_names` or
    /// `allowed_remote_types`.
    Access,
    /// Out of file descriptors at accept.
    OutOfFds,
    /// No worker thread was running to take it.
    NoWorker,
    /// Its worker's GTM link had no backend identifier left.
    NoIdentifier,
    /// Closed to keep the connections in start-up within
    /// `max_startup_backends`.
    MaxStartupBackends,
    /// No startup packet within `backend_startup_timeout`.
    StartupTimeout,
    /// Its first frame was not a valid startup packet.
    BadStartup,
    /// The proxy was stopping.
    ShuttingDown,
}

impl Refused {
    pub const ALL: [Refused; 9] = [
        Refused::MaxBackends,
        Refused::Access,
        Refused::OutOfFds,
        Refused::NoWorker,
        Refused::NoIdentifier,
        Refused::MaxStartupBackends,
        Refused::StartupTimeout,
        Refused::BadStartup,
        Refused::ShuttingDown,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::MaxBackends => "max_backends",
            Refused::Access => "access",
            Refused::OutOfFds => "out_of_fds",
            Refused::NoWorker => "no_worker",
            Refused::NoIdentifier => "no_identifier",
            Refused::MaxStartupBackends => "max_startup_backends",
            Refused::StartupTimeout => "startup_timeout",
            Refused::BadStartup => "bad_startup",
            Refused::ShuttingDown => "shutting_down",
        }
    }
}

/// One counter per [`Refused`] reason.
#[derive(Debug, Default)]
pub struct Refusals([AtomicU64; Refused::ALL.len()]);

impl Refusals {
    pub fn count(&self, why: Refused) {
        self.0[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, why: Refused) -> u64 {
        self.0[why as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter_and_label() {
        let r = Refusals::default();
        for (i, why) in Refused::ALL.iter().enumerate() {
            assert_eq!(*why as usize, i, "ALL is in declaration order");
            for _ in 0..=i {
                r.count(*why);
            }
        }
        for (i, why) in Refused::ALL.iter().enumerate() {
            assert_eq!(r.get(*why), i as u64 + 1, "{}", why.label());
        }
        let mut labels: Vec<_> = Refused::ALL.iter().map(|w| w.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Refused::ALL.len());
    }
}
