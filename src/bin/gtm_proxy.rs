//! `gtm_proxy`: drop-in replacement for Postgres-XL 10's GTM proxy; see
//! [`gtmproxy::cli::proxy`].

fn main() -> std::process::ExitCode {
    gtmproxy::cli::proxy::main(std::env::args().collect())
}
