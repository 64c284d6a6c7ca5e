use super::*;

const REQUIRED: &str = "nodename = 'p1'\ngtm_host = 'gtm.example'\ngtm_port = 16001\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str_with(text, "gtm_proxy.conf", &ProxyArgs::default())
}

fn parse_ok(extra: &str) -> Config {
    match parse(&format!("{REQUIRED}{extra}")) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn parse_err(extra: &str) -> ConfigError {
    match parse(&format!("{REQUIRED}{extra}")) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn defaults() {
    let c = parse_ok("");
    let mut expected = Config::new("p1", "gtm.example", 16001);
    assert_eq!(c, expected);
    assert_eq!(c.listen_addresses, "*");
    assert_eq!(c.port, 6666);
    assert_eq!(c.worker_threads, 2);
    assert_eq!(c.gtm_connect_retry_interval, Duration::from_secs(60));
    assert_eq!(c.gtm_connect_retry_idle, Duration::ZERO);
    assert_eq!(c.gtm_connect_retry_count, 10000);
    assert_eq!(c.err_wait_idle, Duration::ZERO);
    assert_eq!(c.err_wait_count, 0);
    assert_eq!(c.err_wait_interval, Duration::ZERO);
    assert_eq!((c.keepalives_idle, c.keepalives_interval, c.keepalives_count), (0, 0, 0));
    assert_eq!(c.log_file, "gtm_proxy.log");
    assert_eq!(c.log_min_messages, LogLevel::Warning);
    assert_eq!(c.error_reporter, None);
    assert_eq!(c.status_reader, None);
    assert_eq!(c.data_dir, PathBuf::from("."));
    assert_eq!(c.hold_max_requests, 100_000);
    assert_eq!(c.hold_timeout, Duration::from_secs(30));
    assert_eq!(c.upstream_timeout, Duration::from_secs(10));
    assert_eq!(c.batch_max, 1024);
    assert_eq!(c.batch_hold, Duration::from_millis(2));
    assert_eq!(c.batch_in_flight, 1);
    assert_eq!(c.max_backends, 20_000);
    assert_eq!(c.backend_output_limit, 1024 * 1024);
    assert_eq!(c.metrics_port, 0);
    assert_eq!(c.backend_startup_timeout, Duration::from_secs(5));
    assert_eq!(c.backend_frame_timeout, Duration::from_secs(5));
    assert_eq!(c.max_startup_backends, 1000);
    assert_eq!(c.backend_error_limit, 5);
    assert_eq!(c.smart_shutdown_timeout, Duration::from_secs(3));
    expected.port = 1;
    assert_ne!(c, expected);
}

#[test]
fn every_key() {
    let c = parse_ok(
        "listen_addresses = '127.0.0.1'
         port = 7000
         worker_threads = 8
         gtm_connect_retry_interval = 5
         gtm_connect_retry_idle = 2
         gtm_connect_retry_count = 7
         err_wait_idle = 3
         err_wait_count = 4
         err_wait_interval = 6
         keepalives_idle = 11
         keepalives_interval = 12
         keepalives_count = 13
         log_file = 'proxy.log'
         log_min_messages = debug1
         error_reporter = 'rep'
         status_reader = 'rd'
         data_dir = '/var/lib/proxy'
         config_file = '/etc/other.conf'
         hold_max_requests = 500
         hold_timeout = 45
         upstream_timeout = 0
         batch_max = 16384
         batch_hold = 0
         batch_in_flight = 4
         max_backends = 300
         backend_output_limit = 65536
         metrics_port = 9187
         backend_startup_timeout = 2s
         backend_frame_timeout = 1500ms
         max_startup_backends = 64
         backend_error_limit = 3
         smart_shutdown_timeout = 750ms
        ",
    );
    assert_eq!(c.nodename, "p1");
    assert_eq!(c.gtm_host, "gtm.example");
    assert_eq!(c.gtm_port, 16001);
    assert_eq!(c.listen_addresses, "127.0.0.1");
    assert_eq!(c.port, 7000);
    assert_eq!(c.worker_threads, 8);
    assert_eq!(c.gtm_connect_retry_interval, Duration::from_secs(5));
    assert_eq!(c.gtm_connect_retry_idle, Duration::from_secs(2));
    assert_eq!(c.gtm_connect_retry_count, 7);
    assert_eq!(c.err_wait_idle, Duration::from_secs(3));
    assert_eq!(c.err_wait_count, 4);
    assert_eq!(c.err_wait_interval, Duration::from_secs(6));
    assert_eq!(c.keepalives_idle, 11);
    assert_eq!(c.keepalives_interval, 12);
    assert_eq!(c.keepalives_count, 13);
    assert_eq!(c.log_file, "proxy.log");
    assert_eq!(c.log_min_messages, LogLevel::Debug1);
    assert_eq!(c.error_reporter.as_deref(), Some("rep"));
    assert_eq!(c.status_reader.as_deref(), Some("rd"));
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/proxy"));
    assert_eq!(c.hold_max_requests, 500);
    assert_eq!(c.hold_timeout, Duration::from_secs(45));
    assert_eq!(c.upstream_timeout, Duration::ZERO);
    assert_eq!(c.batch_max, 16384);
    assert_eq!(c.batch_hold, Duration::ZERO);
    assert_eq!(c.batch_in_flight, 4);
    assert_eq!(c.max_backends, 300);
    assert_eq!(c.backend_output_limit, 65536);
    assert_eq!(c.metrics_port, 9187);
    assert_eq!(c.backend_startup_timeout, Duration::from_secs(2));
    assert_eq!(c.backend_frame_timeout, Duration::from_millis(1500));
    assert_eq!(c.max_startup_backends, 64);
    assert_eq!(c.backend_error_limit, 3);
    assert_eq!(c.smart_shutdown_timeout, Duration::from_millis(750));
}

#[test]
fn syntax_variants() {
    // No '=', keys in any case, tabs, CRLF, comments, BOM, duplicate keys.
    let c = parse(
        "\u{feff}# header comment\r\n\
         \r\n\
         NodeName\t'n'   # trailing comment\r\n\
         GTM_HOST=h\r\n\
         gtm_port=1\n\
         port 1234\n\
         port = 4321 #last wins\n\
         \t   \n\
         log_file = 'a#b' # hash inside quotes\n",
    )
    .expect("valid");
    assert_eq!(c.nodename, "n");
    assert_eq!(c.gtm_host, "h");
    assert_eq!(c.gtm_port, 1);
    assert_eq!(c.port, 4321);
    assert_eq!(c.log_file, "a#b");
}

#[test]
fn quoting() {
    let c = parse_ok("error_reporter = 'it''s \\'here\\' \\\\ \\t'\nstatus_reader = ''\n");
    assert_eq!(c.error_reporter.as_deref(), Some("it's 'here' \\ \t"));
    assert_eq!(c.status_reader.as_deref(), Some(""));
    let c = parse_ok("listen_addresses = '*'\nport = '7001'\n");
    assert_eq!(c.listen_addresses, "*");
    assert_eq!(c.port, 7001);
    // An empty node name is accepted, as in XL 10.
    let c =
        Config::from_str_with("nodename = ''\ngtm_host = h\ngtm_port = 2", "f", &ProxyArgs::default()).expect("valid");
    assert_eq!(c.nodename, "");
    // Unquoted '*' works too.
    assert_eq!(parse_ok("listen_addresses = *").listen_addresses, "*");
}

#[test]
fn durations_with_units() {
    let d = |v: &str| parse_ok(&format!("hold_timeout = '{v}'")).hold_timeout;
    assert_eq!(d("500ms"), Duration::from_millis(500));
    assert_eq!(d("500 ms"), Duration::from_millis(500));
    assert_eq!(d("7s"), Duration::from_secs(7));
    assert_eq!(d("7"), Duration::from_secs(7));
    assert_eq!(d("2min"), Duration::from_secs(120));
    assert_eq!(d("1h"), Duration::from_secs(3600));
    assert_eq!(d("1d"), Duration::from_secs(86400));
    assert_eq!(d("+3"), Duration::from_secs(3));
    assert_eq!(parse_ok("upstream_timeout = 250ms").upstream_timeout, Duration::from_millis(250));
    assert_eq!(parse_ok("gtm_connect_retry_interval = 1min").gtm_connect_retry_interval, Duration::from_secs(60));
    assert!(matches!(parse_err("hold_timeout = 5us"), ConfigError::InvalidValue { .. }));
    assert!(matches!(parse_err("hold_timeout = '1.5s'"), ConfigError::InvalidValue { .. }));
    assert!(matches!(parse_err("hold_timeout = -1"), ConfigError::OutOfRange { .. }));
    assert!(matches!(
        parse_err("hold_timeout = 99999999999999999999999999999999999999999999d"),
        ConfigError::OutOfRange { .. }
    ));
}

#[test]
fn output_limit_units() {
    let b = |v: &str| parse_ok(&format!("backend_output_limit = '{v}'")).backend_output_limit;
    assert_eq!(b("4096"), 4096);
    assert_eq!(b("64kB"), 65536);
    assert_eq!(b("2MB"), 2 << 20);
    assert_eq!(b("1GB"), 1 << 30);
    assert!(matches!(parse_err("backend_output_limit = 100"), ConfigError::OutOfRange { .. }));
    assert!(matches!(parse_err("backend_output_limit = 2GB"), ConfigError::OutOfRange { .. }));
    assert!(matches!(parse_err("backend_output_limit = 3TB"), ConfigError::InvalidValue { .. }));
}

#[test]
fn log_levels() {
    let all = [
        ("DEBUG5", LogLevel::Debug5, log::LevelFilter::Trace),
        ("debug4", LogLevel::Debug4, log::LevelFilter::Trace),
        ("Debug3", LogLevel::Debug3, log::LevelFilter::Trace),
        ("debug2", LogLevel::Debug2, log::LevelFilter::Trace),
        ("debug1", LogLevel::Debug1, log::LevelFilter::Debug),
        ("info", LogLevel::Info, log::LevelFilter::Info),
        ("notice", LogLevel::Notice, log::LevelFilter::Info),
        ("warning", LogLevel::Warning, log::LevelFilter::Warn),
        ("ERROR", LogLevel::Error, log::LevelFilter::Error),
        ("log", LogLevel::Log, log::LevelFilter::Error),
        ("fatal", LogLevel::Fatal, log::LevelFilter::Error),
        ("panic", LogLevel::Panic, log::LevelFilter::Error),
    ];
    for (name, level, filter) in all {
        assert_eq!(name.parse::<LogLevel>(), Ok(level));
        assert_eq!(level.to_level_filter(), filter);
        assert_eq!(level.to_string().parse::<LogLevel>(), Ok(level));
        assert_eq!(parse_ok(&format!("log_min_messages = '{name}'")).log_min_messages, level);
    }
    assert_eq!("debug".parse::<LogLevel>(), Ok(LogLevel::Debug2));
    assert!("verbose".parse::<LogLevel>().is_err());
    assert!(LogLevel::Error < LogLevel::Log && LogLevel::Log < LogLevel::Fatal);
    let e = parse_err("log_min_messages = loud").to_string();
    assert!(e.contains("gtm_proxy.conf:4:") && e.contains("\"log_min_messages\""), "{e}");
}

#[test]
fn unknown_key_names_file_line_key() {
    let e = parse_err("\n# c\nfoo_bar = 1\n");
    assert!(
        matches!(&e, ConfigError::UnknownKey { file, line: 6, key, suggestion: None } if file == "gtm_proxy.conf" && key == "foo_bar"),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "gtm_proxy.conf:6: unrecognized configuration parameter \"foo_bar\"");
}

#[test]
fn invalid_value_names_file_line_key() {
    let e = parse(&format!("{REQUIRED}\n\n\n\n\n\n\n\nport = abc\n")).expect_err("bad port");
    assert!(e.to_string().starts_with("gtm_proxy.conf:12: invalid value for parameter \"port\": \"abc\""), "{e}");
    assert!(matches!(e, ConfigError::InvalidValue { line: 12, .. }));
    for bad in [
        "worker_threads = two",
        "keepalives_idle = 1s",
        "gtm_host = ''",
        "listen_addresses = ''",
        "log_file = ''",
        "data_dir = ''",
    ] {
        let e = parse_err(bad);
        assert!(matches!(e, ConfigError::InvalidValue { line: 4, .. }), "{bad}: {e:?}");
        let key = bad.split(' ').next().unwrap_or_default();
        assert!(e.to_string().contains(&format!("\"{key}\"")), "{e}");
    }
    let long = "x".repeat(65);
    assert!(matches!(parse_err(&format!("nodename = '{long}'")), ConfigError::InvalidValue { .. }));
    let ok64 = "y".repeat(64);
    assert_eq!(parse_ok(&format!("nodename = '{ok64}'")).nodename, ok64);
}

#[test]
fn out_of_range_names_file_line_key() {
    for (bad, key) in [
        ("port = 65536", "port"),
        ("gtm_port = 70000", "gtm_port"),
        ("worker_threads = 0", "worker_threads"),
        ("batch_max = 0", "batch_max"),
        ("batch_max = 16385", "batch_max"),
        ("batch_in_flight = 0", "batch_in_flight"),
        ("batch_in_flight = 1025", "batch_in_flight"),
        ("batch_hold = -1", "batch_hold"),
        ("max_backends = 0", "max_backends"),
        ("keepalives_count = -1", "keepalives_count"),
        ("gtm_connect_retry_count = 99999999999999999999999", "gtm_connect_retry_count"),
        ("metrics_port = 65536", "metrics_port"),
    ] {
        let e = parse_err(bad);
        assert!(matches!(&e, ConfigError::OutOfRange { line: 4, key: k, .. } if k == key), "{bad}: {e:?}");
        let msg = e.to_string();
        assert!(msg.starts_with("gtm_proxy.conf:4: "), "{msg}");
        assert!(msg.contains(&format!("parameter \"{key}\"")), "{msg}");
    }
    assert_eq!(
        parse_err("batch_max = 0").to_string(),
        "gtm_proxy.conf:4: 0 is outside the valid range for parameter \"batch_max\" (1 .. 16384)"
    );
    assert_eq!(parse_ok("metrics_port = 0").metrics_port, 0);
    assert_eq!(parse_ok("").metrics_listen_address, "127.0.0.1");
    let acl = parse_ok("allowed_client_networks = '10.0.0.0/8, ::1'\nallowed_remote_types = 'datanode'");
    assert_eq!(acl.allowed_client_networks, "10.0.0.0/8, ::1");
    assert_eq!(acl.allowed_remote_types, "datanode");
    assert!(matches!(parse_err("allowed_client_networks = '10.0.0.0/40'"), ConfigError::InvalidValue { .. }));
    assert!(matches!(parse_err("allowed_remote_types = 'postgres'"), ConfigError::InvalidValue { .. }));
    assert_eq!(parse_ok("hold_max_requests = 0").hold_max_requests, 0);
}

#[test]
fn syntax_errors_name_file_line_key() {
    for (bad, key) in [
        ("port = 1 2", Some("port")),
        ("port =", Some("port")),
        ("port = # nothing", Some("port")),
        ("log_file = 'unterminated", Some("log_file")),
        ("log_file = 'a' b", Some("log_file")),
        ("= 5", None),
        ("1port = 5", None),
        ("'q' = 5", None),
    ] {
        let e = parse_err(bad);
        match &e {
            ConfigError::Syntax { file, line, key: k, .. } => {
                assert_eq!(file, "gtm_proxy.conf");
                assert_eq!(*line, 4, "{bad}");
                assert_eq!(k.as_deref(), key, "{bad}");
            }
            other => panic!("{bad}: expected a syntax error, got {other:?}"),
        }
        let msg = e.to_string();
        assert!(msg.starts_with("gtm_proxy.conf:4: syntax error"), "{msg}");
        if let Some(key) = key {
            assert!(msg.contains(&format!("\"{key}\"")), "{msg}");
        }
    }
}

#[test]
fn missing_required() {
    for (text, key) in [
        ("gtm_host = h\ngtm_port = 1", "nodename"),
        ("nodename = n\ngtm_port = 1", "gtm_host"),
        ("nodename = n\ngtm_host = h", "gtm_port"),
    ] {
        let e = Config::from_str_with(text, "gtm_proxy.conf", &ProxyArgs::default()).expect_err("missing");
        assert!(matches!(&e, ConfigError::MissingRequired { key: k, .. } if *k == key), "{e:?}");
        assert!(e.to_string().contains(&format!("\"{key}\"")), "{e}");
        assert!(e.to_string().starts_with("gtm_proxy.conf: "), "{e}");
    }
}

#[test]
fn cli_overrides_win() {
    let cli = ProxyArgs {
        data_dir: Some(PathBuf::from("/data/p")),
        listen_addresses: Some("10.0.0.1".into()),
        port: Some(7777),
        gtm_host: Some("other".into()),
        gtm_port: Some(16003),
        nodename: Some("cli_name".into()),
        worker_threads: Some(5),
        log_file: Some("cli.log".into()),
    };
    let text =
        format!("{REQUIRED}listen_addresses = '*'\nport = 1\nworker_threads = 3\nlog_file = f.log\ndata_dir = '/x'\n");
    let c = Config::from_str_with(&text, "f", &cli).expect("valid");
    assert_eq!(c.data_dir, PathBuf::from("/data/p"));
    assert_eq!(c.listen_addresses, "10.0.0.1");
    assert_eq!(c.port, 7777);
    assert_eq!(c.gtm_host, "other");
    assert_eq!(c.gtm_port, 16003);
    assert_eq!(c.nodename, "cli_name");
    assert_eq!(c.worker_threads, 5);
    assert_eq!(c.log_file, "cli.log");

    // Everything from the command line, nothing in the file.
    let c = Config::from_str_with("", "f", &cli).expect("valid");
    assert_eq!(c.nodename, "cli_name");
    // File values stay when the command line is silent.
    let c = Config::from_str_with(&text, "f", &ProxyArgs::default()).expect("valid");
    assert_eq!((c.port, c.worker_threads), (1, 3));
    assert_eq!(c.data_dir, PathBuf::from("/x"));
}

#[test]
fn cli_values_are_validated() {
    let cli = ProxyArgs { worker_threads: Some(0), ..Default::default() };
    let e = Config::from_str_with(REQUIRED, "f", &cli).expect_err("0 workers");
    assert!(matches!(&e, ConfigError::InvalidOption { option: "-n", key: "worker_threads", .. }), "{e:?}");
    assert!(e.to_string().contains("-n"), "{e}");
    let cli = ProxyArgs { gtm_port: Some(0), ..Default::default() };
    assert!(matches!(Config::from_str_with(REQUIRED, "f", &cli), Err(ConfigError::InvalidOption { option: "-t", .. })));
    // `-p 0` is allowed: listen on any free port.
    let cli = ProxyArgs { port: Some(0), ..Default::default() };
    assert_eq!(Config::from_str_with(REQUIRED, "f", &cli).expect("port 0").port, 0);
}

#[test]
fn load_from_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Missing file: everything from the command line.
    let cli =
        ProxyArgs { nodename: Some("n".into()), gtm_host: Some("h".into()), gtm_port: Some(5), ..Default::default() };
    let c = Config::load(dir.path(), &cli).expect("no file is fine");
    assert_eq!(c.data_dir, dir.path());
    assert!(matches!(
        Config::load(dir.path(), &ProxyArgs::default()),
        Err(ConfigError::MissingRequired { key: "nodename", .. })
    ));
    std::fs::write(dir.path().join(CONFIG_FILE_NAME), format!("{REQUIRED}port = 6000\n")).expect("write");
    let c = Config::load(dir.path(), &ProxyArgs::default()).expect("valid");
    assert_eq!((c.port, c.gtm_port), (6000, 16001));
    std::fs::write(dir.path().join(CONFIG_FILE_NAME), "nodename = n\nbogus = 1\n").expect("write");
    let e = Config::load(dir.path(), &ProxyArgs::default()).expect_err("bad key");
    assert!(e.to_string().contains("gtm_proxy.conf:2:"), "{e}");
    std::fs::write(dir.path().join(CONFIG_FILE_NAME), b"nodename = n\nx = '\xff'\n").expect("write");
    assert!(matches!(Config::load(dir.path(), &ProxyArgs::default()), Err(ConfigError::Syntax { line: 2, .. })));
}

#[test]
fn example_file_parses() {
    let text = include_str!("../../proxy.conf.example");
    let c = Config::from_str_with(text, "proxy.conf.example", &ProxyArgs::default()).expect("example parses");
    let expected = Config::new(&c.nodename, &c.gtm_host, c.gtm_port);
    assert_eq!(c, expected, "the example only documents defaults");
    // Uncommenting every `#key = value` line must also parse, and give the defaults.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.chars().next().is_some_and(|ch| ch.is_ascii_lowercase()) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut c2 = Config::from_str_with(&uncommented, "x", &ProxyArgs::default()).expect("uncommented example parses");
    assert_eq!(c2.error_reporter.as_deref(), Some(""));
    assert_eq!(c2.status_reader.as_deref(), Some(""));
    c2.error_reporter = None;
    c2.status_reader = None;
    assert_eq!(c2, expected);
    // Every key of the parser is documented in the example, and accepted by the parser.
    for key in keys::all_keys() {
        let documented = uncommented.lines().any(|l| l.starts_with(&format!("{key} =")));
        assert!(documented, "{key} missing from proxy.conf.example");
    }
}

#[test]
fn misspelt_key_gets_a_suggestion() {
    let e = parse_err("gtm_prot = 5");
    assert!(matches!(&e, ConfigError::UnknownKey { suggestion: Some("gtm_port"), .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "gtm_proxy.conf:4: unrecognized configuration parameter \"gtm_prot\" (did you mean \"gtm_port\"?)"
    );
}

#[test]
fn gtm_required_at_start_is_a_boolean() {
    assert!(!parse_ok("").gtm_required_at_start);
    for (v, want) in
        [("on", true), ("TRUE", true), ("yes", true), ("1", true), ("off", false), ("No", false), ("0", false)]
    {
        assert_eq!(parse_ok(&format!("gtm_required_at_start = {v}")).gtm_required_at_start, want, "{v}");
    }
    assert!(matches!(parse_err("gtm_required_at_start = maybe"), ConfigError::InvalidValue { .. }));
}
