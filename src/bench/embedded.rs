//! The simulator and the proxy run from this crate's library when their own
//! binaries are not next to `gtm_bench`.
//!
//! `cargo run --release --bin gtm_bench` builds only `gtm_bench`, so on a
//! fresh clone `target/release/gtm_sim` and `target/release/gtm_proxy` do not
//! exist. The library holds both daemons, so `gtm_bench` re-executes itself
//! with a role flag as first argument ([`Role::flag`]) and then behaves as
//! that daemon, taking the same `-D -h -p ...` flags. They still run as
//! separate processes: their CPU is measured apart from the bench's, and a
//! scenario can kill and restart them.

use std::ffi::OsString;
use std::process::ExitCode;

/// A daemon `gtm_bench` can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sim,
    Proxy,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Sim, Role::Proxy];

    /// First argument that turns `gtm_bench` into this daemon.
    pub fn flag(self) -> &'static str {
        match self {
            Role::Sim => "--embedded-gtm-sim",
            Role::Proxy => "--embedded-gtm-proxy",
        }
    }

    /// The binary this role stands in for.
    pub fn binary(self) -> &'static str {
        match self {
            Role::Sim => "gtm_sim",
            Role::Proxy => "gtm_proxy",
        }
    }

    /// The role asked for by `argv[1]`, if any.
    pub fn from_args(args: &[OsString]) -> Option<Role> {
        let first = args.get(1)?.to_str()?;
        Role::ALL.into_iter().find(|r| r.flag() == first)
    }
}

/// Run as `role` with `args` (argv without the role flag): the very entry
/// point of that daemon's own binary ([`crate::cli`]).
pub fn main(role: Role, args: Vec<OsString>) -> ExitCode {
    let mut argv: Vec<String> = args.into_iter().map(|a| a.to_string_lossy().into_owned()).collect();
    match argv.first_mut() {
        Some(a0) => *a0 = role.binary().to_owned(),
        None => argv.push(role.binary().to_owned()),
    }
    match role {
        Role::Sim => crate::cli::sim::main(argv),
        Role::Proxy => crate::cli::proxy::main(argv),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_flags_round_trip() {
        for r in Role::ALL {
            let argv: Vec<OsString> = vec!["gtm_bench".into(), r.flag().into(), "-D".into()];
            assert_eq!(Role::from_args(&argv), Some(r));
        }
        assert_eq!(Role::from_args(&["gtm_bench".into(), "--backends".into()]), None);
        assert_eq!(Role::from_args(&["gtm_bench".into()]), None);
    }
}
