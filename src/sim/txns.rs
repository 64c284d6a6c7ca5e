//! The table of open global transactions (`GTMTransactions`).
//!
//! The real GTM keeps a 16384-slot array plus a list of open transactions in
//! begin order, and finds transactions by walking that list. Here the list is a
//! `BTreeMap` keyed by a begin sequence number (so iteration order is the list
//! order: snapshots list xids in that order), with hash indexes for the GXID and
//! session lookups that the GTM does by linear search. Slots are emulated exactly
//! because `MSG_TXN_BEGIN` returns the slot as its "handle".

use std::collections::{BTreeMap, HashMap};

use super::{cstr, MAX_TXNS};
use crate::codec::Snapshot;

/// `GTM_MAX_SESSION_ID_LEN`: bytes of a global session id the GTM stores.
pub const MAX_SESSION_ID_LEN: usize = 64;

/// The states of `GTM_TransactionStates` that an open transaction can be seen in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Starting,
    PrepareInProgress,
    Prepared,
}

impl TxnState {
    /// Prepared (or being prepared) transactions survive link close and
    /// `MSG_BACKEND_DISCONNECT`.
    pub fn is_prepared(self) -> bool {
        matches!(self, TxnState::PrepareInProgress | TxnState::Prepared)
    }
}

/// One open transaction (`GTM_TransactionInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    /// Slot in the GTM's array: the `MSG_TXN_BEGIN` handle.
    pub handle: i32,
    /// 0 until a GXID is assigned (`MSG_TXN_BEGIN` never assigns one).
    pub gxid: u32,
    /// Client id of the link that began it.
    pub client_id: u32,
    /// Proxy connection id (`gti_proxy_client_id`), -1 unless begun by a MULTI element.
    pub conn_id: i16,
    pub state: TxnState,
    pub isolation: i32,
    pub read_only: bool,
    /// Autovacuum transaction: left out of snapshots.
    pub vacuum: bool,
    /// The global session id as stored: up to its first NUL, at most 64 bytes.
    pub session: Vec<u8>,
    /// GID given by `MSG_TXN_START_PREPARED` (up to its first NUL).
    pub gid: Option<Vec<u8>>,
    /// Node string given by `MSG_TXN_START_PREPARED` (up to its first NUL).
    pub nodes: Option<Vec<u8>>,
    /// `gti_xmin`: snapshot xmin of the first snapshot taken for it, 0 before.
    pub xmin: u32,
    /// A serializable transaction has taken its snapshot.
    pub snapshot_set: bool,
    /// Sequences created in this transaction (keys), dropped on rollback.
    pub created_seqs: Vec<Vec<u8>>,
    /// Temporary keys of sequences dropped in this transaction.
    pub dropped_seqs: Vec<Vec<u8>>,
    /// (current key, previous key) of sequences renamed in this transaction,
    /// newest first.
    pub altered_seqs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Txn {
    /// A new transaction as `GTM_TransactionInfo_Init` sets it up. `session` is the
    /// raw session id field of the request (or empty).
    pub fn new(handle: i32, client_id: u32, conn_id: i16, isolation: i32, read_only: bool, session: &[u8]) -> Self {
        let s = cstr(session);
        let stored = s[..s.len().min(MAX_SESSION_ID_LEN)].to_vec();
        Txn {
            handle,
            gxid: 0,
            client_id,
            conn_id,
            state: TxnState::Starting,
            isolation,
            read_only,
            vacuum: false,
            session: stored,
            gid: None,
            nodes: None,
            xmin: 0,
            snapshot_set: false,
            created_seqs: Vec::new(),
            dropped_seqs: Vec::new(),
            altered_seqs: Vec::new(),
        }
    }

    /// The stored session id if another begin can match it: non-empty and NUL
    /// terminated within the 64-byte field (a 64-byte id is not, and the real GTM
    /// never matches it again).
    pub fn session_key(&self) -> Option<&[u8]> {
        session_key(&self.session)
    }
}

/// The lookup key of a session id as a begin request sends it: `None` when empty
/// or too long to ever match.
pub fn session_key(raw: &[u8]) -> Option<&[u8]> {
    let s = cstr(raw);
    if s.is_empty() || s.len() >= MAX_SESSION_ID_LEN {
        None
    } else {
        Some(s)
    }
}

/// Identifies an open transaction: its position in begin order.
pub type TxnId = u64;

/// Open transactions in begin order, with indexes.
#[derive(Debug, Clone)]
pub struct Txns {
    list: BTreeMap<TxnId, Txn>,
    next_id: TxnId,
    by_gxid: HashMap<u32, TxnId>,
    by_session: HashMap<Vec<u8>, TxnId>,
    slots: Vec<Option<TxnId>>,
    /// `gti_current_snapshot` per slot: the last snapshot stored for a
    /// transaction in that slot. The real GTM never clears it, so a slot's
    /// next transaction shows it until it takes a snapshot of its own.
    slot_snapshots: HashMap<i32, Snapshot>,
    /// `gt_lastslot`: where the next free-slot search starts (after it).
    pub last_slot: i32,
}

impl Default for Txns {
    fn default() -> Self {
        Txns {
            list: BTreeMap::new(),
            next_id: 0,
            by_gxid: HashMap::new(),
            by_session: HashMap::new(),
            slots: vec![None; MAX_TXNS],
            slot_snapshots: HashMap::new(),
            last_slot: -1,
        }
    }
}

impl Txns {
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.list.len() >= MAX_TXNS
    }

    /// A free slot, searched the way `GTM_BeginTransactionMulti` does: from the
    /// slot after the last one handed out, wrapping. Records it as the last slot.
    pub fn alloc_slot(&mut self) -> Option<i32> {
        let start = (self.last_slot + 1) as usize % MAX_TXNS;
        for step in 0..MAX_TXNS {
            let i = (start + step) % MAX_TXNS;
            if self.slots[i].is_none() {
                self.last_slot = i as i32;
                return Some(i as i32);
            }
        }
        None
    }

    /// Append a transaction whose `handle` is a free slot (from [`Txns::alloc_slot`]
    /// or a loaded state file).
    pub fn insert(&mut self, txn: Txn) -> TxnId {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(slot) = self.slots.get_mut(txn.handle as usize) {
            *slot = Some(id);
        }
        if txn.gxid != 0 {
            self.by_gxid.entry(txn.gxid).or_insert(id);
        }
        if let Some(k) = txn.session_key() {
            self.by_session.entry(k.to_vec()).or_insert(id);
        }
        self.list.insert(id, txn);
        id
    }

    pub fn remove(&mut self, id: TxnId) -> Option<Txn> {
        let txn = self.list.remove(&id)?;
        if let Some(slot) = self.slots.get_mut(txn.handle as usize) {
            if *slot == Some(id) {
                *slot = None;
            }
        }
        if txn.gxid != 0 && self.by_gxid.get(&txn.gxid) == Some(&id) {
            self.by_gxid.remove(&txn.gxid);
        }
        if let Some(k) = txn.session_key() {
            if self.by_session.get(k) == Some(&id) {
                self.by_session.remove(k);
            }
        }
        Some(txn)
    }

    /// Give a transaction its GXID.
    pub fn set_gxid(&mut self, id: TxnId, gxid: u32) {
        if let Some(t) = self.list.get_mut(&id) {
            t.gxid = gxid;
            self.by_gxid.entry(gxid).or_insert(id);
        }
    }

    pub fn get(&self, id: TxnId) -> Option<&Txn> {
        self.list.get(&id)
    }

    pub fn get_mut(&mut self, id: TxnId) -> Option<&mut Txn> {
        self.list.get_mut(&id)
    }

    /// `GTM_GXIDToHandle`: GXID 0 is never found.
    pub fn find_gxid(&self, gxid: u32) -> Option<TxnId> {
        if gxid == 0 {
            return None;
        }
        self.by_gxid.get(&gxid).copied()
    }

    /// `GTM_GlobalSessionIDToHandle` for a raw session id field.
    pub fn find_session(&self, raw: &[u8]) -> Option<TxnId> {
        self.by_session.get(session_key(raw)?).copied()
    }

    /// `GTM_GIDToHandle`: first open transaction (in begin order) with this GID.
    pub fn find_gid(&self, gid: &[u8]) -> Option<TxnId> {
        self.list.iter().find(|(_, t)| t.gid.as_deref() == Some(gid)).map(|(id, _)| *id)
    }

    /// The transaction in slot `handle`, if that slot is in use.
    pub fn find_handle(&self, handle: i32) -> Option<TxnId> {
        usize::try_from(handle).ok().and_then(|h| self.slots.get(h).copied().flatten())
    }

    /// Open transactions in begin order.
    pub fn iter(&self) -> impl Iterator<Item = (TxnId, &Txn)> {
        self.list.iter().map(|(id, t)| (*id, t))
    }

    /// Open transactions in slot order, as the GTM's array holds them.
    pub fn by_slot(&self) -> impl Iterator<Item = &Txn> {
        self.slots.iter().flatten().filter_map(|id| self.list.get(id))
    }

    /// Store `snap` as the current snapshot of the transaction in `handle`'s slot.
    pub fn set_slot_snapshot(&mut self, handle: i32, snap: &Snapshot) {
        self.slot_snapshots.insert(handle, snap.clone());
    }

    /// The current snapshot stored in a slot (all zero if none ever was).
    pub fn slot_snapshot(&self, handle: i32) -> Option<&Snapshot> {
        self.slot_snapshots.get(&handle)
    }

    pub fn ids(&self) -> Vec<TxnId> {
        self.list.keys().copied().collect()
    }

    /// `GTM_GetLastClientIdentifier`: highest client id among open transactions
    /// (0 if none), compared the way client ids wrap.
    pub fn last_client_id(&self) -> u32 {
        let mut last = 0u32;
        for t in self.list.values() {
            if super::client_id_gt(t.client_id, last) {
                last = t.client_id;
            }
        }
        last
    }
}
