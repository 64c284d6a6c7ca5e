//! GTM proxy for Postgres-XL 10: library crate shared by the `gtm_proxy`,
//! `gtm_sim` and `gtm_bench` binaries.
pub mod bench;
pub mod cli;
pub mod codec;
pub mod config;
pub mod control;
pub mod logging;
pub mod netio;
pub mod proxy;
pub mod sim;
pub mod status;
pub mod timers;
