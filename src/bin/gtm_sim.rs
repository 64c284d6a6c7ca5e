//! `gtm_sim`: a simulated Postgres-XL 10 GTM; see [`gtmproxy::cli::sim`].

fn main() -> std::process::ExitCode {
    gtmproxy::cli::sim::main(std::env::args().collect())
}
