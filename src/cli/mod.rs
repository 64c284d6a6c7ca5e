//! The binaries' entry points, in the library so that `gtm_bench` can run
//! the simulator and the proxy from itself when their own binaries were not
//! built (see `bench::embedded`). Each takes the whole argv and returns the
//! process's exit code.

pub mod proxy;
pub mod sim;
