//! What a worker does when its GTM link fails: the Postgres-XC 1.0 timer
//! semantics (`gtm_connect_retry_*`, then `err_wait_*`), driven by the
//! worker's timer set instead of sleeps, so backends keep being served.
//!
//! Stages after a link loss:
//! 1. **Retry**: wait `gtm_connect_retry_idle`, then try the current GTM up
//!    to `gtm_connect_retry_count` times, `gtm_connect_retry_interval` apart.
//!    Requests are held meanwhile.
//! 2. **ErrWait** (retry disabled or exhausted): wait for a reconnect order
//!    (`gtm_ctl reconnect`): `err_wait_idle`, then `err_wait_count` times
//!    `err_wait_interval`. Requests are still held.
//! 3. **Exhausted**: XC 1.0 killed the worker here. We fail what is held
//!    with a clear `E`, answer new requests the same way, and keep trying the
//!    configured GTM every `err_wait_interval` (or the retry interval when
//!    that is 0) so the proxy recovers by itself.
//!
//! A reconnect order moves to the new address at once, from any stage. Pure
//! state machine: the worker performs the returned [`Action`]s.

use std::time::Duration;

use crate::config::Config;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub retry_idle: Duration,
    pub retry_count: u32,
    pub retry_interval: Duration,
    pub err_wait_idle: Duration,
    pub err_wait_count: u32,
    pub err_wait_interval: Duration,
}

impl Policy {
    pub fn from_config(c: &Config) -> Policy {
        Policy {
            retry_idle: c.gtm_connect_retry_idle,
            retry_count: c.gtm_connect_retry_count,
            retry_interval: c.gtm_connect_retry_interval,
            err_wait_idle: c.err_wait_idle,
            err_wait_count: c.err_wait_count,
            err_wait_interval: c.err_wait_interval,
        }
    }

    /// How often the configured GTM is tried once everything else is spent.
    fn background_interval(&self) -> Duration {
        let d = if !self.err_wait_interval.is_zero() { self.err_wait_interval } else { self.retry_interval };
        d.max(Duration::from_millis(100))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Link usable (or being established for the first time).
    Up,
    /// Attempt `attempt` (1-based) of the retry stage is due or running.
    Retry { attempt: u32 },
    /// Waiting for a reconnect order; `step` 0 is the idle wait.
    ErrWait { step: u32 },
    /// Everything spent: fail fast, keep trying in the background.
    Exhausted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a connection attempt now.
    Connect,
    /// Arm the failover timer; call [`Failover::on_timer`] when it fires.
    Wait(Duration),
    /// Fail every held request with an `E`, then wait.
    FailHeldAndWait(Duration),
}

#[derive(Debug)]
pub struct Failover {
    pub policy: Policy,
    pub stage: Stage,
}

impl Failover {
    pub fn new(policy: Policy) -> Self {
        Failover { policy, stage: Stage::Up }
    }

    /// True while requests should be held rather than failed.
    pub fn holding(&self) -> bool {
        !matches!(self.stage, Stage::Exhausted)
    }

    /// The link was lost (or a first connect failed).
    pub fn on_link_lost(&mut self) -> Action {
        match self.stage {
            Stage::Up => {
                if self.policy.retry_count > 0 {
                    self.stage = Stage::Retry { attempt: 1 };
                    if self.policy.retry_idle.is_zero() {
                        Action::Connect
                    } else {
                        Action::Wait(self.policy.retry_idle)
                    }
                } else {
                    self.enter_err_wait()
                }
            }
            // A connection attempt made during a later stage failed.
            _ => self.on_attempt_failed(),
        }
    }

    /// A connection attempt failed before the link became ready.
    pub fn on_attempt_failed(&mut self) -> Action {
        match self.stage {
            Stage::Up => self.on_link_lost(),
            Stage::Retry { attempt } => {
                if attempt < self.policy.retry_count {
                    self.stage = Stage::Retry { attempt: attempt + 1 };
                    Action::Wait(self.policy.retry_interval.max(Duration::from_millis(10)))
                } else {
                    self.enter_err_wait()
                }
            }
            // Attempts during the error wait come only from reconnect orders
            // or the background loop; keep waiting as before.
            Stage::ErrWait { .. } => self.next_err_wait(),
            Stage::Exhausted => Action::Wait(self.policy.background_interval()),
        }
    }

    fn enter_err_wait(&mut self) -> Action {
        let p = &self.policy;
        if p.err_wait_idle.is_zero() && p.err_wait_count == 0 && p.err_wait_interval.is_zero() {
            // XC 1.0: "No action specified to wait for reconnect."
            self.stage = Stage::Exhausted;
            return Action::FailHeldAndWait(p.background_interval());
        }
        self.stage = Stage::ErrWait { step: 0 };
        Action::Wait(p.err_wait_idle)
    }

    fn next_err_wait(&mut self) -> Action {
        let Stage::ErrWait { step } = self.stage else { return Action::Wait(self.policy.background_interval()) };
        if step < self.policy.err_wait_count {
            self.stage = Stage::ErrWait { step: step + 1 };
            Action::Wait(self.policy.err_wait_interval)
        } else {
            // XC 1.0: "No reconnect command received from gtm_ctl."
            self.stage = Stage::Exhausted;
            Action::FailHeldAndWait(self.policy.background_interval())
        }
    }

    /// The failover timer fired.
    pub fn on_timer(&mut self) -> Action {
        match self.stage {
            Stage::Up => Action::Connect,
            Stage::Retry { .. } | Stage::Exhausted => Action::Connect,
            Stage::ErrWait { .. } => self.next_err_wait(),
        }
    }

    /// The link is ready again.
    pub fn on_connected(&mut self) {
        self.stage = Stage::Up;
    }

    /// `gtm_ctl reconnect`: try the new address now, with a fresh retry stage
    /// should it fail.
    pub fn on_reconnect_order(&mut self) -> Action {
        self.stage = if self.policy.retry_count > 0 { Stage::Retry { attempt: 1 } } else { Stage::ErrWait { step: 0 } };
        Action::Connect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn policy(retry_count: u32, err_wait_count: u32) -> Policy {
        Policy {
            retry_idle: s(1),
            retry_count,
            retry_interval: s(2),
            err_wait_idle: s(3),
            err_wait_count,
            err_wait_interval: s(4),
        }
    }

    #[test]
    fn retry_then_err_wait_then_exhausted() {
        let mut f = Failover::new(policy(2, 2));
        assert_eq!(f.on_link_lost(), Action::Wait(s(1)));
        assert_eq!(f.on_timer(), Action::Connect);
        assert_eq!(f.on_attempt_failed(), Action::Wait(s(2)));
        assert_eq!(f.stage, Stage::Retry { attempt: 2 });
        assert_eq!(f.on_timer(), Action::Connect);
        // Second and last attempt fails: error-wait stage.
        assert_eq!(f.on_attempt_failed(), Action::Wait(s(3)));
        assert!(f.holding());
        assert_eq!(f.on_timer(), Action::Wait(s(4)));
        assert_eq!(f.on_timer(), Action::Wait(s(4)));
        assert_eq!(f.on_timer(), Action::FailHeldAndWait(s(4)));
        assert!(!f.holding());
        assert_eq!(f.on_timer(), Action::Connect);
        assert_eq!(f.on_attempt_failed(), Action::Wait(s(4)));
        f.on_connected();
        assert_eq!(f.stage, Stage::Up);
        assert!(f.holding());
    }

    #[test]
    fn no_retry_no_wait_fails_at_once_but_keeps_trying() {
        let mut f = Failover::new(Policy {
            retry_idle: s(0),
            retry_count: 0,
            retry_interval: s(5),
            err_wait_idle: s(0),
            err_wait_count: 0,
            err_wait_interval: s(0),
        });
        assert_eq!(f.on_link_lost(), Action::FailHeldAndWait(s(5)));
        assert_eq!(f.on_timer(), Action::Connect);
    }

    #[test]
    fn reconnect_order_interrupts_any_stage() {
        let mut f = Failover::new(policy(1, 5));
        f.on_link_lost();
        f.on_timer();
        assert_eq!(f.on_attempt_failed(), Action::Wait(s(3)));
        assert!(matches!(f.stage, Stage::ErrWait { .. }));
        assert_eq!(f.on_reconnect_order(), Action::Connect);
        assert_eq!(f.stage, Stage::Retry { attempt: 1 });
        f.on_connected();
        assert_eq!(f.stage, Stage::Up);
    }

    #[test]
    fn zero_idle_retries_immediately() {
        let mut f = Failover::new(Policy { retry_idle: s(0), ..policy(3, 0) });
        assert_eq!(f.on_link_lost(), Action::Connect);
    }
}
