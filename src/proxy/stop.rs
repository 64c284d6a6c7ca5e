//! The stop timeline, owned by the main thread: which stop mode is in
//! force and when a smart stop gives way to a fast one. Pure: it takes the
//! time and what the workers report, and says which order to broadcast.
//!
//! What each mode means for a GTM proxy (the README's "Stopping" section):
//! * **smart** (SIGTERM, `gtm_ctl stop` with no `-m`): new connections and
//!   new transactions are refused with an error naming the shutdown; open
//!   transactions go on (snapshots, commits, rollbacks, and the extra GXID
//!   XL takes to commit a two-phase transaction). Once no transaction is
//!   open and no answer owed on any worker — or `smart_shutdown_timeout`
//!   after the signal — the stop goes on as a fast one. Coordinators and
//!   datanodes keep their GTM connections for their whole life, so a smart
//!   stop cannot wait for them to leave.
//! * **fast** (SIGINT): requests not yet sent are answered with an error,
//!   answers in flight are awaited for at most [`FAST_ANSWER_WAIT`], then
//!   every backend is closed.
//! * **immediate** (SIGQUIT): the proxy leaves at once.
//!
//! Every mode then unregisters from the GTM, within
//! [`super::registration::UNREGISTER_BUDGET`].

use std::time::{Duration, Instant};

use super::worker::StopMode;

/// Longest a fast stop waits for answers already sent to the GTM.
pub const FAST_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Why a smart stop went on as a fast one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// No transaction open, nothing owed: nothing left to wait for.
    Drained,
    /// `smart_shutdown_timeout` passed first.
    TimedOut(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    mode: StopMode,
    /// When a smart stop goes on as a fast one at the latest.
    smart_until: Option<Instant>,
    smart_timeout: Duration,
}

impl Stop {
    /// The first stop signal.
    pub fn new(asked: StopMode, now: Instant, smart_timeout: Duration) -> Stop {
        let smart_until = (asked == StopMode::Smart).then(|| now + smart_timeout);
        Stop { mode: asked, smart_until, smart_timeout }
    }

    pub fn mode(&self) -> StopMode {
        self.mode
    }

    /// A later stop signal: a stricter mode takes over and is returned;
    /// a milder or equal one changes nothing.
    pub fn escalate(&mut self, asked: StopMode) -> Option<StopMode> {
        if asked <= self.mode {
            return None;
        }
        self.mode = asked;
        self.smart_until = None;
        Some(asked)
    }

    /// Called every main-loop round while stopping: a smart stop whose
    /// workers are `drained`, or whose time is up, becomes fast.
    pub fn step(&mut self, now: Instant, drained: bool) -> Option<Closing> {
        let until = self.smart_until?;
        let why = if drained {
            Closing::Drained
        } else if now >= until {
            Closing::TimedOut(self.smart_timeout)
        } else {
            return None;
        };
        self.mode = StopMode::Fast;
        self.smart_until = None;
        Some(why)
    }

    /// How long the main loop may sleep before [`Stop::step`] is due.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.smart_until.map(|t| t.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::StopMode::*;
    use super::*;

    const T: Duration = Duration::from_secs(3);

    #[test]
    fn a_stricter_stop_always_takes_over() {
        let now = Instant::now();
        let mut s = Stop::new(Smart, now, T);
        assert_eq!(s.escalate(Smart), None);
        assert_eq!(s.escalate(Fast), Some(Fast));
        assert_eq!(s.escalate(Smart), None);
        assert_eq!(s.escalate(Fast), None);
        assert_eq!(s.escalate(Immediate), Some(Immediate));
        assert_eq!(s.escalate(Fast), None);
        assert_eq!(s.mode(), Immediate);
        let mut s = Stop::new(Fast, now, T);
        assert_eq!(s.escalate(Smart), None);
        assert_eq!(s.escalate(Immediate), Some(Immediate));
    }

    #[test]
    fn smart_becomes_fast_once_drained() {
        let now = Instant::now();
        let mut s = Stop::new(Smart, now, T);
        assert_eq!(s.step(now, false), None);
        assert_eq!(s.mode(), Smart);
        assert_eq!(s.step(now + Duration::from_millis(10), true), Some(Closing::Drained));
        assert_eq!(s.mode(), Fast);
        // Once only.
        assert_eq!(s.step(now + T, true), None);
        assert_eq!(s.timeout(now), None);
    }

    #[test]
    fn smart_becomes_fast_when_its_time_is_up() {
        let now = Instant::now();
        let mut s = Stop::new(Smart, now, T);
        assert_eq!(s.timeout(now + Duration::from_secs(1)), Some(Duration::from_secs(2)));
        assert_eq!(s.step(now + T - Duration::from_millis(1), false), None);
        assert_eq!(s.step(now + T, false), Some(Closing::TimedOut(T)));
        assert_eq!(s.mode(), Fast);
    }

    #[test]
    fn a_zero_timeout_closes_at_once_and_other_modes_never_step() {
        let now = Instant::now();
        let mut s = Stop::new(Smart, now, Duration::ZERO);
        assert_eq!(s.step(now, false), Some(Closing::TimedOut(Duration::ZERO)));
        let mut f = Stop::new(Fast, now, T);
        assert_eq!(f.step(now + T, true), None);
        assert_eq!(f.timeout(now), None);
        let mut s = Stop::new(Smart, now, T);
        s.escalate(Immediate);
        assert_eq!(s.step(now + T, true), None);
    }
}
