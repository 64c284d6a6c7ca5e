//! The keys of `gtm_proxy.conf`: when a change takes effect (SIGHUP reload semantics),
//! and a suggestion for a misspelt one.
//!
//! On SIGHUP the file is read again ([`Config::reload`]). Keys marked
//! [`Takes::Reload`] apply at once: the retry and failover schedule, hold limits,
//! `upstream_timeout`, `batch_max`, `batch_hold`, `batch_in_flight`, `max_backends`,
//! `backend_output_limit`, the backend deadlines, `max_startup_backends`, `backend_error_limit`,
//! `smart_shutdown_timeout`, `log_min_messages` and `keepalives_*` (for connections opened after the reload:
//! backends accepted and GTM links made). Keys marked [`Takes::Restart`] keep their
//! running value and a warning names them.

use super::Config;

/// When a changed value takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// On SIGHUP.
    Reload,
    /// Only when gtm_proxy restarts (the running value is kept on SIGHUP).
    Restart,
}

/// How one key is compared and restored during a reload.
struct KeyInfo {
    name: &'static str,
    takes: Takes,
    same: fn(&Config, &Config) -> bool,
    keep: fn(&mut Config, &Config),
}

macro_rules! keys {
    ($($field:ident: $takes:ident),* $(,)?) => {
        const TABLE: &[KeyInfo] = &[$(KeyInfo {
            name: stringify!($field),
            takes: Takes::$takes,
            same: |a, b| a.$field == b.$field,
            keep: |new, cur| new.$field = cur.$field.clone(),
        }),*];
    };
}

keys! {
    nodename: Restart,
    listen_addresses: Restart,
    port: Restart,
    gtm_host: Restart,
    gtm_port: Restart,
    worker_threads: Restart,
    gtm_connect_retry_interval: Reload,
    gtm_connect_retry_idle: Reload,
    gtm_connect_retry_count: Reload,
    err_wait_idle: Reload,
    err_wait_count: Reload,
    err_wait_interval: Reload,
    keepalives_idle: Reload,
    keepalives_interval: Reload,
    keepalives_count: Reload,
    log_file: Restart,
    log_min_messages: Reload,
    error_reporter: Reload,
    status_reader: Reload,
    data_dir: Restart,
    hold_max_requests: Reload,
    hold_timeout: Reload,
    upstream_timeout: Reload,
    batch_max: Reload,
    batch_hold: Reload,
    batch_in_flight: Reload,
    max_backends: Reload,
    backend_output_limit: Reload,
    metrics_port: Restart,
    metrics_listen_address: Restart,
    allowed_client_networks: Reload,
    allowed_node_names: Reload,
    allowed_remote_types: Reload,
    gtm_required_at_start: Restart,
    backend_startup_timeout: Reload,
    backend_frame_timeout: Reload,
    max_startup_backends: Reload,
    backend_error_limit: Reload,
    smart_shutdown_timeout: Reload,
}

/// Keys accepted in the file but without a [`Config`] field.
const IGNORED_KEYS: &[&str] = &["config_file"];

/// Every key the file accepts.
pub fn all_keys() -> impl Iterator<Item = &'static str> {
    TABLE.iter().map(|k| k.name).chain(IGNORED_KEYS.iter().copied())
}

/// When a change of `key` takes effect; `None` for an unknown key.
pub fn takes(key: &str) -> Option<Takes> {
    let key = key.to_ascii_lowercase();
    if IGNORED_KEYS.contains(&key.as_str()) {
        return Some(Takes::Restart);
    }
    TABLE.iter().find(|k| k.name == key).map(|k| k.takes)
}

/// The outcome of a reload: the configuration to run with, and which changed keys were
/// applied or kept at their running value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    pub config: Config,
    /// Changed keys that take effect now.
    pub applied: Vec<&'static str>,
    /// Changed keys that need a restart; `config` has their running values.
    pub kept: Vec<&'static str>,
}

impl Config {
    /// Merge a freshly read configuration into this running one: keys that need a
    /// restart keep their running value.
    pub fn reload(&self, mut new: Config) -> Reload {
        let mut applied = Vec::new();
        let mut kept = Vec::new();
        for k in TABLE {
            if (k.same)(self, &new) {
                continue;
            }
            match k.takes {
                Takes::Reload => applied.push(k.name),
                Takes::Restart => {
                    (k.keep)(&mut new, self);
                    kept.push(k.name);
                }
            }
        }
        Reload { config: new, applied, kept }
    }
}

/// The known key closest to a misspelt `key`, if one is close enough to be what was meant.
pub fn suggest(key: &str) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    let limit = (key.chars().count() / 3).clamp(1, 3);
    all_keys().map(|k| (edit_distance(&key, k), k)).filter(|&(d, _)| d <= limit).min_by_key(|&(d, _)| d).map(|(_, k)| k)
}

/// Levenshtein distance (insertions, deletions, substitutions), by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn base() -> Config {
        Config::new("p", "gtm", 1)
    }

    #[test]
    fn unchanged_reload_changes_nothing() {
        let r = base().reload(base());
        assert_eq!(r, Reload { config: base(), applied: vec![], kept: vec![] });
    }

    #[test]
    fn reload_applies_some_and_keeps_others() {
        let cur = base();
        let mut new = base();
        new.keepalives_idle = 30;
        new.keepalives_count = 4;
        new.hold_timeout = Duration::from_secs(5);
        new.log_min_messages = crate::logging::LogLevel::Log;
        new.port = 7000;
        new.gtm_host = "elsewhere".into();
        new.log_file = "other.log".into();
        let r = cur.reload(new.clone());
        assert_eq!(r.applied, vec!["keepalives_idle", "keepalives_count", "log_min_messages", "hold_timeout"]);
        assert_eq!(r.kept, vec!["port", "gtm_host", "log_file"]);
        assert_eq!(r.config.keepalives_idle, 30);
        assert_eq!(r.config.keepalives_count, 4);
        assert_eq!(r.config.hold_timeout, Duration::from_secs(5));
        assert_eq!(r.config.port, cur.port);
        assert_eq!(r.config.gtm_host, cur.gtm_host);
        assert_eq!(r.config.log_file, cur.log_file);
        assert_eq!(r.config.keepalives(), super::super::Keepalives { idle: 30, interval: 0, count: 4 });
    }

    #[test]
    fn every_key_has_a_reload_rule() {
        for key in all_keys() {
            assert!(takes(key).is_some(), "{key}");
        }
        assert_eq!(takes("KEEPALIVES_IDLE"), Some(Takes::Reload));
        assert_eq!(takes("worker_threads"), Some(Takes::Restart));
        assert_eq!(takes("nonsense"), None);
        assert_eq!(all_keys().count(), 40);
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("gtm_prot"), Some("gtm_port"));
        assert_eq!(suggest("keepalive_idle"), Some("keepalives_idle"));
        assert_eq!(suggest("log_min_message"), Some("log_min_messages"));
        assert_eq!(suggest("Worker_Thread"), Some("worker_threads"));
        assert_eq!(suggest("node_name"), Some("nodename"));
        assert_eq!(suggest("foo_bar"), None);
        assert_eq!(suggest("x"), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
