//! Durable GTM state for `--persist`: `DATA_DIR/gtm_sim.state`.
//!
//! A versioned line-oriented text file, rewritten whole on every change (the
//! server writes it once per loop iteration, before any reply of that iteration
//! leaves: group commit). Writes go to a temporary file that is fsynced, renamed
//! over the old one, and the directory is fsynced, so the file is always either
//! the old or the new state. The last line carries an FNV-1a checksum of
//! everything before it; a file that fails to parse or check is refused.
//!
//! ```text
//! gtm_sim-state 1
//! next_gxid 10005
//! latest_completed 10003
//! global_xmin 10000
//! next_client_id 6
//! last_slot 4
//! txn <handle> <gxid> <client> <conn> <state> <iso> <ro> <vacuum> <xmin> <snapset> <session> <gid> <nodes> <created> <dropped> <altered>
//! node <type> <name> <host> <port> <proxy> <folder> <status> <xmin> <xmin_time> <excluded> <joining> <is_session> <max_sessions> <sessions>
//! seq <key> <old_key> <value> <init> <inc> <min> <max> <cycle> <called> <created_gxid> <max_lastvals> <ref_count> <lastvals>
//! end <checksum>
//! ```
//!
//! Byte strings are `x` + hex (`x` alone is empty), `-` is "none", lists are
//! `[a,b]`, pairs `a:b`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::nodes::Node;
use super::seq::{LastVal, Seq};
use super::state::{Clock, Gtm, GtmConfig};
use super::txns::{Txn, TxnState};
use super::MAX_TXNS;

/// Name of the state file inside the data directory.
pub const STATE_FILE: &str = "gtm_sim.state";
const MAGIC: &str = "gtm_sim-state";
const VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum PersistError {
    #[error("could not {action} \"{}\": {source}", .path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("corrupt state file \"{}\": {detail}", .path.display())]
    Corrupt { path: PathBuf, detail: String },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PersistError + 'a {
    move |source| PersistError::Io { action, path: path.to_path_buf(), source }
}

/// FNV-1a, 64 bit.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(1 + 2 * b.len());
    s.push('x');
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn opt_hex(b: &Option<Vec<u8>>) -> String {
    b.as_ref().map_or_else(|| "-".to_string(), |v| hex(v))
}

fn list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    format!("[{}]", items.iter().map(f).collect::<Vec<_>>().join(","))
}

fn state_code(s: TxnState) -> u8 {
    match s {
        TxnState::Starting => 0,
        TxnState::PrepareInProgress => 1,
        TxnState::Prepared => 2,
    }
}

/// The whole state as text (checksum line included).
pub fn encode(g: &Gtm) -> String {
    let mut out = String::new();
    out.push_str(&format!("{MAGIC} {VERSION}\n"));
    out.push_str(&format!("next_gxid {}\n", g.next_gxid));
    out.push_str(&format!("latest_completed {}\n", g.latest_completed));
    out.push_str(&format!("global_xmin {}\n", g.global_xmin));
    out.push_str(&format!("next_client_id {}\n", g.next_client_id));
    out.push_str(&format!("last_slot {}\n", g.txns.last_slot));
    for t in g.txns() {
        out.push_str(&format!(
            "txn {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}\n",
            t.handle,
            t.gxid,
            t.client_id,
            t.conn_id,
            state_code(t.state),
            t.isolation,
            t.read_only as u8,
            t.vacuum as u8,
            t.xmin,
            t.snapshot_set as u8,
            hex(&t.session),
            opt_hex(&t.gid),
            opt_hex(&t.nodes),
            list(&t.created_seqs, |k| hex(k)),
            list(&t.dropped_seqs, |k| hex(k)),
            list(&t.altered_seqs, |(c, p)| format!("{}:{}", hex(c), hex(p))),
        ));
    }
    for n in &g.nodes.list {
        out.push_str(&format!(
            "node {} {} {} {} {} {} {} {} {} {} {} {} {} {}\n",
            n.node_type,
            hex(&n.name),
            hex(&n.host),
            n.port,
            hex(&n.proxy_name),
            hex(&n.data_folder),
            n.status,
            n.reported_xmin,
            n.reported_xmin_time,
            n.excluded as u8,
            n.joining as u8,
            n.is_session as u8,
            n.max_sessions,
            list(&n.sessions, |(p, b)| format!("{p}:{b}")),
        ));
    }
    for s in &g.seqs.list {
        out.push_str(&format!(
            "seq {} {} {} {} {} {} {} {} {} {} {} {} {}\n",
            hex(&s.key),
            opt_hex(&s.old_key),
            s.value,
            s.init_value,
            s.increment,
            s.min,
            s.max,
            s.cycle as u8,
            s.called as u8,
            s.created_gxid,
            s.max_lastvals,
            s.ref_count,
            list(&s.last_values, |l| format!("{}:{}:{}", hex(&l.coord_name), l.coord_pid, l.value)),
        ));
    }
    let sum = checksum(out.as_bytes());
    out.push_str(&format!("end {sum:016x}\n"));
    out
}

/// Write the state file durably: temp file, fsync, rename, fsync directory.
pub fn save(g: &Gtm, dir: &Path) -> Result<(), PersistError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let text = encode(g);
    {
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(text.as_bytes()).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync directory", dir))?;
    Ok(())
}

/// Load `DIR/gtm_sim.state` if it exists. The loaded GTM plays a promoted
/// standby: its starting client id is the highest one among open transactions,
/// and its nodes carry the standby's dummy socket.
pub fn load(dir: &Path, clock: Clock) -> Result<Option<Gtm>, PersistError> {
    let path = dir.join(STATE_FILE);
    let text = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let text = String::from_utf8(text)
        .map_err(|_| PersistError::Corrupt { path: path.clone(), detail: "not UTF-8 text".into() })?;
    decode(&text, clock).map(Some).map_err(|detail| PersistError::Corrupt { path, detail })
}

struct Fields<'a> {
    it: std::str::SplitAsciiWhitespace<'a>,
}

impl<'a> Fields<'a> {
    fn next(&mut self) -> Result<&'a str, String> {
        self.it.next().ok_or_else(|| "missing field".to_string())
    }

    fn num<T: std::str::FromStr>(&mut self) -> Result<T, String> {
        let s = self.next()?;
        s.parse().map_err(|_| format!("bad number {s:?}"))
    }

    fn flag(&mut self) -> Result<bool, String> {
        match self.next()? {
            "0" => Ok(false),
            "1" => Ok(true),
            s => Err(format!("bad flag {s:?}")),
        }
    }

    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        unhex(self.next()?)
    }

    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.next()? {
            "-" => Ok(None),
            s => unhex(s).map(Some),
        }
    }

    fn list<T>(&mut self, f: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
        let s = self.next()?;
        let inner = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).ok_or_else(|| format!("bad list {s:?}"))?;
        if inner.is_empty() {
            return Ok(Vec::new());
        }
        inner.split(',').map(f).collect()
    }

    fn done(&mut self) -> Result<(), String> {
        match self.it.next() {
            None => Ok(()),
            Some(s) => Err(format!("unexpected field {s:?}")),
        }
    }
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let h = s.strip_prefix('x').ok_or_else(|| format!("bad byte string {s:?}"))?;
    if h.len() % 2 != 0 {
        return Err(format!("bad byte string {s:?}"));
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).map_err(|_| format!("bad byte string {s:?}")))
        .collect()
}

fn parts(s: &str, n: usize) -> Result<Vec<&str>, String> {
    let v: Vec<&str> = s.split(':').collect();
    if v.len() != n {
        return Err(format!("bad item {s:?}"));
    }
    Ok(v)
}

fn parse_num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad number {s:?}"))
}

/// Parse and validate a state file's text.
pub fn decode(text: &str, clock: Clock) -> Result<Gtm, String> {
    let body_end = text.trim_end_matches('\n').rfind('\n').map(|i| i + 1).ok_or("file too short")?;
    let (body, last) = text.split_at(body_end);
    let sum = last.trim_end().strip_prefix("end ").ok_or("missing end line (truncated file?)")?;
    if sum != format!("{:016x}", checksum(body.as_bytes())) {
        return Err("checksum mismatch".into());
    }
    let mut g = Gtm::new(GtmConfig::default(), clock);
    let mut lines = body.lines().enumerate();
    match lines.next() {
        Some((_, l)) if l == format!("{MAGIC} {VERSION}") => {}
        Some((_, l)) => return Err(format!("unsupported header {l:?} (expected \"{MAGIC} {VERSION}\")")),
        None => return Err("empty file".into()),
    }
    for (no, line) in lines {
        parse_line(&mut g, line).map_err(|e| format!("line {}: {e}", no + 1))?;
    }
    validate(&g)?;
    g.set_starting_client_id_from_txns();
    g.take_dirty();
    Ok(g)
}

fn parse_line(g: &mut Gtm, line: &str) -> Result<(), String> {
    let mut f = Fields { it: line.split_ascii_whitespace() };
    match f.next()? {
        "next_gxid" => g.next_gxid = f.num()?,
        "latest_completed" => g.latest_completed = f.num()?,
        "global_xmin" => g.global_xmin = f.num()?,
        "next_client_id" => g.next_client_id = f.num()?,
        "last_slot" => {
            let v: i32 = f.num()?;
            if !(-1..MAX_TXNS as i32).contains(&v) {
                return Err(format!("last_slot {v} out of range"));
            }
            g.txns.last_slot = v;
        }
        "txn" => {
            let handle: i32 = f.num()?;
            if !(0..MAX_TXNS as i32).contains(&handle) || g.txns.find_handle(handle).is_some() {
                return Err(format!("bad or duplicate transaction handle {handle}"));
            }
            let mut t = Txn::new(handle, 0, -1, 0, false, &[]);
            t.gxid = f.num()?;
            if t.gxid != 0 && g.txns.find_gxid(t.gxid).is_some() {
                return Err(format!("duplicate GXID {}", t.gxid));
            }
            t.client_id = f.num()?;
            t.conn_id = f.num()?;
            t.state = match f.num::<u8>()? {
                0 => TxnState::Starting,
                1 => TxnState::PrepareInProgress,
                2 => TxnState::Prepared,
                s => return Err(format!("bad transaction state {s}")),
            };
            t.isolation = f.num()?;
            t.read_only = f.flag()?;
            t.vacuum = f.flag()?;
            t.xmin = f.num()?;
            t.snapshot_set = f.flag()?;
            t.session = f.bytes()?;
            if t.session.len() > super::txns::MAX_SESSION_ID_LEN {
                return Err("session id too long".into());
            }
            t.gid = f.opt_bytes()?;
            t.nodes = f.opt_bytes()?;
            t.created_seqs = f.list(unhex)?;
            t.dropped_seqs = f.list(unhex)?;
            t.altered_seqs = f.list(|s| {
                let p = parts(s, 2)?;
                Ok((unhex(p[0])?, unhex(p[1])?))
            })?;
            f.done()?;
            if g.txns.len() >= MAX_TXNS {
                return Err("too many transactions".into());
            }
            g.txns.insert(t);
        }
        "node" => {
            let node = Node {
                node_type: f.num()?,
                name: f.bytes()?,
                host: f.bytes()?,
                port: f.num()?,
                proxy_name: f.bytes()?,
                data_folder: f.bytes()?,
                status: f.num()?,
                // A promoted standby's nodes: no registering link of ours.
                socket: -1,
                reported_xmin: f.num()?,
                reported_xmin_time: f.num()?,
                excluded: f.flag()?,
                joining: f.flag()?,
                is_session: f.flag()?,
                max_sessions: f.num()?,
                sessions: f.list(|s| {
                    let p = parts(s, 2)?;
                    Ok((parse_num(p[0])?, parse_num(p[1])?))
                })?,
            };
            f.done()?;
            if g.nodes.find(node.node_type, &node.name).is_some() {
                return Err("duplicate node".into());
            }
            g.nodes.list.push(node);
        }
        "seq" => {
            let s = Seq {
                key: f.bytes()?,
                old_key: f.opt_bytes()?,
                value: f.num()?,
                init_value: f.num()?,
                increment: f.num()?,
                min: f.num()?,
                max: f.num()?,
                cycle: f.flag()?,
                called: f.flag()?,
                created_gxid: f.num()?,
                max_lastvals: f.num()?,
                ref_count: f.num()?,
                last_values: f.list(|s| {
                    let p = parts(s, 3)?;
                    Ok(LastVal { coord_name: unhex(p[0])?, coord_pid: parse_num(p[1])?, value: parse_num(p[2])? })
                })?,
            };
            f.done()?;
            if g.seqs.get(&s.key).is_some() {
                return Err("duplicate sequence key".into());
            }
            g.seqs.list.push(s);
        }
        other => return Err(format!("unknown record {other:?}")),
    }
    Ok(())
}

fn validate(g: &Gtm) -> Result<(), String> {
    if !super::gxid_is_normal(g.next_gxid) {
        return Err(format!("next_gxid {} is not a normal GXID", g.next_gxid));
    }
    if g.next_client_id == 0 {
        return Err("next_client_id is 0".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::{Begin, BeginElem, Request, SeqSession};
    use crate::sim::LinkCtx;

    fn populated() -> Gtm {
        let mut g = Gtm::new(GtmConfig::default(), Box::new(|| 77));
        let p = LinkCtx::proxy(1, 5, -1);
        let elem = |s: &[u8], c| BeginElem {
            begin: Begin { isolation: 1, read_only: false, session_id: Bytes::copy_from_slice(s) },
            conn_id: c,
        };
        g.handle(&p, Request::TxnBeginGetGxidMulti(vec![elem(b"s1\0", 3), elem(b"\0", 4)]));
        g.handle(
            &LinkCtx::direct(2, 7),
            Request::TxnBegin(Begin { isolation: 0, read_only: true, session_id: Bytes::new() }),
        );
        g.handle(
            &LinkCtx::direct(2, 7),
            Request::TxnStartPrepared {
                gxid: 10001,
                gid: Bytes::from_static(b"g 1"),
                nodes: Bytes::from_static(b"dn1"),
            },
        );
        g.handle(&p, Request::RegisterSession { coord_name: Bytes::from_static(b"cn1"), coord_pid: 9, backend_id: 1 });
        g.handle(
            &p,
            Request::SequenceInit {
                key: Bytes::from_static(b"db.s\0"),
                increment: 1,
                min: 1,
                max: 100,
                start: 1,
                cycle: false,
                gxid: 10000,
            },
        );
        g.handle(
            &p,
            Request::SequenceGetNext {
                key: Bytes::from_static(b"db.s\0"),
                session: SeqSession { coord_name: Bytes::from_static(b"cn1"), coord_pid: 9 },
                range: 1,
            },
        );
        g.accept();
        g
    }

    #[test]
    fn round_trip() {
        let g = populated();
        let text = encode(&g);
        let h = decode(&text, Box::new(|| 0)).unwrap();
        assert_eq!(encode(&h), text);
        assert_eq!(h.next_gxid(), 10002);
        assert_eq!(h.txns().count(), 3);
        let t = h.txn(10000).unwrap();
        assert_eq!((t.client_id, t.conn_id, t.session.as_slice(), t.created_seqs.len()), (5, 3, &b"s1"[..], 1));
        assert_eq!(h.txn(10001).unwrap().gid.as_deref(), Some(&b"g 1"[..]));
        // Promotion bookkeeping: the highest client id among open transactions.
        assert_eq!(h.starting_client_id(), 7);
        assert_eq!(h.next_client_id, g.next_client_id);
        assert_eq!(h.nodes.list[0].socket, -1);
        assert_eq!(h.seqs.list, g.seqs.list);
    }

    #[test]
    fn corruption_is_refused() {
        let text = encode(&populated());
        let flipped = text.replacen("next_gxid 10002", "next_gxid 10003", 1);
        assert_eq!(decode(&flipped, Box::new(|| 0)).unwrap_err(), "checksum mismatch");
        let cut = &text[..text.len() / 2];
        assert!(decode(cut, Box::new(|| 0)).is_err());
        assert!(decode("", Box::new(|| 0)).is_err());
        let body = "gtm_sim-state 2\n";
        let bad_version = format!("{body}end {:016x}\n", checksum(body.as_bytes()));
        assert!(decode(&bad_version, Box::new(|| 0)).unwrap_err().contains("unsupported header"));
        let body = "gtm_sim-state 1\ntxn 1 2\n";
        let short = format!("{body}end {:016x}\n", checksum(body.as_bytes()));
        assert_eq!(decode(&short, Box::new(|| 0)).unwrap_err(), "line 2: missing field");
    }

    #[test]
    fn save_and_load_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), Box::new(|| 0)).unwrap().is_none());
        save(&populated(), dir.path()).unwrap();
        let g = load(dir.path(), Box::new(|| 0)).unwrap().unwrap();
        assert_eq!(g.next_gxid(), 10002);
        fs::write(dir.path().join(STATE_FILE), "garbage").unwrap();
        match load(dir.path(), Box::new(|| 0)) {
            Err(PersistError::Corrupt { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
