//! `gtm_sim`: a GTM server that answers every message a proxy or backend sends the
//! way Postgres-XL 10's real `gtm` does, byte for byte, so the proxy can be tested
//! without the C binaries.
//!
//! Layers:
//! * [`state`] (with [`seq`], [`nodes`] and [`decode`]): the GTM state machine. Pure:
//!   no sockets, the clock is injected. [`Gtm::handle_command`] takes one decoded
//!   `C` frame and returns an [`Outcome`];
//! * [`server`]: a single-threaded mio loop (thousands of links) that frames bytes,
//!   applies the proxy-link flush rules and writes results;
//! * [`persist`]: the durable state file behind `--persist`, written with group
//!   commit before any reply of a loop iteration leaves the process.
//!
//! # Where the simulator knowingly differs from the real XL 10 `gtm`
//!
//! Behaviour that matches (including several bugs of the real GTM, kept on
//! purpose) is described at each handler. These are the differences:
//!
//! * **Crashes become a clean, loud exit.** Requests that crash or wedge the
//!   real GTM are logged at ERROR ("would abort the real GTM") and the process
//!   exits with status 3, so a test notices the proxy that sent them:
//!   `MSG_TXN_BEGIN_GETGXID_MULTI` with count ≤ 0 (after the same `E` PANIC the
//!   real GTM sends) or more than 16384 elements, `MSG_SNAPSHOT_GET_MULTI` with a
//!   negative count or more than 16384 elements, `MSG_TXN_COMMIT_MULTI` with a
//!   count below -100 and `MSG_TXN_ROLLBACK_MULTI` below -1 (the real GTM sizes
//!   stack arrays with them; where exactly it dies depends on its stack layout),
//!   `MSG_TXN_GET_GXID` naming a free slot, `MSG_SNAPSHOT_GXID_GET` for an
//!   unknown GXID, and `MSG_SEQUENCE_GET_CURRENT` without a coordinator name
//!   while the sequence has session values. Commit and rollback MULTIs with more
//!   than 16384 elements write past the real GTM's arrays but were answered
//!   normally in tests; the simulator answers them normally at any size.
//! * **`MSG_SEQUENCE_RESET`** answers "lock is not held" after resetting the
//!   value, as the real GTM does; the real GTM has then corrupted its backup lock
//!   and deadlocks at its next control-file write, which is not reproduced.
//! * **Undefined memory is replaced by zeros**: `MSG_SNAPSHOT_GET` /
//!   `MSG_SNAPSHOT_GXID_GET` with count > 2 (the real GTM sends stack garbage after
//!   the count; with a count in the millions it reads off its stack and dies — the
//!   simulator exits above 1000000), and the uninitialised key type and
//!   session-name padding inside `SEQUENCE_LIST_RESULT` blobs.
//! * **Buffer overflows are not reproduced**: over-long node host / data folder
//!   names, `MSG_REPORT_XMIN` node names over 1024 bytes and 2PC node strings over
//!   1023 bytes overflow fixed stack buffers in the real GTM; the simulator just
//!   accepts them. Strings are compared up to their first NUL as the C code does,
//!   but never read past the field they came in.
//! * **Standby and backup traffic is not implemented**: `MSG_BKUP_*`,
//!   `MSG_BEGIN_BACKUP`/`MSG_END_BACKUP` and the
//!   replication-init messages get an `E` (severity ERROR) "gtm_sim does not
//!   support message type N" and the link stays open (`MSG_NODE_LIST`,
//!   `MSG_TXN_GXID_LIST` and `MSG_SYNC_STANDBY` are answered as the real GTM
//!   answers them; see [`txn_list`]). Registering a node of type
//!   GTM does not make the simulator open backup links to it.
//! * **`MSG_SEQUENCE_GET_NEXT` with a huge range** is computed in one step; the
//!   real GTM advances one increment at a time and can spin for a very long time.
//! * **Frames above 1 GiB** (the real GTM's allocation limit) close the link
//!   instead of producing an out-of-memory error and a misread stream.
//! * **Scheduling**: one thread serves every link; within one loop iteration
//!   links are served in slab order, at most 1 MiB of input each. The real GTM
//!   runs a thread per link, so the interleaving of concurrent requests from
//!   different links can differ (each link's own order is kept).
//! * **Restart without `--persist` starts from scratch** at `-x`. The real GTM
//!   reads its control file and skips ahead by its control interval; there is no
//!   control file or `register.node` file here. With `--persist` the state file
//!   continues exactly (next GXID, open transactions with client and proxy
//!   connection ids, sequences, nodes, client id counter), which is how tests play
//!   a promoted standby: the "starting client id" becomes the highest client id
//!   among open transactions, as after `gtm_ctl promote`, but new ids continue
//!   from the saved counter instead of restarting just above that value.
//!   Nodes loaded from the file get the standby's dummy socket (-1): a postmaster
//!   link closing with their type and name marks them disconnected, and
//!   `MSG_BACKEND_DISCONNECT` cannot.
//! * **Node "sockets"** are unique link ids instead of file descriptors, so a
//!   later link never inherits a dead link's registration by fd reuse.
//! * **Logging** uses the `log` crate with our own wording, not the GTM's log
//!   format, and `gtm.control`, `gtm.opts` and `register.node` are not written.
//!   `gtm.pid` is (`PID\nDATA_DIR\n1\n`).

pub mod decode;
pub mod nodes;
pub mod persist;
pub mod seq;
pub mod server;
pub mod state;
pub mod txn_list;
pub mod txns;

#[cfg(test)]
mod tests_seq;
#[cfg(test)]
mod tests_state;

pub use state::{Gtm, GtmConfig};

/// `GTM_MAX_GLOBAL_TRANSACTIONS`: open transactions and MULTI elements.
pub const MAX_TXNS: usize = crate::codec::types::MAX_GLOBAL_TRANSACTIONS;
/// `InvalidGlobalTransactionId`.
pub const INVALID_GXID: u32 = 0;
pub use crate::codec::types::{gxid_advance, gxid_follows_or_equals, gxid_is_normal, gxid_precedes, FIRST_NORMAL_GXID};
/// Default first GXID of a fresh GTM (`-x`).
pub const DEFAULT_FIRST_GXID: u32 = 10000;
/// `NI_MAXHOST`: size of the GTM's node-name buffers; names must be shorter.
pub const NI_MAXHOST: usize = 1025;
/// Exit status of the simulator when a request would have crashed the real GTM.
pub const EXIT_WOULD_CRASH: i32 = 3;

/// Everything the state machine needs to know about the link a request came on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCtx {
    /// Stands in for the GTM's socket descriptor in node bookkeeping; unique per
    /// link, never 0 or negative.
    pub link_id: i64,
    /// The client id the link was given (or re-presented) at startup.
    pub client_id: u32,
    /// `sp_remotetype` of the startup packet; 1 turns on the proxy header.
    pub remote_type: i32,
    /// `sp_ispostmaster` of the startup packet.
    pub is_postmaster: bool,
    /// Node name of the startup packet, up to its first NUL.
    pub node_name: Vec<u8>,
    /// The proxy header of the request being processed (`myport->conn_id`):
    /// -1 on links without header.
    pub conn_id: i16,
}

impl LinkCtx {
    /// A plain (non-proxy) link, handy in tests.
    pub fn direct(link_id: i64, client_id: u32) -> Self {
        LinkCtx { link_id, client_id, remote_type: 6, is_postmaster: false, node_name: Vec::new(), conn_id: -1 }
    }

    /// A proxy worker link (remote type 1) currently processing `conn_id`.
    pub fn proxy(link_id: i64, client_id: u32, conn_id: i16) -> Self {
        LinkCtx { link_id, client_id, remote_type: 1, is_postmaster: false, node_name: Vec::new(), conn_id }
    }

    pub fn is_proxy(&self) -> bool {
        self.remote_type == crate::codec::types::node_type::GTM_PROXY
    }
}

/// What the GTM does in answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An `S` frame. `flush`: the real GTM flushes its socket after this result
    /// even on a proxy link (REPORT_XMIN, SYNC_STANDBY).
    Reply { resp: crate::codec::Response, flush: bool },
    /// Accepted; nothing is sent.
    NoReply,
    /// `E` with severity ERROR; the link stays usable.
    Error(String),
    /// `E` with severity ERROR and a detail field.
    ErrorDetail { message: String, detail: String },
    /// `E` with severity FATAL; the link is closed without the usual link-close
    /// cleanup (open transactions survive, as on the real GTM's fatal path).
    Fatal(String),
    /// The real GTM would crash here. The simulator logs and exits.
    Crash(String),
    /// The real GTM sends `E` with severity PANIC, then aborts. The simulator sends
    /// the same frame, logs and exits.
    Panic(String),
}

impl Outcome {
    pub(crate) fn reply(resp: crate::codec::Response) -> Self {
        Outcome::Reply { resp, flush: false }
    }
    pub(crate) fn error(msg: impl Into<String>) -> Self {
        Outcome::Error(msg.into())
    }
}

/// `GTM_CLIENT_ID_NEXT`.
#[inline]
pub fn client_id_next(a: u32) -> u32 {
    if a.wrapping_add(1) == u32::MAX {
        1
    } else {
        a.wrapping_add(1)
    }
}

/// `GTM_CLIENT_ID_GT`.
#[inline]
pub fn client_id_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// A byte string as C sees it: up to the first NUL.
#[inline]
pub fn cstr(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(n) => &b[..n],
        None => b,
    }
}

/// The GTM clock: microseconds since 2000-01-01 00:00:00 UTC.
pub fn gtm_now() -> i64 {
    const UNIX_TO_2000: i64 = 946_684_800;
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64 - UNIX_TO_2000) * 1_000_000 + i64::from(d.subsec_micros())
}
