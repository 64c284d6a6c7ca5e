//! Access control: which peers may use the proxy.
//!
//! The GTM protocol carries no authentication, so whoever reaches the port
//! can begin and end cluster-wide transactions. An allow-list narrows that
//! down: client networks (CIDR, IPv4 and IPv6), checked when a connection is
//! accepted, and optionally node names and remote types, checked once the
//! startup packet names them. An empty list allows everything on that axis.
//! Everything here is a pure decision; the callers refuse with `E` FATAL
//! and log.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use crate::codec::types::node_type;

/// One network: an address and the length of its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `a.b.c.d/n`, `x::y/n`, or a bare address (a single host).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a.trim(), Some(p.trim())),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| format!("\"{a}\" is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("\"{p}\" is not a prefix length between 0 and {max}")),
            },
        };
        // A mapped IPv6 network (`::ffff:10.0.0.0/104`) is the IPv4 network it
        // carries, since peers are compared in their IPv4 form.
        match (addr, normalize(addr)) {
            (IpAddr::V6(_), IpAddr::V4(v4)) if prefix >= 96 => Ok(Cidr { addr: IpAddr::V4(v4), prefix: prefix - 96 }),
            _ => Ok(Cidr { addr, prefix }),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, normalize(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => masked(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32),
            (IpAddr::V6(net), IpAddr::V6(ip)) => masked(u128::from(net), u128::from(ip), self.prefix, 128),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack
/// listener reports) is the IPv4 address it carries.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn masked(net: u128, ip: u128, prefix: u8, bits: u32) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - u32::from(prefix);
    (net >> shift) == (ip >> shift)
}

fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

/// `allowed_client_networks`: a comma-separated list of networks.
pub fn parse_networks(s: &str) -> Result<Vec<Cidr>, String> {
    items(s).map(Cidr::parse).collect()
}

/// `allowed_node_names`: a comma-separated list of names.
pub fn parse_node_names(s: &str) -> Vec<String> {
    items(s).map(str::to_string).collect()
}

const REMOTE_TYPES: [(&str, i32); 6] = [
    ("gtm_proxy", node_type::GTM_PROXY),
    ("gtm_proxy_postmaster", node_type::GTM_PROXY_POSTMASTER),
    ("coordinator", node_type::COORDINATOR),
    ("datanode", node_type::DATANODE),
    ("gtm", node_type::GTM),
    ("default", node_type::DEFAULT),
];

/// `allowed_remote_types`: names (`coordinator`, `datanode`, `default`,
/// `gtm_proxy`, `gtm_proxy_postmaster`, `gtm`) or their numbers.
pub fn parse_remote_types(s: &str) -> Result<Vec<i32>, String> {
    items(s)
        .map(|t| {
            let lower = t.to_ascii_lowercase();
            REMOTE_TYPES
                .iter()
                .find(|(n, _)| *n == lower)
                .map(|(_, v)| *v)
                .or_else(|| t.parse::<i32>().ok().filter(|v| REMOTE_TYPES.iter().any(|(_, k)| k == v)))
                .ok_or_else(|| {
                    format!("\"{t}\" is not a remote type (coordinator, datanode, default, gtm_proxy, gtm_proxy_postmaster, gtm)")
                })
        })
        .collect()
}

fn remote_type_name(t: i32) -> String {
    REMOTE_TYPES.iter().find(|(_, v)| *v == t).map(|(n, _)| n.to_string()).unwrap_or_else(|| t.to_string())
}

/// The three lists; empty means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    pub networks: Vec<Cidr>,
    pub node_names: Vec<String>,
    pub remote_types: Vec<i32>,
}

/// Why a peer is turned away (the text goes into its `E` and the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deny {
    Network(IpAddr),
    NodeName(String),
    RemoteType(i32),
}

impl fmt::Display for Deny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Deny::Network(ip) => {
                write!(f, "connections from {ip} are not allowed by gtm_proxy (allowed_client_networks)")
            }
            Deny::NodeName(n) => write!(f, "node name \"{n}\" is not allowed by gtm_proxy (allowed_node_names)"),
            Deny::RemoteType(t) => {
                write!(f, "remote type {} is not allowed by gtm_proxy (allowed_remote_types)", remote_type_name(*t))
            }
        }
    }
}

impl AllowList {
    /// From the three configuration values (already validated when the
    /// configuration was read).
    pub fn parse(networks: &str, node_names: &str, remote_types: &str) -> Result<AllowList, String> {
        Ok(AllowList {
            networks: parse_networks(networks)?,
            node_names: parse_node_names(node_names),
            remote_types: parse_remote_types(remote_types)?,
        })
    }

    pub fn from_config(cfg: &crate::config::Config) -> Result<AllowList, String> {
        Self::parse(&cfg.allowed_client_networks, &cfg.allowed_node_names, &cfg.allowed_remote_types)
    }

    /// The accept-time check: the peer's network.
    pub fn check_peer(&self, ip: IpAddr) -> Result<(), Deny> {
        if self.networks.is_empty() || self.networks.iter().any(|n| n.contains(ip)) {
            Ok(())
        } else {
            Err(Deny::Network(normalize(ip)))
        }
    }

    /// The whole decision once the startup packet is in: network, node name
    /// (compared byte for byte) and remote type.
    pub fn check(&self, ip: IpAddr, node_name: &[u8], remote_type: i32) -> Result<(), Deny> {
        self.check_peer(ip)?;
        if !self.node_names.is_empty() && !self.node_names.iter().any(|n| n.as_bytes() == node_name) {
            return Err(Deny::NodeName(String::from_utf8_lossy(node_name).into_owned()));
        }
        if !self.remote_types.is_empty() && !self.remote_types.contains(&remote_type) {
            return Err(Deny::RemoteType(remote_type));
        }
        Ok(())
    }

    /// Whether the startup packet needs checking at all.
    pub fn checks_startup(&self) -> bool {
        !self.node_names.is_empty() || !self.remote_types.is_empty()
    }
}

/// Denials share one log budget: one line per 10 s, the next one says how
/// many were left out, so a scanner cannot flood the log.
static DENIED_LOG: Mutex<super::acceptor::RateLimit> =
    Mutex::new(super::acceptor::RateLimit::new(Duration::from_secs(10)));

/// Log a refused peer (rate-limited).
pub fn report_denied(peer: &dyn fmt::Display, deny: &Deny) {
    let Ok(mut limit) = DENIED_LOG.lock() else { return };
    if limit.allow() {
        log::warn!("refusing connection from {peer}: {deny}{}", limit.suppressed_note());
    }
}

/// The startup-time decision against the lists of `cfg`: nothing to do
/// (and nothing parsed) unless node names or remote types are restricted.
pub fn check_startup(
    cfg: &crate::config::Config,
    peer: Option<SocketAddr>,
    node_name: &[u8],
    remote_type: i32,
) -> Result<(), Deny> {
    if cfg.allowed_node_names.trim().is_empty() && cfg.allowed_remote_types.trim().is_empty() {
        return Ok(());
    }
    // The lists were validated when the configuration was read; a list that
    // does not parse here allows nothing rather than everything.
    let Ok(list) = AllowList::from_config(cfg) else { return Err(Deny::RemoteType(remote_type)) };
    match peer {
        Some(p) => list.check(p.ip(), node_name, remote_type),
        None => AllowList { networks: Vec::new(), ..list }.check(IpAddr::from([0, 0, 0, 0]), node_name, remote_type),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_v4() {
        let n = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(n.contains(ip("10.1.255.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(!n.contains(ip("::1")));
        let host = Cidr::parse("127.0.0.2").unwrap();
        assert!(host.contains(ip("127.0.0.2")));
        assert!(!host.contains(ip("127.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("192.0.2.7")));
        // Host bits in the network part do not matter.
        assert!(Cidr::parse("10.1.2.3/8").unwrap().contains(ip("10.200.0.1")));
    }

    #[test]
    fn cidr_v6_and_mapped() {
        let n = Cidr::parse("2001:db8::/32").unwrap();
        assert!(n.contains(ip("2001:db8:1::5")));
        assert!(!n.contains(ip("2001:db9::5")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("fe80::1")));
        assert!(!Cidr::parse("::/0").unwrap().contains(ip("10.0.0.1")));
        // A dual-stack listener reports IPv4 peers as mapped addresses.
        let v4 = Cidr::parse("192.168.0.0/24").unwrap();
        assert!(v4.contains(ip("::ffff:192.168.0.9")));
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped.contains(ip("10.0.0.1")));
        assert!(!mapped.contains(ip("11.0.0.1")));
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn cidr_errors() {
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "host.example", "10.0.0.0/-1", "1.2.3.4/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_networks("10.0.0.0/8, bogus").is_err());
        assert_eq!(parse_networks(" 10.0.0.0/8 , ::1 ,").unwrap().len(), 2);
        assert!(parse_networks("").unwrap().is_empty());
    }

    #[test]
    fn remote_types() {
        assert_eq!(
            parse_remote_types("Coordinator, datanode,6").unwrap(),
            vec![node_type::COORDINATOR, node_type::DATANODE, node_type::DEFAULT]
        );
        assert!(parse_remote_types("postgres").is_err());
        assert!(parse_remote_types("7").is_err());
        assert!(parse_remote_types("").unwrap().is_empty());
    }

    #[test]
    fn empty_list_allows_everything() {
        let a = AllowList::default();
        assert_eq!(a.check(ip("203.0.113.9"), b"anyone", 42), Ok(()));
        assert!(!a.checks_startup());
    }

    #[test]
    fn decisions() {
        let a = AllowList::parse("127.0.0.0/8, ::1", "coord1, dn1", "coordinator,datanode").unwrap();
        assert!(a.checks_startup());
        assert_eq!(a.check(ip("127.0.0.1"), b"coord1", node_type::COORDINATOR), Ok(()));
        assert_eq!(a.check(ip("::1"), b"dn1", node_type::DATANODE), Ok(()));
        assert_eq!(a.check_peer(ip("10.0.0.1")), Err(Deny::Network(ip("10.0.0.1"))));
        assert_eq!(
            a.check(ip("::ffff:10.0.0.1"), b"coord1", node_type::COORDINATOR),
            Err(Deny::Network(ip("10.0.0.1")))
        );
        assert_eq!(a.check(ip("127.0.0.1"), b"coord2", node_type::COORDINATOR), Err(Deny::NodeName("coord2".into())));
        // Names compare exactly: no prefix or case folding.
        assert!(a.check(ip("127.0.0.1"), b"coord", node_type::COORDINATOR).is_err());
        assert!(a.check(ip("127.0.0.1"), b"COORD1", node_type::COORDINATOR).is_err());
        assert_eq!(a.check(ip("127.0.0.1"), b"dn1", node_type::DEFAULT), Err(Deny::RemoteType(node_type::DEFAULT)));
        let msg = Deny::RemoteType(node_type::DEFAULT).to_string();
        assert!(msg.contains("default") && msg.contains("allowed_remote_types"), "{msg}");
        assert!(Deny::Network(ip("10.0.0.1")).to_string().contains("10.0.0.1"));
    }

    #[test]
    fn startup_check_from_config() {
        let mut cfg = crate::config::Config::new("p", "127.0.0.1", 6666);
        let peer: Option<SocketAddr> = Some("10.0.0.1:5000".parse().unwrap());
        assert_eq!(check_startup(&cfg, peer, b"anyone", 42), Ok(()));
        cfg.allowed_client_networks = "127.0.0.1".into();
        // The network alone is checked at accept, not here.
        assert_eq!(check_startup(&cfg, peer, b"anyone", 42), Ok(()));
        cfg.allowed_node_names = "dn1".into();
        assert_eq!(check_startup(&cfg, peer, b"dn1", 4), Err(Deny::Network(ip("10.0.0.1"))));
        let local: Option<SocketAddr> = Some("127.0.0.1:5000".parse().unwrap());
        assert_eq!(check_startup(&cfg, local, b"dn1", 4), Ok(()));
        assert_eq!(check_startup(&cfg, local, b"dn2", 4), Err(Deny::NodeName("dn2".into())));
        cfg.allowed_remote_types = "coordinator".into();
        assert_eq!(check_startup(&cfg, local, b"dn1", 4), Err(Deny::RemoteType(4)));
        assert_eq!(check_startup(&cfg, None, b"dn1", 3), Ok(()));
    }

    #[test]
    fn only_types_restricted() {
        let a = AllowList::parse("", "", "datanode").unwrap();
        assert_eq!(a.check(ip("198.51.100.1"), b"x", node_type::DATANODE), Ok(()));
        assert!(a.check(ip("198.51.100.1"), b"x", node_type::COORDINATOR).is_err());
    }
}
