//! What a worker does when its GTM link fails: the Postgres-XC 1.0 timer
//! semantics (`gtm_connect_retry_*`, then `err_wait_*`), driven by the
//! worker's timer set instead of sleeps, so backends keep being served.
//!
//! Stages after a link loss:
//! 1. **Retry**: wait `gtm_connect_retry_idle`, then try the current GTM
//!    again and again for as long as XC would have spent on its
//!    `gtm_connect_retry_count` attempts `gtm_connect_retry_interval` apart
//!    (the retry budget: `(count - 1) × interval`). The attempts are not
//!    `interval` apart but back off: the first retry comes [`FIRST_RETRY`]
//!    after the failed attempt, each wait doubles, is shortened by up to a
//!    quarter at random (so the workers of many proxies do not knock in step)
//!    and never exceeds `interval`. A GTM restarted on the same port is thus
//!    found within about twice its downtime instead of up to a whole
//!    interval later. Requests are held meanwhile.
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

/// The wait before the first retry of a lost GTM; later waits double.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);

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
    /// The next retry wait before jitter (doubles after each failure).
    backoff: Duration,
    /// Waited so far in the current retry stage (against the retry budget).
    spent: Duration,
    /// Jitter source (xorshift; any non-zero seed).
    rng: u64,
}

impl Failover {
    /// `seed` varies the jitter between workers (any value).
    pub fn new(policy: Policy, seed: u64) -> Self {
        Failover { policy, stage: Stage::Up, backoff: FIRST_RETRY, spent: Duration::ZERO, rng: seed | 1 }
    }

    /// Enter the retry stage afresh.
    fn start_retry(&mut self) {
        self.stage = Stage::Retry { attempt: 1 };
        self.backoff = FIRST_RETRY;
        self.spent = Duration::ZERO;
    }

    /// What XC would have waited in its retry stage.
    fn retry_budget(&self) -> Duration {
        self.policy.retry_interval.saturating_mul(self.policy.retry_count.saturating_sub(1))
    }

    /// The next retry wait: the backoff, capped at the retry interval and
    /// at what is left of the budget, less up to a quarter of jitter.
    fn next_retry_wait(&mut self) -> Option<Duration> {
        let left = self.retry_budget().saturating_sub(self.spent);
        if left.is_zero() {
            return None;
        }
        let base = self.backoff.min(self.policy.retry_interval.max(Duration::from_millis(10)));
        self.backoff = self.backoff.saturating_mul(2);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let cut = base.mul_f64((self.rng % 1024) as f64 / 4096.0);
        let wait = (base - cut).min(left).max(Duration::from_millis(1));
        self.spent += wait;
        Some(wait)
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
                    self.start_retry();
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
            Stage::Retry { attempt } => match self.next_retry_wait() {
                Some(wait) => {
                    self.stage = Stage::Retry { attempt: attempt.saturating_add(1) };
                    Action::Wait(wait)
                }
                None => self.enter_err_wait(),
            },
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
        if self.policy.retry_count > 0 {
            self.start_retry();
        } else {
            self.stage = Stage::ErrWait { step: 0 };
        }
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

    /// Fail attempts of the retry stage until it ends; the waits in order.
    fn retry_waits(f: &mut Failover) -> (Vec<Duration>, Action) {
        let mut waits = Vec::new();
        for _ in 0..10_000 {
            match f.on_attempt_failed() {
                Action::Wait(d) if matches!(f.stage, Stage::Retry { .. }) => {
                    waits.push(d);
                    assert_eq!(f.on_timer(), Action::Connect);
                }
                other => return (waits, other),
            }
        }
        panic!("retry stage never ended");
    }

    #[test]
    fn retry_then_err_wait_then_exhausted() {
        let mut f = Failover::new(policy(2, 2), 7);
        assert_eq!(f.on_link_lost(), Action::Wait(s(1)));
        assert_eq!(f.on_timer(), Action::Connect);
        // XC: 2 attempts 2 s apart. Here: backed-off retries for those 2 s.
        let (waits, end) = retry_waits(&mut f);
        assert_eq!(waits.iter().sum::<Duration>(), s(2), "the retry budget is spent exactly: {waits:?}");
        assert!(waits.len() > 2, "retries come faster than the interval: {waits:?}");
        // Then the error-wait stage, as in XC.
        assert_eq!(end, Action::Wait(s(3)));
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
    fn default_settings_retry_within_100ms_then_back_off_to_the_interval() {
        let p = Policy {
            retry_idle: s(0),
            retry_count: 10000,
            retry_interval: s(60),
            err_wait_idle: s(0),
            err_wait_count: 0,
            err_wait_interval: s(0),
        };
        for seed in [1, 2, 99, u64::MAX] {
            let mut f = Failover::new(p.clone(), seed);
            assert_eq!(f.on_link_lost(), Action::Connect, "the first retry is immediate");
            let mut base = FIRST_RETRY;
            for n in 0..20 {
                let Action::Wait(d) = f.on_attempt_failed() else { panic!("still retrying") };
                assert!(d <= base && d >= base * 3 / 4, "wait {n}: {d:?}, base {base:?}");
                assert_eq!(f.on_timer(), Action::Connect);
                base = (base * 2).min(s(60));
            }
            assert_eq!(base, s(60), "capped at gtm_connect_retry_interval");
            // A GTM down for 2 s is retried within about 2 s more.
            let mut f = Failover::new(p.clone(), seed);
            f.on_link_lost();
            let mut t = Duration::ZERO;
            while t < s(2) {
                let Action::Wait(d) = f.on_attempt_failed() else { panic!() };
                t += d;
                f.on_timer();
            }
            assert!(t < s(4), "next attempt after a 2 s outage at {t:?}");
        }
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let waits = |seed| {
            let mut f = Failover::new(policy(100, 0), seed);
            f.on_link_lost();
            f.on_timer();
            retry_waits(&mut f).0
        };
        assert_ne!(waits(1), waits(2));
        assert_eq!(waits(3), waits(3), "pure: same seed, same waits");
    }

    #[test]
    fn no_retry_no_wait_fails_at_once_but_keeps_trying() {
        let mut f = Failover::new(
            Policy {
                retry_idle: s(0),
                retry_count: 0,
                retry_interval: s(5),
                err_wait_idle: s(0),
                err_wait_count: 0,
                err_wait_interval: s(0),
            },
            0,
        );
        assert_eq!(f.on_link_lost(), Action::FailHeldAndWait(s(5)));
        assert_eq!(f.on_timer(), Action::Connect);
    }

    #[test]
    fn reconnect_order_interrupts_any_stage() {
        let mut f = Failover::new(policy(1, 5), 0);
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
        let mut f = Failover::new(Policy { retry_idle: s(0), ..policy(3, 0) }, 0);
        assert_eq!(f.on_link_lost(), Action::Connect);
    }
}
