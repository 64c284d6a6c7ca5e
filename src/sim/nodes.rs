//! The node registry (`register_common.c`, `register_gtm.c`) and `MSG_REPORT_XMIN`
//! (`GTM_HandleGlobalXmin`).
//!
//! Nodes are keyed by (type, name). A node remembers the link ("socket") that
//! registered it; only that link can mark it disconnected. Re-registering a
//! connected node fails, a disconnected one is reconnected. Coordinators that
//! only announced sessions (`MSG_REGISTER_SESSION`) are registered implicitly,
//! flagged as session registrations.

use bytes::{BufMut, Bytes, BytesMut};

use super::state::Gtm;
use super::*;
use crate::codec::types::node_type;
use crate::codec::{NodeRegister, Response};

/// `NODE_CONNECTED` / `NODE_DISCONNECTED`.
pub const NODE_CONNECTED: i32 = 0;
pub const NODE_DISCONNECTED: i32 = 1;

/// REPORT_XMIN error codes.
pub const XMIN_OK: i32 = 0;
pub const XMIN_TOO_OLD: i32 = 1;
pub const XMIN_NOT_REGISTERED: i32 = 2;
pub const XMIN_EXCLUDED: i32 = 3;

/// `GTM_REPORT_XMIN_DELAY_THRESHOLD`: a node silent this long (µs) leaves the
/// global xmin computation.
pub const XMIN_DELAY_US: i64 = 600 * 1000 * 1000;

/// `SP_NODE_NAME`: coordinator names in `MSG_REGISTER_SESSION` must be shorter.
const SP_NODE_NAME: i32 = 64;
/// Initial capacity of a node's session array.
const INIT_SESSIONS: u32 = 256;
/// `NODE_HASH_TABLE_SIZE`: nodes are listed bucket by bucket.
const NODE_HASH_TABLE_SIZE: u32 = 16;

/// One registered node (`GTM_PGXCNodeInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub node_type: i32,
    pub name: Vec<u8>,
    pub host: Vec<u8>,
    pub port: u32,
    pub proxy_name: Vec<u8>,
    pub data_folder: Vec<u8>,
    pub status: i32,
    /// Link id that registered or reconnected it; 0 after a disconnect or for
    /// implicit registrations, -1 after loading a state file.
    pub socket: i64,
    pub reported_xmin: u32,
    pub reported_xmin_time: i64,
    pub excluded: bool,
    pub joining: bool,
    /// Registered implicitly by `MSG_REGISTER_SESSION`.
    pub is_session: bool,
    /// (coordinator pid, backend id) of announced sessions.
    pub sessions: Vec<(i32, i32)>,
    /// Capacity of the C session array (`max_sessions`), visible in node lists.
    pub max_sessions: u32,
}

/// Registered nodes in registration order.
#[derive(Debug, Clone, Default)]
pub struct Nodes {
    pub list: Vec<Node>,
}

impl Nodes {
    pub fn find(&self, node_type: i32, name: &[u8]) -> Option<usize> {
        self.list.iter().position(|n| n.node_type == node_type && n.name == name)
    }

    pub fn get(&self, node_type: i32, name: &[u8]) -> Option<&Node> {
        self.find(node_type, name).map(|i| &self.list[i])
    }

    /// `pgxcnode_add_info`: false when the node exists and is connected (and the
    /// session-registration exceptions do not apply).
    fn add(&mut self, mut node: Node, global_xmin: u32) -> bool {
        if let Some(i) = self.find(node.node_type, &node.name) {
            let cur = &mut self.list[i];
            if cur.status == NODE_CONNECTED {
                return match (cur.is_session, node.is_session) {
                    (true, false) => {
                        cur.is_session = false;
                        true
                    }
                    (false, true) => true,
                    _ => false,
                };
            }
            // Disconnected: reconnect it. The C code means to refresh the host
            // and data folder but its test compares the wrong things; this is
            // what it actually does.
            cur.port = node.port;
            if cur.data_folder.len() == node.data_folder.len() {
                cur.host = node.host.clone();
            }
            if cur.host.len() == node.host.len() {
                cur.data_folder = node.data_folder;
            }
            cur.status = NODE_CONNECTED;
            cur.socket = node.socket;
            return true;
        }
        if node.reported_xmin == 0 {
            node.reported_xmin = global_xmin;
        }
        self.list.push(node);
        true
    }

    /// The `NODE_LIST_RESULT` payload: count, then a length-prefixed
    /// `gtm_serialize_pgxcnodeinfo` blob per node, in hash-bucket order.
    pub fn list(&self) -> Bytes {
        let mut order: Vec<&Node> = self.list.iter().collect();
        order.sort_by_key(|n| name_hash(&n.name));
        let mut out = BytesMut::new();
        out.put_i32(order.len() as i32);
        for n in order {
            let mut b = BytesMut::new();
            b.put_i32_le(n.node_type);
            for s in [&n.name, &n.proxy_name] {
                b.put_u32_le(s.len() as u32);
                b.extend_from_slice(s);
            }
            b.put_u32_le(n.port);
            for s in [&n.host, &n.data_folder] {
                b.put_u32_le(s.len() as u32);
                b.extend_from_slice(s);
            }
            b.put_i32_le(n.status);
            b.put_u8(n.excluded as u8);
            b.put_u32_le(n.reported_xmin);
            b.put_i64_le(n.reported_xmin_time);
            b.put_u32_le(n.max_sessions);
            b.put_u32_le(n.sessions.len() as u32);
            for (pid, backend) in &n.sessions {
                b.put_i32_le(*pid);
                b.put_i32_le(*backend);
            }
            out.put_i32(b.len() as i32);
            out.extend_from_slice(&b);
        }
        out.freeze()
    }

    /// Link close on a postmaster link (`Recovery_PGXCNodeDisconnect`): the node
    /// named by the startup packet, if registered through this link (or loaded
    /// from a state file), is marked disconnected.
    pub fn disconnect_on_close(&mut self, remote_type: i32, name: &[u8], link_id: i64) {
        if let Some(i) = self.find(remote_type, name) {
            let n = &mut self.list[i];
            if n.socket >= 0 && n.socket != link_id {
                return;
            }
            n.status = NODE_DISCONNECTED;
            n.socket = 0;
        }
    }
}

/// `pgxcnode_gethash`, with C's wrapping `int` arithmetic and signed `char`s.
fn name_hash(name: &[u8]) -> u32 {
    if name.is_empty() {
        return 0;
    }
    let mut value = 0x238F_13AFi32.wrapping_mul(name.len() as i32);
    for (i, &c) in name.iter().enumerate() {
        let shifted = (c as i8 as i32).wrapping_shl(((i * 5) % 24) as u32);
        value = value.wrapping_add(shifted & 0x7fff_ffff);
    }
    let hash = (1_103_515_243i32.wrapping_mul(value).wrapping_add(12345) % 65537) & 0x0FFF;
    hash as u32 % NODE_HASH_TABLE_SIZE
}

fn node_type_known(t: i32) -> bool {
    (node_type::GTM_PROXY..=node_type::DEFAULT).contains(&t)
}

impl Gtm {
    /// `MSG_NODE_REGISTER`, checks in the GTM's order.
    pub(crate) fn node_register(&mut self, link: &LinkCtx, n: NodeRegister) -> Outcome {
        if n.name.len() >= NI_MAXHOST {
            return Outcome::error("Invalid name length.");
        }
        if n.proxy_name.len() >= NI_MAXHOST {
            return Outcome::error("Invalid proxy name length.");
        }
        if !node_type_known(n.node_type) {
            return Outcome::error("Unknown node type.");
        }
        let name = cstr(&n.name).to_vec();
        if n.node_type == node_type::GTM {
            // Only one standby: a new one replaces whatever was registered.
            if let Some(i) = self.nodes.find(n.node_type, &name) {
                self.nodes.list.remove(i);
            }
        }
        let node = Node {
            node_type: n.node_type,
            name: name.clone(),
            host: cstr(&n.host).to_vec(),
            port: n.port,
            proxy_name: cstr(&n.proxy_name).to_vec(),
            data_folder: cstr(&n.data_folder).to_vec(),
            status: n.status,
            socket: link.link_id,
            reported_xmin: 0,
            reported_xmin_time: 0,
            excluded: false,
            joining: false,
            is_session: false,
            sessions: Vec::new(),
            max_sessions: 0,
        };
        let global_xmin = self.global_xmin;
        if !self.nodes.add(node, global_xmin) {
            log::info!("node {} (type {}) is already registered", String::from_utf8_lossy(&name), n.node_type);
            return Outcome::error("Failed to Register node");
        }
        self.touch();
        Outcome::reply(Response::NodeRegister { node_type: n.node_type, name: Bytes::from(name) })
    }

    pub(crate) fn node_unregister(&mut self, node_type: i32, name: &[u8]) -> Outcome {
        if name.len() >= NI_MAXHOST {
            return Outcome::error("Invalid node name length");
        }
        let name = cstr(name);
        let Some(i) = self.nodes.find(node_type, name) else {
            return Outcome::error("Failed to Unregister node");
        };
        self.nodes.list.remove(i);
        self.touch();
        Outcome::reply(Response::NodeUnregister { node_type, name: Bytes::copy_from_slice(name) })
    }

    /// `MSG_REGISTER_SESSION`: remember (pid, backend id) under the coordinator,
    /// registering the coordinator implicitly; a reused backend id drops the
    /// previous session's sequence values.
    pub(crate) fn register_session(&mut self, coord_name: &[u8], pid: i32, backend_id: i32) -> Outcome {
        if coord_name.len() as i64 >= i64::from(SP_NODE_NAME) {
            return Outcome::error("Invalid name length.");
        }
        let reply = Outcome::reply(Response::RegisterSession);
        if coord_name.is_empty() && pid <= 0 && backend_id == -1 {
            return reply;
        }
        let name = cstr(coord_name).to_vec();
        if self.nodes.find(node_type::COORDINATOR, &name).is_none() {
            let node = Node {
                node_type: node_type::COORDINATOR,
                name: name.clone(),
                host: Vec::new(),
                port: 0,
                proxy_name: Vec::new(),
                data_folder: Vec::new(),
                status: NODE_CONNECTED,
                socket: 0,
                reported_xmin: 0,
                reported_xmin_time: 0,
                excluded: false,
                joining: false,
                is_session: true,
                sessions: Vec::new(),
                max_sessions: 0,
            };
            let gx = self.global_xmin;
            self.nodes.add(node, gx);
        }
        let Some(i) = self.nodes.find(node_type::COORDINATOR, &name) else { return reply };
        self.touch();
        let node = &mut self.nodes.list[i];
        let mut old_pid = 0;
        if !node.sessions.iter().any(|s| s.0 == pid) {
            if let Some(s) = node.sessions.iter_mut().find(|s| s.1 == backend_id) {
                old_pid = s.0;
                s.0 = pid;
            } else {
                if node.sessions.len() as u32 == node.max_sessions {
                    node.max_sessions = if node.max_sessions == 0 { INIT_SESSIONS } else { node.max_sessions * 2 };
                }
                node.sessions.push((pid, backend_id));
            }
        }
        if old_pid != 0 {
            self.seqs.cleanup_session(&name, old_pid);
        }
        reply
    }

    /// The node half of `MSG_BACKEND_DISCONNECT`: only the link that registered
    /// the node can disconnect it.
    pub(crate) fn backend_disconnect_node(&mut self, link: &LinkCtx, node_type: i32, name: &[u8]) {
        if name.len() >= NI_MAXHOST {
            log::info!("invalid node name length {} in MSG_BACKEND_DISCONNECT", name.len());
            return;
        }
        match self.nodes.find(node_type, cstr(name)) {
            Some(i) if self.nodes.list[i].socket == link.link_id => {
                let n = &mut self.nodes.list[i];
                n.status = NODE_DISCONNECTED;
                n.socket = 0;
                self.touch();
            }
            _ => log::info!("cannot disconnect unregistered node {}", String::from_utf8_lossy(name)),
        }
    }

    /// `MSG_REPORT_XMIN` (`GTM_HandleGlobalXmin`); the result is flushed at once
    /// even on proxy links.
    pub(crate) fn report_xmin(&mut self, reported: u32, node_type: i32, name: &[u8]) -> Outcome {
        let (global_xmin, errcode) = self.handle_global_xmin(reported, node_type, cstr(name));
        let resp = Response::ReportXmin { latest_completed: self.latest_completed, global_xmin, errcode };
        Outcome::Reply { resp, flush: true }
    }

    fn handle_global_xmin(&mut self, reported: u32, node_type: i32, name: &[u8]) -> (u32, i32) {
        let Some(me) = self.nodes.find(node_type, name) else {
            log::info!("REPORT_XMIN from unregistered node {}", String::from_utf8_lossy(name));
            return (INVALID_GXID, XMIN_NOT_REGISTERED);
        };
        let now = self.now();
        let gx = self.global_xmin;
        self.touch();
        let n = &mut self.nodes.list[me];
        if n.excluded && gxid_precedes(reported, gx) {
            n.joining = true;
            n.reported_xmin_time = now;
            n.reported_xmin = gx;
            return (INVALID_GXID, XMIN_EXCLUDED);
        }
        if gxid_precedes(reported, gx) {
            n.joining = true;
            n.reported_xmin_time = now;
            n.reported_xmin = gx;
            return (INVALID_GXID, XMIN_TOO_OLD);
        }
        n.reported_xmin = reported;
        if n.excluded {
            n.excluded = false;
            n.joining = false;
        }
        n.reported_xmin_time = now;

        // Nodes that stayed silent too long leave the computation.
        for n in self.nodes.list.iter_mut() {
            if (n.excluded && !n.joining) || !is_data_node_type(n.node_type) {
                continue;
            }
            if n.reported_xmin_time != 0 && now - n.reported_xmin_time >= XMIN_DELAY_US {
                log::info!("excluding node {} from the global xmin (silent)", String::from_utf8_lossy(&n.name));
                n.excluded = true;
                n.joining = false;
            }
        }

        let mut global =
            if self.latest_completed == INVALID_GXID { FIRST_NORMAL_GXID } else { gxid_advance(self.latest_completed) };
        for t in self.txns() {
            for x in [t.xmin, t.gxid] {
                if gxid_is_normal(x) && gxid_precedes(x, global) {
                    global = x;
                }
            }
        }
        for n in &self.nodes.list {
            if n.excluded || !is_data_node_type(n.node_type) {
                continue;
            }
            if global == INVALID_GXID || gxid_precedes(n.reported_xmin, global) {
                global = n.reported_xmin;
            }
        }
        if global != INVALID_GXID {
            if gxid_precedes(self.global_xmin, global) {
                self.global_xmin = global;
            } else if gxid_precedes(global, self.global_xmin) {
                global = self.global_xmin;
            }
        }
        (global, XMIN_OK)
    }
}

fn is_data_node_type(t: i32) -> bool {
    t == node_type::COORDINATOR || t == node_type::DATANODE
}
