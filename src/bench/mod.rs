//! `gtm_bench`: a load generator that drives many simulated Postgres-XL 10
//! backends against a GTM or a GTM proxy.
//!
//! * [`backend`]: one backend as a pure state machine (startup, then
//!   begin → snapshot → commit, each answer validated strictly);
//! * [`stats`]: latency histograms, error counts, the GXID uniqueness check.

pub mod backend;
pub mod stats;
