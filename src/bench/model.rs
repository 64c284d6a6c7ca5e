//! The two load models and the threads that carry them out.
//!
//! * [`Model::Loop`] (the default): `--threads` mio event loops, each
//!   holding thousands of non-blocking connections ([`super::driver`]). The
//!   most offered load one process can make, for many thousands of backends.
//! * [`Model::Threads`]: one OS thread per backend with one blocking socket
//!   and one request at a time ([`super::blocking`]), the shape a real
//!   coordinator or datanode backend process has.
//!
//! Both drive the same [`super::backend::Backend`] state machine and count
//! through [`super::account`]; [`Drivers`] hides which one runs from the
//! coordinating thread in [`super::run`].

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::blocking;
use super::driver::{LoopConfig, Worker};
use super::shared::Shared;
use super::stats::Stats;
use super::{BenchError, Config};

/// How the bench's backends are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Model {
    /// Event loops, many connections each.
    #[default]
    Loop,
    /// One blocking thread per backend.
    Threads,
}

impl Model {
    /// The `--model` value and the JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Model::Loop => "loop",
            Model::Threads => "threads",
        }
    }

    pub fn parse(s: &str) -> Result<Model, String> {
        match s {
            "loop" => Ok(Model::Loop),
            "threads" => Ok(Model::Threads),
            other => Err(format!("unknown model {other:?} (loop or threads)")),
        }
    }

    /// OS threads carrying `cfg`'s backends: the loop threads, or one per backend.
    pub fn threads(self, cfg: &Config) -> usize {
        match self {
            Model::Loop => cfg.threads.min(cfg.backends),
            Model::Threads => cfg.backends,
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The running threads of one run, whichever the model.
pub enum Drivers {
    Loop(Vec<JoinHandle<std::io::Result<Stats>>>),
    Threads(blocking::Backends),
}

impl Drivers {
    /// Start `cfg`'s backends in its model. On failure nothing is left running.
    pub fn start(cfg: &Config, lcfg: &Arc<LoopConfig>, shared: &Arc<Shared>) -> Result<Drivers, BenchError> {
        let backends: Vec<(usize, String)> = (0..cfg.backends).map(|i| (i, cfg.node_name_of(i))).collect();
        match cfg.model {
            Model::Loop => start_loops(backends, lcfg, shared).map(Drivers::Loop),
            Model::Threads => blocking::Backends::start(backends, lcfg, shared).map(Drivers::Threads),
        }
    }

    pub fn is_finished(&self) -> bool {
        match self {
            Drivers::Loop(handles) => handles.iter().all(|h| h.is_finished()),
            Drivers::Threads(b) => b.is_finished(),
        }
    }

    /// Wait for every thread and merge what they measured.
    pub fn join(self) -> Result<Stats, BenchError> {
        match self {
            Drivers::Loop(handles) => join_loops(handles),
            Drivers::Threads(b) => b.join(),
        }
    }
}

fn start_loops(
    backends: Vec<(usize, String)>,
    lcfg: &Arc<LoopConfig>,
    shared: &Arc<Shared>,
) -> Result<Vec<JoinHandle<std::io::Result<Stats>>>, BenchError> {
    let threads = lcfg.threads;
    let mut handles = Vec::with_capacity(threads);
    for th in 0..threads {
        let mine: Vec<(usize, String)> = backends.iter().skip(th).step_by(threads).cloned().collect();
        let (lcfg, shared2) = (lcfg.clone(), shared.clone());
        let h = std::thread::Builder::new()
            .name(format!("gtm_bench-{th}"))
            .spawn(move || Worker::new(th, mine, lcfg, shared2)?.run());
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                shared.request_stop("thread start failed");
                for h in handles {
                    let _ = h.join();
                }
                return Err(BenchError::Thread(e));
            }
        }
    }
    Ok(handles)
}

fn join_loops(handles: Vec<JoinHandle<std::io::Result<Stats>>>) -> Result<Stats, BenchError> {
    let mut stats = Stats::default();
    let mut failure = None;
    for (th, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(s)) => stats.merge(s),
            Ok(Err(e)) => failure = Some(BenchError::Loop { thread: th, detail: e.to_string() }),
            Err(_) => failure = Some(BenchError::Loop { thread: th, detail: "panicked".into() }),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in [Model::Loop, Model::Threads] {
            assert_eq!(Model::parse(m.as_str()), Ok(m));
        }
        assert!(Model::parse("fibers").is_err());
        assert_eq!(Model::default(), Model::Loop);
    }

    #[test]
    fn threads_per_model() {
        let cfg = Config { backends: 40, threads: 3, ..Config::default() };
        assert_eq!(Model::Loop.threads(&cfg), 3);
        assert_eq!(Model::Threads.threads(&cfg), 40);
        let few = Config { backends: 2, threads: 8, ..Config::default() };
        assert_eq!(Model::Loop.threads(&few), 2);
    }
}
