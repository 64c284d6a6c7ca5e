//! The GTM state machine: transactions, snapshots and message dispatch.
//!
//! Each handler follows the corresponding `Process*Command` of XL 10's
//! `src/gtm/main/gtm_txn.c` / `gtm_snap.c`: same checks in the same order, same
//! error texts, same quirks. Sequences live in [`super::seq`], nodes and
//! `MSG_REPORT_XMIN` in [`super::nodes`], GTM-exact parsing of malformed payloads
//! in [`super::decode`].

use bytes::{BufMut, Bytes, BytesMut};

use super::nodes::Nodes;
use super::seq::{SeqEnd, Sequences};
use super::txns::{Txn, TxnId, TxnState, Txns};
use super::*;
use crate::codec::types::{status, MsgType, ResultType};
use crate::codec::{BeginElem, Request, Response, Snapshot, StartupPacket};

/// The GTM's notion of "now", in GTM timestamp units.
pub type Clock = Box<dyn FnMut() -> i64 + Send>;

/// Start-up parameters of a fresh GTM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GtmConfig {
    /// First GXID handed out (`-x`).
    pub first_gxid: u32,
}

impl Default for GtmConfig {
    fn default() -> Self {
        GtmConfig { first_gxid: DEFAULT_FIRST_GXID }
    }
}

/// `MaxAllocSize`: no GTM message buffer grows beyond it.
const MAX_ALLOC_SIZE: usize = 0x3fff_ffff;
/// Largest `MSG_SNAPSHOT_GET` count taken as survivable: the real GTM answered
/// 100000 (with garbage) and died at 10000000.
const SNAPSHOT_COUNT_SURVIVED: i32 = 1_000_000;

/// `GTM_ISOLATION_SERIALIZABLE`.
const ISOLATION_SERIALIZABLE: i32 = 0;

/// The whole GTM state.
pub struct Gtm {
    /// `gt_nextXid`.
    pub(crate) next_gxid: u32,
    /// `gt_latestCompletedXid`: the highest GXID that committed or aborted.
    pub(crate) latest_completed: u32,
    /// `gt_recent_global_xmin` (`GTM_GlobalXmin`).
    pub(crate) global_xmin: u32,
    pub(crate) txns: Txns,
    pub(crate) nodes: Nodes,
    pub(crate) seqs: Sequences,
    /// `gt_next_client_id`: the id the next accepted link gets.
    pub(crate) next_client_id: u32,
    /// `gt_starting_client_id`: re-presented ids up to this one are honoured.
    pub(crate) starting_client_id: u32,
    clock: Clock,
    dirty: bool,
}

impl std::fmt::Debug for Gtm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gtm")
            .field("next_gxid", &self.next_gxid)
            .field("latest_completed", &self.latest_completed)
            .field("global_xmin", &self.global_xmin)
            .field("open_txns", &self.txns.len())
            .field("next_client_id", &self.next_client_id)
            .finish()
    }
}

/// One begin request element, whatever message it came in.
struct BeginReq<'a> {
    isolation: i32,
    read_only: bool,
    session: &'a [u8],
    conn_id: i16,
}

/// How a transaction leaves the table; decides what happens to its sequences.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnEnd {
    Commit,
    Abort,
    /// Link close / backend disconnect: removed without touching sequences.
    Cleanup,
}

impl Gtm {
    /// A fresh GTM, as started with `-x first_gxid` on an empty data directory.
    pub fn new(cfg: GtmConfig, clock: Clock) -> Self {
        let first = if gxid_is_normal(cfg.first_gxid) { cfg.first_gxid } else { FIRST_NORMAL_GXID };
        Gtm {
            next_gxid: first,
            latest_completed: first.wrapping_sub(1),
            global_xmin: first,
            txns: Txns::default(),
            nodes: Nodes::default(),
            seqs: Sequences::default(),
            // The GTM's main thread takes id 1.
            next_client_id: 2,
            starting_client_id: 0,
            clock,
            dirty: false,
        }
    }

    /// A fresh GTM with the system clock.
    pub fn with_system_clock(cfg: GtmConfig) -> Self {
        Gtm::new(cfg, Box::new(gtm_now))
    }

    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    pub(crate) fn now(&mut self) -> i64 {
        (self.clock)()
    }

    pub(crate) fn touch(&mut self) {
        self.dirty = true;
    }

    /// Whether anything durable changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn next_gxid(&self) -> u32 {
        self.next_gxid
    }

    pub fn latest_completed(&self) -> u32 {
        self.latest_completed
    }

    pub fn global_xmin(&self) -> u32 {
        self.global_xmin
    }

    pub fn open_txn_count(&self) -> usize {
        self.txns.len()
    }

    /// The open transaction with this GXID.
    pub fn txn(&self, gxid: u32) -> Option<&Txn> {
        self.txns.find_gxid(gxid).and_then(|id| self.txns.get(id))
    }

    /// Open transactions in begin order.
    pub fn txns(&self) -> impl Iterator<Item = &Txn> {
        self.txns.iter().map(|(_, t)| t)
    }

    pub fn starting_client_id(&self) -> u32 {
        self.starting_client_id
    }

    /// A link was accepted: like the GTM's new connection thread, it takes the
    /// next client id whether or not its startup packet turns out valid.
    pub fn accept(&mut self) -> u32 {
        let id = self.next_client_id;
        self.next_client_id = client_id_next(id);
        self.touch();
        id
    }

    /// The client id a link ends up with after its startup packet: the
    /// re-presented id if non-zero and not above the starting client id.
    pub fn startup(&self, assigned: u32, sp: &StartupPacket) -> u32 {
        if sp.client_id != 0 && sp.client_id <= self.starting_client_id {
            sp.client_id
        } else {
            assigned
        }
    }

    /// Promotion bookkeeping after loading durable state: the starting client id
    /// becomes the highest client id among open transactions.
    pub(crate) fn set_starting_client_id_from_txns(&mut self) {
        self.starting_client_id = self.txns.last_client_id();
    }

    /// `X` or EOF on an established link: abort every non-prepared transaction of
    /// its client id and, for a postmaster link, mark its node disconnected.
    pub fn link_closed(&mut self, link: &LinkCtx) {
        self.remove_all(link.client_id, -1);
        if link.is_postmaster {
            self.nodes.disconnect_on_close(link.remote_type, &link.node_name, link.link_id);
            self.touch();
        }
    }

    /// One `C` frame. The codec decodes the payload; when it refuses, the GTM's
    /// own reading order decides the answer ([`super::decode`]).
    pub fn handle_command(&mut self, link: &LinkCtx, msg_type: MsgType, payload: Bytes) -> Outcome {
        match Request::decode(msg_type, payload.clone()) {
            Ok(req) => self.handle(link, req),
            Err(_) => self.handle_malformed(link, msg_type, payload),
        }
    }

    /// One typed request.
    pub fn handle(&mut self, link: &LinkCtx, req: Request) -> Outcome {
        use Request as R;
        match req {
            R::NodeRegister(n) => self.node_register(link, n),
            R::NodeUnregister { node_type, name } => self.node_unregister(node_type, &name),
            R::RegisterSession { coord_name, coord_pid, backend_id } => {
                self.register_session(&coord_name, coord_pid, backend_id)
            }
            R::ReportXmin { gxid, node_type, name } => self.report_xmin(gxid, node_type, &name),
            R::TxnBegin(b) => self.begin_handle(link, b.isolation, b.read_only, &b.session_id),
            R::TxnBeginGetGxid(b) => self.begin_getgxid(link, b.isolation, b.read_only, &b.session_id),
            R::TxnBeginGetGxidMulti(v) => self.begin_multi(link, &v),
            R::TxnBeginGetGxidAutovacuum { isolation, read_only } => self.begin_autovacuum(link, isolation, read_only),
            R::TxnStartPrepared { gxid, gid, nodes } => self.start_prepared(gxid, &gid, &nodes),
            R::TxnCommit { gxid, waited } => {
                let id = self.txns.find_gxid(gxid);
                let st = self.commit_ids(&[id], &waited);
                Outcome::reply(Response::TxnCommit { gxid, status: st[0] })
            }
            R::TxnCommitMulti(v) => self.commit_multi(&v),
            R::TxnCommitPrepared { gxid, prepared_gxid, waited } => {
                let ids = [self.txns.find_gxid(gxid), self.txns.find_gxid(prepared_gxid)];
                let st = self.commit_ids(&ids, &waited);
                Outcome::reply(Response::TxnCommitPrepared { gxid, status: st[0] })
            }
            R::TxnPrepare { gxid } => {
                if let Some(id) = self.txns.find_gxid(gxid) {
                    if let Some(t) = self.txns.get_mut(id) {
                        t.state = TxnState::Prepared;
                    }
                    self.touch();
                }
                Outcome::reply(Response::TxnPrepare { gxid })
            }
            R::TxnRollback { gxid } => {
                let id = self.txns.find_gxid(gxid);
                let st = self.rollback_ids(&[id]);
                Outcome::reply(Response::TxnRollback { gxid, status: Some(st[0]) })
            }
            R::TxnRollbackMulti(v) => self.rollback_multi(&v),
            R::TxnGetGidData { isolation, read_only, gid } => self.get_gid_data(link, isolation, read_only, &gid),
            R::TxnGetGxid { handle } => self.get_gxid(handle),
            R::TxnGetNextGxid => Outcome::reply(Response::TxnGetNextGxid { gxid: self.next_gxid }),
            R::SnapshotGet { count, gxid } => self.snapshot_get(link, count, gxid, false),
            R::SnapshotGxidGet { count, gxid } => self.snapshot_get(link, count, gxid, true),
            R::SnapshotGetMulti(v) => self.snapshot_multi(&v),
            R::SequenceInit { key, increment, min, max, start, cycle, gxid } => {
                self.seq_init(&key, [increment, min, max, start], cycle, gxid)
            }
            R::SequenceAlter { key, increment, min, max, start, last, cycle, restart } => {
                self.seq_alter(&key, [increment, min, max, start, last], cycle, restart)
            }
            R::SequenceGetCurrent { key, session } => {
                self.seq_get_current(&key, &session.coord_name, session.coord_pid)
            }
            R::SequenceGetNext { key, session, range } => {
                self.seq_get_next(&key, &session.coord_name, session.coord_pid, range)
            }
            R::SequenceSetVal { key, session, value, is_called } => {
                self.seq_set_val(&key, &session.coord_name, session.coord_pid, value, is_called)
            }
            R::SequenceReset { key } => self.seq_reset(&key),
            R::SequenceClose { key, key_type, gxid } => self.seq_close(&key, key_type, gxid),
            R::SequenceRename { key, new_key, gxid } => self.seq_rename(&key, &new_key, gxid),
            // No handler on the GTM: accepted, never answered.
            R::SequenceGetLast { .. } => NoReply,
            R::BackendDisconnect { is_postmaster, node } => {
                self.remove_all(link.client_id, link.conn_id);
                if is_postmaster {
                    if let Some((t, name)) = node {
                        self.backend_disconnect_node(link, t, &name);
                    }
                }
                NoReply
            }
            R::Barrier { id } => {
                log::info!("processing BARRIER {}", String::from_utf8_lossy(cstr(&id)));
                Outcome::reply(Response::Barrier)
            }
            R::Other { msg_type, payload } => self.other(msg_type, &payload),
        }
    }

    /// Message types the codec does not model.
    fn other(&mut self, msg_type: MsgType, payload: &[u8]) -> Outcome {
        match msg_type {
            MsgType::SYNC_STANDBY => {
                if !payload.is_empty() {
                    return Outcome::error("invalid message format");
                }
                let resp = Response::Other { result_type: ResultType::SYNC_STANDBY_RESULT, payload: Bytes::new() };
                Outcome::Reply { resp, flush: true }
            }
            MsgType::NODE_LIST => {
                // The list is built before the trailing-bytes check; no side effects.
                if !payload.is_empty() {
                    return Outcome::error("invalid message format");
                }
                let resp = Response::Other { result_type: ResultType::NODE_LIST_RESULT, payload: self.nodes.list() };
                Outcome::reply(resp)
            }
            MsgType::TXN_GXID_LIST => {
                if !payload.is_empty() {
                    return Outcome::error("invalid message format");
                }
                let table = super::txn_list::serialize(self);
                let mut p = BytesMut::with_capacity(4 + table.len());
                p.put_i32(table.len() as i32);
                p.extend_from_slice(&table);
                Outcome::reply(Response::Other { result_type: ResultType::TXN_GXID_LIST_RESULT, payload: p.freeze() })
            }
            MsgType::SEQUENCE_LIST => {
                if !payload.is_empty() {
                    return Outcome::error("invalid message format");
                }
                let resp = Response::Other { result_type: ResultType::SEQUENCE_LIST_RESULT, payload: self.seqs.list() };
                Outcome::reply(resp)
            }
            // Dispatched by the GTM to a handler that does nothing.
            MsgType::TXN_GET_STATUS | MsgType::TXN_GET_ALL_PREPARED | MsgType::BKUP_TXN_GET_GXID => NoReply,
            t if t.0 >= 1 && t.0 <= 66 && t != MsgType::DATA_FLUSH => {
                Outcome::error(format!("gtm_sim does not support message type {} ({})", t.0, t.name().unwrap_or("?")))
            }
            t => Outcome::Fatal(format!("invalid frontend message type {}", t.0)),
        }
    }

    // ---------------------------------------------------------------- begin

    /// `GTM_BeginTransactionMulti`: a transaction per element, reusing the open
    /// transaction of a matching session. Stops at the first element that finds
    /// the table full; the elements before it stay begun (without GXIDs), as on
    /// the real GTM.
    fn begin_txns(&mut self, link: &LinkCtx, reqs: &[BeginReq]) -> Result<Vec<TxnId>, String> {
        let mut ids = Vec::with_capacity(reqs.len());
        for r in reqs {
            if let Some(id) = self.txns.find_session(r.session) {
                ids.push(id);
                continue;
            }
            let Some(slot) = self.txns.alloc_slot() else {
                return Err(format!("Max global transactions limit reached ({MAX_TXNS})"));
            };
            let txn = Txn::new(slot, link.client_id, r.conn_id, r.isolation, r.read_only, r.session);
            ids.push(self.txns.insert(txn));
            self.touch();
        }
        Ok(ids)
    }

    /// `GTM_GetGlobalTransactionIdMulti`: a GXID for each transaction that has
    /// none yet; the GXID of every element in order.
    fn assign_gxids(&mut self, ids: &[TxnId]) -> Vec<u32> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let existing = self.txns.get(id).map_or(0, |t| t.gxid);
            if existing != 0 {
                out.push(existing);
                continue;
            }
            let gxid = self.next_gxid;
            self.next_gxid = gxid_advance(gxid);
            self.txns.set_gxid(id, gxid);
            self.touch();
            out.push(gxid);
        }
        out
    }

    /// `MSG_TXN_BEGIN`: a transaction without GXID; the answer is its slot.
    fn begin_handle(&mut self, link: &LinkCtx, isolation: i32, read_only: bool, session: &[u8]) -> Outcome {
        let req = BeginReq { isolation, read_only, session, conn_id: -1 };
        match self.begin_txns(link, &[req]) {
            Ok(ids) => {
                let handle = self.txns.get(ids[0]).map_or(-1, |t| t.handle);
                Outcome::reply(Response::TxnBegin { handle, timestamp: self.now() })
            }
            Err(e) => Outcome::Error(e),
        }
    }

    /// `MSG_TXN_BEGIN_GETGXID`: recorded with connection id -1 even on a proxy link.
    fn begin_getgxid(&mut self, link: &LinkCtx, isolation: i32, read_only: bool, session: &[u8]) -> Outcome {
        let timestamp = self.now();
        let req = BeginReq { isolation, read_only, session, conn_id: -1 };
        match self.begin_txns(link, &[req]) {
            Ok(ids) => {
                let gxid = self.assign_gxids(&ids)[0];
                Outcome::reply(Response::TxnBeginGetGxid { gxid, timestamp })
            }
            Err(e) => Outcome::Error(e),
        }
    }

    fn begin_autovacuum(&mut self, link: &LinkCtx, isolation: i32, read_only: bool) -> Outcome {
        let req = BeginReq { isolation, read_only, session: &[], conn_id: -1 };
        match self.begin_txns(link, &[req]) {
            Ok(ids) => {
                let gxid = self.assign_gxids(&ids)[0];
                if let Some(t) = self.txns.get_mut(ids[0]) {
                    t.vacuum = true;
                }
                Outcome::reply(Response::TxnBeginGetGxidAutovacuum { gxid })
            }
            Err(e) => Outcome::Error(e),
        }
    }

    /// `MSG_TXN_BEGIN_GETGXID_MULTI`: each new transaction is tagged with the
    /// element's connection id; one timestamp for all.
    fn begin_multi(&mut self, link: &LinkCtx, elems: &[BeginElem]) -> Outcome {
        if elems.is_empty() {
            return Outcome::Panic("Zero or less transaction count".into());
        }
        if elems.len() > MAX_TXNS {
            return too_many("MSG_TXN_BEGIN_GETGXID_MULTI", elems.len());
        }
        let reqs: Vec<BeginReq> = elems
            .iter()
            .map(|e| BeginReq {
                isolation: e.begin.isolation,
                read_only: e.begin.read_only,
                session: &e.begin.session_id,
                conn_id: e.conn_id,
            })
            .collect();
        match self.begin_txns(link, &reqs) {
            Ok(ids) => {
                let gxids = self.assign_gxids(&ids);
                Outcome::reply(Response::TxnBeginGetGxidMulti { gxids, timestamp: self.now() })
            }
            Err(e) => Outcome::Error(e),
        }
    }

    // ------------------------------------------------------- commit / abort

    /// Remove finished transactions, advance the latest completed GXID, and apply
    /// their sequence bookkeeping.
    pub(crate) fn end_txns(&mut self, ids: &[TxnId], how: TxnEnd) {
        for &id in ids {
            let Some(txn) = self.txns.remove(id) else { continue };
            if gxid_is_normal(txn.gxid) && gxid_follows_or_equals(txn.gxid, self.latest_completed) {
                self.latest_completed = txn.gxid;
            }
            match how {
                TxnEnd::Commit => self.seqs.txn_end(&txn, SeqEnd::Commit),
                TxnEnd::Abort => self.seqs.txn_end(&txn, SeqEnd::Abort),
                TxnEnd::Cleanup => {}
            }
            self.touch();
        }
    }

    /// `GTM_CommitTransactionMulti`: per element 0, -1 (unknown) or 4 (a waited
    /// GXID is still open; nothing committed for that element).
    fn commit_ids(&mut self, ids: &[Option<TxnId>], waited: &[u32]) -> Vec<i32> {
        let mut statuses = Vec::with_capacity(ids.len());
        let mut done = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(id) = *id else {
                statuses.push(status::ERROR);
                continue;
            };
            if waited.iter().any(|&w| self.txns.find_gxid(w).is_some()) {
                statuses.push(status::DELAYED);
                continue;
            }
            statuses.push(status::OK);
            done.push(id);
        }
        self.end_txns(&done, TxnEnd::Commit);
        statuses
    }

    /// `GTM_RollbackTransactionMulti`: per element 0 or -1 (unknown).
    fn rollback_ids(&mut self, ids: &[Option<TxnId>]) -> Vec<i32> {
        let statuses = ids.iter().map(|id| if id.is_some() { status::OK } else { status::ERROR }).collect();
        let found: Vec<TxnId> = ids.iter().flatten().copied().collect();
        self.end_txns(&found, TxnEnd::Abort);
        statuses
    }

    fn commit_multi(&mut self, gxids: &[u32]) -> Outcome {
        let ids: Vec<_> = gxids.iter().map(|&g| self.txns.find_gxid(g)).collect();
        Outcome::reply(Response::TxnCommitMulti { statuses: self.commit_ids(&ids, &[]) })
    }

    fn rollback_multi(&mut self, gxids: &[u32]) -> Outcome {
        let ids: Vec<_> = gxids.iter().map(|&g| self.txns.find_gxid(g)).collect();
        Outcome::reply(Response::TxnRollbackMulti { statuses: self.rollback_ids(&ids) })
    }

    /// `GTM_RemoveAllTransInfos`: drop every non-prepared transaction of
    /// `client_id` whose proxy connection id is `conn_id` (-1: all of them).
    pub(crate) fn remove_all(&mut self, client_id: u32, conn_id: i16) {
        let doomed: Vec<TxnId> = self
            .txns
            .iter()
            .filter(|(_, t)| {
                !t.state.is_prepared() && t.client_id == client_id && (conn_id == -1 || t.conn_id == conn_id)
            })
            .map(|(id, _)| id)
            .collect();
        if !doomed.is_empty() {
            log::debug!("removing {} transaction(s) of client {client_id} backend {conn_id}", doomed.len());
        }
        self.end_txns(&doomed, TxnEnd::Cleanup);
    }

    // ------------------------------------------------------------ two-phase

    fn start_prepared(&mut self, gxid: u32, gid: &[u8], nodes: &[u8]) -> Outcome {
        const FAILED: &str = "Failed to prepare the transaction";
        let gid = cstr(gid);
        let Some(id) = self.txns.find_gxid(gxid) else {
            return Outcome::error(FAILED);
        };
        if self.txns.find_gid(gid).is_some() {
            return Outcome::error(FAILED);
        }
        if let Some(t) = self.txns.get_mut(id) {
            t.state = TxnState::PrepareInProgress;
            t.nodes = Some(cstr(nodes).to_vec());
            t.gid = Some(gid.to_vec());
        }
        self.touch();
        Outcome::reply(Response::TxnStartPrepared { gxid })
    }

    /// `MSG_TXN_GET_GID_DATA`: a fresh auxiliary transaction (connection id -1)
    /// plus the prepared transaction's GXID and node string.
    fn get_gid_data(&mut self, link: &LinkCtx, isolation: i32, read_only: bool, gid: &[u8]) -> Outcome {
        let Some(prepared) = self.txns.find_gid(cstr(gid)) else {
            return Outcome::error("Failed to get GID Data for prepared transaction");
        };
        let req = BeginReq { isolation, read_only, session: &[], conn_id: -1 };
        let ids = match self.begin_txns(link, &[req]) {
            Ok(ids) => ids,
            Err(e) => return Outcome::Error(e),
        };
        let gxid = self.assign_gxids(&ids)[0];
        let (prepared_gxid, nodes) =
            self.txns.get(prepared).map(|t| (t.gxid, t.nodes.clone().unwrap_or_default())).unwrap_or_default();
        Outcome::reply(Response::TxnGetGidData { gxid, prepared_gxid, nodes: Bytes::from(nodes) })
    }

    /// `MSG_TXN_GET_GXID`: inverted in the real GTM — it fails exactly when it
    /// obtained a GXID (assigning one if the slot had none), and dereferences NULL
    /// for a free slot.
    fn get_gxid(&mut self, handle: i32) -> Outcome {
        let Some(id) = self.txns.find_handle(handle) else {
            return Outcome::Crash(format!(
                "MSG_TXN_GET_GXID for handle {handle}, which is not in use (NULL dereference)"
            ));
        };
        self.assign_gxids(&[id]);
        Outcome::error("Failed to get the transaction id")
    }

    // ------------------------------------------------------------- snapshots

    /// `GTM_GetTransactionSnapshot` for the given elements: the shared snapshot
    /// and a status per element (0, or 3 for an unknown GXID).
    fn take_snapshot(&mut self, ids: &[Option<TxnId>]) -> Result<(Snapshot, Vec<i32>), String> {
        let statuses: Vec<i32> =
            ids.iter().map(|id| if id.is_some() { status::OK } else { status::NOT_FOUND }).collect();
        let xmax = gxid_advance(self.latest_completed);
        let mut xmin = xmax;
        let mut xip = Vec::new();
        for (_, t) in self.txns.iter() {
            if t.vacuum || !gxid_is_normal(t.gxid) || gxid_follows_or_equals(t.gxid, xmax) {
                continue;
            }
            if gxid_precedes(t.gxid, xmin) {
                xmin = t.gxid;
            }
            xip.push(t.gxid);
        }
        let snapshot = Snapshot { xmin, xmax, xip };
        for id in ids.iter().flatten() {
            let Some(t) = self.txns.get_mut(*id) else { continue };
            // A serializable transaction keeps its first snapshot as its current one.
            let mut store = true;
            if t.isolation == ISOLATION_SERIALIZABLE {
                if t.snapshot_set && ids.len() > 1 {
                    return Err("Grouped snapshot can only include first snapshot in Serializable transaction".into());
                }
                store = !t.snapshot_set;
                t.snapshot_set = true;
            }
            if t.xmin == 0 {
                t.xmin = xmin;
                self.dirty = true;
            }
            let handle = t.handle;
            if store {
                self.txns.set_slot_snapshot(handle, &snapshot);
            }
        }
        Ok((snapshot, statuses))
    }

    /// `MSG_SNAPSHOT_GET` / `MSG_SNAPSHOT_GXID_GET`. The count is echoed and that
    /// many status words are sent from a one-word variable: count 1 is the normal
    /// case, 0 sends none, a negative count or one too big for a message fails when
    /// the reply is built, and above 1 the real GTM sends the count itself then
    /// stack garbage (zeros here), dying when it reads off its stack.
    fn snapshot_get(&mut self, link: &LinkCtx, count: i32, gxid: u32, get_gxid: bool) -> Outcome {
        let id = self.txns.find_gxid(gxid);
        if get_gxid && id.is_none() {
            return Outcome::Crash(format!("MSG_SNAPSHOT_GXID_GET for unknown GXID {gxid} (NULL dereference)"));
        }
        let (snapshot, statuses) = match self.take_snapshot(&[id]) {
            Ok(v) => v,
            Err(e) => return Outcome::Error(e),
        };
        let st = statuses[0];
        let result_type = if get_gxid { ResultType::SNAPSHOT_GXID_GET_RESULT } else { ResultType::SNAPSHOT_GET_RESULT };
        if count == 1 {
            let resp = if get_gxid {
                Response::SnapshotGxidGet { gxid, count, status: st, snapshot }
            } else {
                Response::SnapshotGet { gxid, count, status: st, snapshot }
            };
            return Outcome::reply(resp);
        }
        let words = count.wrapping_mul(4);
        if words < 0 {
            return Outcome::Error(format!("invalid string enlargement request size: {words}"));
        }
        // Result type, proxy header, gxid and count are already in the buffer.
        let built = if link.is_proxy() { 14 } else { 12 };
        if words as usize >= MAX_ALLOC_SIZE - built {
            return Outcome::ErrorDetail {
                message: "out of memory".into(),
                detail: format!("Cannot enlarge string buffer containing {built} bytes by {words} more bytes."),
            };
        }
        if count > SNAPSHOT_COUNT_SURVIVED {
            return Outcome::Crash(format!("MSG_SNAPSHOT_GET with count {count} reads far past a stack variable"));
        }
        let mut p = BytesMut::new();
        p.put_u32_le(gxid);
        p.put_i32_le(count);
        for i in 0..(words / 4) {
            p.put_i32_le(match i {
                0 => st,
                1 => count,
                _ => 0,
            });
        }
        snapshot.encode(&mut p);
        Outcome::reply(Response::Other { result_type, payload: p.freeze() })
    }

    fn snapshot_multi(&mut self, gxids: &[u32]) -> Outcome {
        // Commit and rollback MULTIs survive a few elements over the limit; this
        // one clears a status array of `count` words and does not.
        if gxids.len() > MAX_TXNS {
            return too_many("MSG_SNAPSHOT_GET_MULTI", gxids.len());
        }
        let ids: Vec<_> = gxids.iter().map(|&g| self.txns.find_gxid(g)).collect();
        match self.take_snapshot(&ids) {
            Ok((snapshot, statuses)) => Outcome::reply(Response::SnapshotGetMulti { statuses, snapshot }),
            Err(e) => Outcome::Error(e),
        }
    }
}

use Outcome::NoReply;

fn too_many(what: &str, n: usize) -> Outcome {
    Outcome::Crash(format!("{what} with {n} elements overflows the real GTM's {MAX_TXNS}-entry arrays"))
}
