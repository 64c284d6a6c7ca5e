//! Sequences (`src/gtm/main/gtm_seq.c`).
//!
//! Keys are compared as the GTM does: same length, same bytes (XL sends the
//! trailing NUL, so `db.public.s1\0` is a 13-byte key). Creation, drop and rename
//! are transactional when the request names an open GXID: an explicit rollback
//! drops created sequences, restores dropped ones (kept meanwhile under
//! `<key>_dropped_<gxid>`) and undoes renames; a commit forgets dropped ones.
//! Value changes (`nextval`, `setval`, alter, reset) are never rolled back.
//! Link close and `MSG_BACKEND_DISCONNECT` remove transactions without any of
//! this, as on the real GTM.

use bytes::{BufMut, Bytes, BytesMut};

use super::state::Gtm;
use super::txns::Txn;
use super::*;
use crate::codec::Response;

/// `InvalidSequenceValue`: "not specified" in init requests.
const INVALID_SEQ_VALUE: i64 = 0x7fff_ffff_ffff_ffff;
const DEF_MAX_ASC: i64 = 0x7fff_ffff_ffff_fffe;
const DEF_MIN_ASC: i64 = 1;
const DEF_MAX_DESC: i64 = -1;
const DEF_MIN_DESC: i64 = -0x7fff_ffff_ffff_fffe;
/// `SEQ_HASH_TABLE_SIZE`: sequences are listed bucket by bucket.
const SEQ_HASH_TABLE_SIZE: i64 = 1024;
/// `SEQ_STATE_ACTIVE`.
const SEQ_STATE_ACTIVE: u32 = 1;
/// `GTM_SEQ_FULL_NAME` / `GTM_SEQ_DB_NAME`.
const KEY_FULL_NAME: i32 = 0;
const KEY_DB_NAME: i32 = 1;
/// Initial capacity of a sequence's per-session value array.
const INIT_LASTVALS: u32 = 16;

/// The last value a session (coordinator name, pid) obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastVal {
    pub coord_name: Vec<u8>,
    pub coord_pid: i32,
    pub value: i64,
}

/// One sequence (`GTM_SeqInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seq {
    pub key: Vec<u8>,
    /// Key before a transactional drop renamed it.
    pub old_key: Option<Vec<u8>>,
    pub value: i64,
    pub init_value: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cycle: bool,
    pub called: bool,
    pub created_gxid: u32,
    pub last_values: Vec<LastVal>,
    /// Capacity of the C array (`gs_max_lastvals`), visible in the list blob.
    pub max_lastvals: u32,
    /// `gs_ref_count` as the list blob shows it (a created sequence keeps 1).
    pub ref_count: u32,
}

impl Seq {
    fn ascending(&self) -> bool {
        self.increment > 0
    }

    fn set_lastval(&mut self, coord_name: &[u8], pid: i32, value: i64) {
        if coord_name.is_empty() || pid == 0 {
            return;
        }
        let name = cstr(coord_name);
        if let Some(lv) = self.last_values.iter_mut().find(|l| l.coord_name == name && l.coord_pid == pid) {
            lv.value = value;
            return;
        }
        if self.last_values.len() as u32 == self.max_lastvals {
            self.max_lastvals = if self.max_lastvals == 0 { INIT_LASTVALS } else { self.max_lastvals * 2 };
        }
        self.last_values.push(LastVal { coord_name: name.to_vec(), coord_pid: pid, value });
    }
}

/// How a transaction that touched sequences ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEnd {
    Commit,
    Abort,
}

/// All sequences in creation order (renames move a sequence to the end, as the
/// GTM appends it to its new hash bucket).
#[derive(Debug, Clone, Default)]
pub struct Sequences {
    pub list: Vec<Seq>,
}

impl Sequences {
    fn find(&self, key: &[u8]) -> Option<usize> {
        self.list.iter().position(|s| s.key == key)
    }

    pub fn get(&self, key: &[u8]) -> Option<&Seq> {
        self.find(key).map(|i| &self.list[i])
    }

    fn remove_key(&mut self, key: &[u8]) {
        if let Some(i) = self.find(key) {
            self.list.remove(i);
        }
    }

    /// `seq_rename_seqinfo`: false if the new key is taken.
    fn rename(&mut self, i: usize, new_key: &[u8]) -> bool {
        if self.find(new_key).is_some() {
            return false;
        }
        let mut s = self.list.remove(i);
        s.key = new_key.to_vec();
        self.list.push(s);
        true
    }

    /// Apply the sequence bookkeeping of a finished transaction.
    pub fn txn_end(&mut self, txn: &Txn, how: SeqEnd) {
        match how {
            SeqEnd::Abort => {
                for key in &txn.created_seqs {
                    self.remove_key(key);
                }
                for key in &txn.dropped_seqs {
                    if let Some(i) = self.find(key) {
                        if let Some(old) = self.list[i].old_key.clone() {
                            self.rename(i, &old);
                        }
                    }
                }
                for (curr, prev) in &txn.altered_seqs {
                    if let Some(i) = self.find(curr) {
                        if self.list[i].key != *prev {
                            self.rename(i, prev);
                        }
                    }
                }
            }
            SeqEnd::Commit => {
                for key in &txn.dropped_seqs {
                    self.remove_key(key);
                }
            }
        }
    }

    /// `GTM_CleanupSeqSession`: forget what a departed session obtained.
    pub fn cleanup_session(&mut self, coord_name: &[u8], pid: i32) {
        for s in &mut self.list {
            if let Some(j) = s.last_values.iter().position(|l| l.coord_name == coord_name && l.coord_pid == pid) {
                s.last_values.swap_remove(j);
                if s.last_values.is_empty() {
                    s.max_lastvals = 0;
                }
            }
        }
    }

    /// The `SEQUENCE_LIST_RESULT` payload: count, then a length-prefixed
    /// `gtm_serialize_sequence` blob per sequence, in hash-bucket order.
    pub fn list(&self) -> Bytes {
        let mut order: Vec<&Seq> = self.list.iter().collect();
        order.sort_by_key(|s| bucket(&s.key));
        let mut out = BytesMut::new();
        out.put_i32(order.len() as i32);
        for s in order {
            let mut b = BytesMut::new();
            b.put_u32_le(s.key.len() as u32);
            b.extend_from_slice(&s.key);
            b.put_i32_le(0); // gsk_type: uninitialised in the real GTM
            b.put_i64_le(s.value);
            b.put_i64_le(s.init_value);
            b.put_u32_le(s.max_lastvals);
            b.put_u32_le(s.last_values.len() as u32);
            for lv in &s.last_values {
                let mut name = [0u8; 64];
                let n = lv.coord_name.len().min(63);
                name[..n].copy_from_slice(&lv.coord_name[..n]);
                b.extend_from_slice(&name);
                b.put_i32_le(lv.coord_pid);
                b.put_u32_le(0); // padding
                b.put_i64_le(lv.value);
            }
            b.put_i64_le(s.increment);
            b.put_i64_le(s.min);
            b.put_i64_le(s.max);
            b.put_u8(s.cycle as u8);
            b.put_u8(s.called as u8);
            b.put_u32_le(s.ref_count);
            b.put_u32_le(SEQ_STATE_ACTIVE);
            out.put_i32(b.len() as i32);
            out.extend_from_slice(&b);
        }
        out.freeze()
    }
}

/// `get_rangemax`: the last value of a `range`-value block starting at the
/// current value, capped where the next step would pass the limit. The GTM steps
/// one increment at a time (a huge range spins); this computes the same in one go.
fn range_max(s: &Seq, range: i64) -> i64 {
    let (value, inc) = (i128::from(s.value), i128::from(s.increment));
    let wanted = i128::from(range) - 1;
    let possible = if inc > 0 {
        let limit = i128::from(s.max) - inc;
        if value > limit {
            0
        } else {
            (limit - value) / inc + 1
        }
    } else if inc < 0 {
        let limit = i128::from(s.min) - inc;
        if value < limit {
            0
        } else {
            (value - limit) / -inc + 1
        }
    } else {
        // A zero increment never moves.
        return s.value;
    };
    let steps = wanted.min(possible);
    i64::try_from(value + steps * inc).unwrap_or(s.value)
}

/// `seq_gethash`: sum of the key's bytes as C `char` (signed), modulo 1024.
fn bucket(key: &[u8]) -> i64 {
    let total: u32 = key.iter().fold(0u32, |acc, &b| acc.wrapping_add(b as i8 as i32 as u32));
    i64::from(total) % SEQ_HASH_TABLE_SIZE
}

/// `seq_key_dbname_equal`: `nsp` names a database and `key` is one of its sequences.
fn dbname_equal(nsp: &[u8], key: &[u8]) -> bool {
    if nsp.is_empty() || nsp.len() >= key.len() {
        return false;
    }
    key[nsp.len() - 1] == b'.' && nsp[..nsp.len() - 1] == key[..nsp.len() - 1]
}

fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(cstr(key)).into_owned()
}

impl Gtm {
    fn with_txn(&mut self, gxid: u32, f: impl FnOnce(&mut Txn)) {
        if let Some(id) = self.txns.find_gxid(gxid) {
            if let Some(t) = self.txns.get_mut(id) {
                f(t);
            }
        }
    }

    /// `MSG_SEQUENCE_INIT` (`GTM_SeqOpen`). `p` = increment, min, max, start;
    /// `INVALID_SEQ_VALUE` means "default".
    pub(crate) fn seq_init(&mut self, key: &[u8], p: [i64; 4], cycle: bool, gxid: u32) -> Outcome {
        let [inc, min, max, start] = p;
        let increment = if inc != INVALID_SEQ_VALUE { inc } else { 1 };
        let asc = increment > 0;
        let min = if min != INVALID_SEQ_VALUE {
            min
        } else if asc {
            DEF_MIN_ASC
        } else {
            DEF_MIN_DESC
        };
        let max = if max != INVALID_SEQ_VALUE {
            if max < min {
                return Outcome::error("Max value must be greater than min value");
            }
            max
        } else if asc {
            DEF_MAX_ASC
        } else {
            DEF_MAX_DESC
        };
        let value = if start != INVALID_SEQ_VALUE {
            if start < min {
                return Outcome::error("Start value must be greater than or equal to the min value");
            }
            if start > max {
                return Outcome::error("Start value must be less than or equal to the max value");
            }
            start
        } else if asc {
            DEF_MIN_ASC
        } else {
            // Sic: the GTM starts a descending sequence at its default minimum.
            DEF_MIN_DESC
        };
        if self.seqs.find(key).is_some() {
            log::info!("sequence {} already exists", key_text(key));
            return Outcome::error("Failed to open a new sequence");
        }
        self.seqs.list.push(Seq {
            key: key.to_vec(),
            old_key: None,
            value,
            init_value: value,
            increment,
            min,
            max,
            cycle,
            called: false,
            created_gxid: gxid,
            last_values: Vec::new(),
            max_lastvals: 0,
            ref_count: 1,
        });
        self.with_txn(gxid, |t| t.created_seqs.push(key.to_vec()));
        self.touch();
        Outcome::reply(Response::SequenceInit { key: Bytes::copy_from_slice(key) })
    }

    /// `MSG_SEQUENCE_ALTER`: no validation at all; `p` = increment, min, max,
    /// start, last.
    pub(crate) fn seq_alter(&mut self, key: &[u8], p: [i64; 5], cycle: bool, restart: bool) -> Outcome {
        let Some(i) = self.seqs.find(key) else {
            return Outcome::error("Failed to open a new sequence");
        };
        let s = &mut self.seqs.list[i];
        s.cycle = cycle;
        s.min = p[1];
        s.max = p[2];
        s.increment = p[0];
        if restart {
            s.called = false;
            s.value = p[4];
        }
        s.init_value = p[3];
        self.touch();
        Outcome::reply(Response::SequenceAlter { key: Bytes::copy_from_slice(key) })
    }

    pub(crate) fn seq_get_current(&mut self, key: &[u8], coord_name: &[u8], pid: u32) -> Outcome {
        let Some(i) = self.seqs.find(key) else {
            return Outcome::error(format!("sequence \"{}\" does not exist", key_text(key)));
        };
        let s = &self.seqs.list[i];
        if coord_name.is_empty() && !s.last_values.is_empty() {
            return Outcome::Crash("MSG_SEQUENCE_GET_CURRENT without coordinator name (strcmp on NULL)".into());
        }
        let name = cstr(coord_name);
        match s.last_values.iter().find(|l| l.coord_name == name && l.coord_pid == pid as i32) {
            Some(lv) => {
                Outcome::reply(Response::SequenceGetCurrent { key: Bytes::copy_from_slice(key), value: lv.value })
            }
            None => {
                Outcome::error(format!("currval of sequence \"{}\" is not yet defined in this session", key_text(key)))
            }
        }
    }

    /// `MSG_SEQUENCE_GET_NEXT` (`GTM_SeqGetNext` + `get_rangemax`).
    pub(crate) fn seq_get_next(&mut self, key: &[u8], coord_name: &[u8], pid: u32, range: i64) -> Outcome {
        const FAILED: &str = "Can not get current value of the sequence";
        let Some(i) = self.seqs.find(key) else {
            return Outcome::error(FAILED);
        };
        let s = &mut self.seqs.list[i];
        let result = if !s.called {
            s.called = true;
            s.value
        } else if s.ascending() {
            if s.max.wrapping_sub(s.increment) >= s.value {
                s.value.wrapping_add(s.increment)
            } else if s.cycle {
                s.min
            } else {
                return Outcome::error(FAILED);
            }
        } else if s.min.wrapping_sub(s.increment) <= s.value {
            s.value.wrapping_add(s.increment)
        } else if s.cycle {
            s.max
        } else {
            return Outcome::error(FAILED);
        };
        s.value = result;
        let range_max = if range > 1 { range_max(s, range) } else { result };
        s.set_lastval(coord_name, pid as i32, range_max);
        s.value = range_max;
        self.touch();
        Outcome::reply(Response::SequenceGetNext { key: Bytes::copy_from_slice(key), value: result, range_max })
    }

    pub(crate) fn seq_set_val(&mut self, key: &[u8], coord_name: &[u8], pid: u32, value: i64, called: bool) -> Outcome {
        let Some(i) = self.seqs.find(key) else {
            return Outcome::error("Failed to set values of sequence");
        };
        let s = &mut self.seqs.list[i];
        s.value = value;
        s.called = called;
        if !called {
            s.set_lastval(coord_name, pid as i32, value);
        }
        self.touch();
        Outcome::reply(Response::SequenceSetVal { key: Bytes::copy_from_slice(key) })
    }

    pub(crate) fn seq_reset(&mut self, key: &[u8]) -> Outcome {
        let Some(i) = self.seqs.find(key) else {
            return Outcome::error("Can not reset the sequence");
        };
        let s = &mut self.seqs.list[i];
        s.value = s.init_value;
        self.touch();
        // GTM_SeqReset releases the backup lock instead of the sequence's lock:
        // the value is reset, then the request fails. (The real GTM's backup lock
        // is left corrupted and its next control-file write deadlocks; that part
        // is not reproduced.)
        log::warn!("MSG_SEQUENCE_RESET: the real GTM answers \"lock is not held\" and later deadlocks");
        Outcome::error("lock is not held")
    }

    /// `MSG_SEQUENCE_CLOSE` (`GTM_SeqClose`): drop one sequence, or every sequence
    /// of a database (key type 1).
    pub(crate) fn seq_close(&mut self, key: &[u8], key_type: i32, gxid: u32) -> Outcome {
        const FAILED: &str = "Can not close the sequence";
        match key_type {
            KEY_FULL_NAME => {
                let Some(i) = self.seqs.find(key) else {
                    return Outcome::error(FAILED);
                };
                if gxid == INVALID_GXID || self.seqs.list[i].created_gxid == gxid {
                    // (The GTM tries to forget the "created" note here, but compares
                    // the wrong pointers, so a rollback of `gxid` still drops any
                    // sequence that later gets this key.)
                    self.seqs.list.remove(i);
                } else {
                    let mut new_key = cstr(key).to_vec();
                    new_key.extend_from_slice(format!("_dropped_{}", gxid as i32).as_bytes());
                    new_key.push(0);
                    self.seqs.list[i].old_key = Some(key.to_vec());
                    if !self.seqs.rename(i, &new_key) {
                        return Outcome::error(FAILED);
                    }
                    self.with_txn(gxid, |t| t.dropped_seqs.push(new_key));
                }
            }
            KEY_DB_NAME => self.seqs.list.retain(|s| !dbname_equal(key, &s.key)),
            _ => return Outcome::error(FAILED),
        }
        self.touch();
        Outcome::reply(Response::SequenceClose { key: Bytes::copy_from_slice(key) })
    }

    pub(crate) fn seq_rename(&mut self, key: &[u8], new_key: &[u8], gxid: u32) -> Outcome {
        const FAILED: &str = "Can not rename the sequence";
        let Some(i) = self.seqs.find(key) else {
            return Outcome::error(FAILED);
        };
        if !self.seqs.rename(i, new_key) {
            return Outcome::error(FAILED);
        }
        self.with_txn(gxid, |t| t.altered_seqs.insert(0, (new_key.to_vec(), key.to_vec())));
        self.touch();
        Outcome::reply(Response::SequenceRename { key: Bytes::copy_from_slice(new_key) })
    }
}
