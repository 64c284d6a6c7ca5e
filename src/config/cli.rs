//! The `gtm_proxy` command line: XL 10's options (one struct, [`ProxyArgs`], used both to
//! start the proxy and as the overrides of `gtm_proxy.conf`), plus the `check`, `status`
//! and `reconnect` subcommands.
//!
//! As with XL's getopt, an option given twice takes its last value: `gtm_ctl restart`
//! runs `gtm_proxy -D DIR` followed by the saved `gtm_proxy.opts` line, which repeats `-D`.
//! `-h` is the listen address, so help is `--help` (or `-?`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// XL 10's `gtm_proxy` options. Each `Some` wins over `gtm_proxy.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ProxyArgs {
    /// Data directory (holds gtm_proxy.conf, gtm_proxy.pid, gtm_proxy.log); required
    #[arg(short = 'D', value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (listen_addresses)
    #[arg(short = 'h', value_name = "ADDR")]
    pub listen_addresses: Option<String>,
    /// Port to listen on (port)
    #[arg(short = 'p', value_name = "PORT")]
    pub port: Option<u16>,
    /// GTM host (gtm_host)
    #[arg(short = 's', value_name = "HOST")]
    pub gtm_host: Option<String>,
    /// GTM port (gtm_port)
    #[arg(short = 't', value_name = "PORT")]
    pub gtm_port: Option<u16>,
    /// Node name (nodename)
    #[arg(short = 'i', value_name = "NAME")]
    pub nodename: Option<String>,
    /// Number of worker threads (worker_threads)
    #[arg(short = 'n', value_name = "N")]
    pub worker_threads: Option<usize>,
    /// Log file, relative to the data directory (log_file)
    #[arg(short = 'l', value_name = "FILE")]
    pub log_file: Option<String>,
}

impl ProxyArgs {
    /// These options with each one `over` sets replaced by its value there.
    pub fn overridden_by(&self, over: &ProxyArgs) -> ProxyArgs {
        ProxyArgs {
            data_dir: over.data_dir.clone().or_else(|| self.data_dir.clone()),
            listen_addresses: over.listen_addresses.clone().or_else(|| self.listen_addresses.clone()),
            port: over.port.or(self.port),
            gtm_host: over.gtm_host.clone().or_else(|| self.gtm_host.clone()),
            gtm_port: over.gtm_port.or(self.gtm_port),
            nodename: over.nodename.clone().or_else(|| self.nodename.clone()),
            worker_threads: over.worker_threads.or(self.worker_threads),
            log_file: over.log_file.clone().or_else(|| self.log_file.clone()),
        }
    }

    /// Parse bare options (no program name, no subcommand), as saved in `gtm_proxy.opts`.
    pub fn parse_options(opts: &[String]) -> Result<ProxyArgs, clap::Error> {
        let cl = CommandLine::try_parse_from(std::iter::once("gtm_proxy").chain(opts.iter().map(String::as_str)))?;
        Ok(cl.args)
    }
}

/// The whole `gtm_proxy` command line.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "gtm_proxy",
    version,
    about = "GTM proxy for Postgres-XL 10",
    disable_help_flag = true,
    disable_help_subcommand = true,
    args_override_self = true,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct CommandLine {
    #[command(flatten)]
    pub args: ProxyArgs,
    #[command(subcommand)]
    pub command: Option<SubCommand>,
    /// Print help
    #[arg(long = "help", short = '?', action = clap::ArgAction::Help, global = true)]
    help: Option<bool>,
}

/// What `gtm_proxy` can do besides running the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum SubCommand {
    /// Validate DIR/gtm_proxy.conf and the options without starting; exit 1 on error
    #[command(disable_help_flag = true, args_override_self = true)]
    Check(ProxyArgs),
    /// Summarize the proxy running in DIR (live figures need metrics_port); exit 1 if none runs
    #[command(disable_help_flag = true, args_override_self = true)]
    Status(ProxyArgs),
    /// Order the proxy running in DIR to move to another GTM (as gtm_ctl reconnect)
    #[command(disable_help_flag = true, args_override_self = true)]
    Reconnect(ReconnectArgs),
}

/// `gtm_proxy reconnect -D DIR [-s HOST] [-t PORT]`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ReconnectArgs {
    /// Data directory of the running proxy
    #[arg(short = 'D', value_name = "DIR")]
    pub data_dir: PathBuf,
    /// New GTM host
    #[arg(short = 's', value_name = "HOST")]
    pub host: Option<String>,
    /// New GTM port
    #[arg(short = 't', value_name = "PORT")]
    pub port: Option<u16>,
}

impl CommandLine {
    /// Parse, with `-D` required to start the proxy or check its configuration (XL refuses
    /// to start without it).
    pub fn parse_from_args<I, T>(argv: I) -> Result<CommandLine, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cl = CommandLine::try_parse_from(argv)?;
        let missing_dir = match &cl.command {
            None => cl.args.data_dir.is_none(),
            Some(SubCommand::Check(a)) | Some(SubCommand::Status(a)) => a.data_dir.is_none(),
            Some(SubCommand::Reconnect(_)) => false,
        };
        if missing_dir {
            use clap::CommandFactory;
            let mut cmd = CommandLine::command();
            return Err(cmd.error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "the data directory must be given with -D DIR",
            ));
        }
        Ok(cl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<CommandLine, clap::Error> {
        CommandLine::parse_from_args(std::iter::once("gtm_proxy").chain(args.iter().copied()))
    }

    #[test]
    fn every_option() {
        CommandLine::command().debug_assert();
        let cl = parse(&[
            "-D", "/d", "-h", "0.0.0.0", "-p", "6667", "-s", "gtm", "-t", "6668", "-i", "px", "-n", "4", "-l", "x.log",
        ])
        .expect("parses");
        assert_eq!(cl.command, None);
        assert_eq!(
            cl.args,
            ProxyArgs {
                data_dir: Some(PathBuf::from("/d")),
                listen_addresses: Some("0.0.0.0".into()),
                port: Some(6667),
                gtm_host: Some("gtm".into()),
                gtm_port: Some(6668),
                nodename: Some("px".into()),
                worker_threads: Some(4),
                log_file: Some("x.log".into()),
            }
        );
    }

    #[test]
    fn last_repeated_option_wins() {
        // What gtm_ctl restart runs: -D, then the opts line repeating -D and the rest.
        let cl = parse(&["-D", "/a", "-D", "/b", "-i", "x", "-p", "1", "-i", "y", "-p", "2", "-l", "l1", "-l", "l2"])
            .expect("parses");
        assert_eq!(cl.args.data_dir, Some(PathBuf::from("/b")));
        assert_eq!(cl.args.nodename.as_deref(), Some("y"));
        assert_eq!(cl.args.port, Some(2));
        assert_eq!(cl.args.log_file.as_deref(), Some("l2"));
        let cl = parse(&["check", "-D", "/a", "-D", "/c"]).expect("parses");
        assert!(matches!(cl.command, Some(SubCommand::Check(a)) if a.data_dir == Some(PathBuf::from("/c"))));
    }

    #[test]
    fn data_dir_required() {
        let e = parse(&[]).expect_err("no -D");
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("-D"), "{e}");
        assert!(parse(&["-i", "x"]).is_err());
        assert!(parse(&["check"]).is_err());
        assert!(parse(&["status"]).is_err());
        assert!(matches!(parse(&["status", "-D", "/d"]).map(|c| c.command), Ok(Some(SubCommand::Status(_)))));
        assert!(parse(&["reconnect", "-s", "h"]).is_err(), "reconnect needs -D too");
    }

    #[test]
    fn subcommands() {
        let cl = parse(&["reconnect", "-D", "/d", "-s", "h", "-t", "7"]).expect("parses");
        assert_eq!(
            cl.command,
            Some(SubCommand::Reconnect(ReconnectArgs {
                data_dir: PathBuf::from("/d"),
                host: Some("h".into()),
                port: Some(7)
            }))
        );
        let cl = parse(&["check", "-D", "/d", "-h", "127.0.0.1", "-s", "g"]).expect("parses");
        let Some(SubCommand::Check(a)) = cl.command else { panic!("check expected") };
        assert_eq!(a.listen_addresses.as_deref(), Some("127.0.0.1"));
        assert_eq!(a.gtm_host.as_deref(), Some("g"));
    }

    #[test]
    fn help_and_version() {
        for flag in ["--help", "-?"] {
            let e = parse(&[flag]).expect_err("help");
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        }
        let help = CommandLine::command().render_help().to_string();
        assert!(help.contains("reconnect") && help.contains("check") && help.contains("status"), "{help}");
        let e = parse(&["--version"]).expect_err("version");
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        assert!(parse(&["check", "--help"]).is_err());
    }

    #[test]
    fn override_and_saved_options() {
        let saved =
            ProxyArgs::parse_options(&["-D".into(), "/d".into(), "-i".into(), "px".into(), "-p".into(), "7".into()])
                .expect("parses");
        let over = ProxyArgs { port: Some(8), data_dir: Some("/d".into()), ..Default::default() };
        let m = saved.overridden_by(&over);
        assert_eq!((m.nodename.as_deref(), m.port), (Some("px"), Some(8)));
        assert_eq!(ProxyArgs::default().overridden_by(&ProxyArgs::default()), ProxyArgs::default());
        assert!(ProxyArgs::parse_options(&["-w".into()]).is_err());
    }

    #[test]
    fn bad_options() {
        assert!(parse(&["-D", "/d", "-w", "5"]).is_err());
        assert!(parse(&["-D", "/d", "-p", "x"]).is_err());
        assert!(parse(&["-D", "/d", "-h"]).is_err());
        assert!(parse(&["-D", "/d", "extra"]).is_err());
    }
}
