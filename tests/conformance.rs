//! Capture-replay conformance: what real XL 10 backends sent to XL's
//! `gtm_proxy` (`tests/vectors/capN/connNN-backend-to-proxy.bin`) is replayed
//! through our proxy (gtm_sim as the GTM), in the captured order across
//! connections (`timeline.tsv`), and every answer is compared with what XL's
//! proxy answered (`connNN-proxy-to-backend.bin`).
//!
//! Normalisations, and why each is legitimate:
//! * GXIDs: the simulator starts at the capture's first GXID (`-x`), and a
//!   map from captured GXIDs to ours is learned from begin answers (first
//!   sight); captured GXIDs in later requests are rewritten through it and
//!   captured answers are compared through it. A GXID is a counter value, not
//!   a behaviour.
//! * Timestamps of begin answers are zeroed: the GTM's clock at another time.
//! * The global xmin of `MSG_REPORT_XMIN` answers is not compared: the GTM
//!   computes it from the xmins nodes reported before the capture began and
//!   from transactions of earlier captures, history a fresh GTM does not
//!   have; the proxy passes it through untouched.
//! * Nothing else: frame types, result types, statuses, snapshots (through
//!   the GXID map), error texts and sequence values must match.
//!
//! Captures replayed: cap1, cap2 (test client through XL's proxy), cap4, cap5
//! (a real XL coordinator and datanode through XL's proxy). Connections that
//! were opened before a capture began (no startup packet in it) are left
//! out, with their answers. cap3 has no proxy; cap6 and cap7 are GTM failures
//! whose timing a replay cannot reproduce (covered by failover.rs).

mod harness;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME};
use gtmproxy::codec::*;
use harness::*;

fn cap_dir(cap: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(cap)
}

/// One row of timeline.tsv about a backend link.
struct Event {
    conn: String,
    to_proxy: bool,
    offset: usize,
    len: usize,
}

fn timeline(cap: &str) -> Vec<Event> {
    let text = std::fs::read_to_string(cap_dir(cap).join("timeline.tsv")).expect("timeline");
    let mut rows: Vec<(f64, Event)> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let to_proxy = f[2].contains("-backend-to-proxy");
            if !to_proxy && !f[2].contains("-proxy-to-backend") {
                return None;
            }
            let ev = Event {
                conn: f[1].to_string(),
                to_proxy,
                offset: f[3].parse().expect("offset"),
                len: f[4].parse().expect("length"),
            };
            Some((f[0].parse::<f64>().expect("time"), ev))
        })
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    rows.into_iter().map(|(_, e)| e).collect()
}

fn read_frame(cap: &str, conn: &str, to_proxy: bool, offset: usize, len: usize) -> RawFrame {
    let name =
        if to_proxy { format!("conn{conn}-backend-to-proxy.bin") } else { format!("conn{conn}-proxy-to-backend.bin") };
    let data = std::fs::read(cap_dir(cap).join(name)).expect("capture file");
    let mut b = BytesMut::from(&data[offset..offset + len]);
    frame::split(&mut b, DEFAULT_MAX_FRAME).expect("frame").expect("whole frame")
}

/// Captured GXID -> ours.
#[derive(Default)]
struct Gxids(HashMap<u32, u32>);

impl Gxids {
    fn learn(&mut self, captured: u32, ours: u32, what: &str) {
        let prev = *self.0.entry(captured).or_insert(ours);
        assert_eq!(prev, ours, "{what}: captured GXID {captured} answered as both {prev} and {ours}");
    }
    fn map(&self, g: u32) -> u32 {
        *self.0.get(&g).unwrap_or(&g)
    }
    fn list(&self, v: &[u32]) -> Vec<u32> {
        v.iter().map(|g| self.map(*g)).collect()
    }
}

fn rewrite_request(req: Request, m: &Gxids) -> Request {
    use Request::*;
    match req {
        ReportXmin { gxid, node_type, name } => ReportXmin { gxid: m.map(gxid), node_type, name },
        TxnStartPrepared { gxid, gid, nodes } => TxnStartPrepared { gxid: m.map(gxid), gid, nodes },
        TxnCommit { gxid, waited } => TxnCommit { gxid: m.map(gxid), waited: m.list(&waited) },
        TxnCommitMulti(v) => TxnCommitMulti(m.list(&v)),
        TxnCommitPrepared { gxid, prepared_gxid, waited } => {
            TxnCommitPrepared { gxid: m.map(gxid), prepared_gxid: m.map(prepared_gxid), waited: m.list(&waited) }
        }
        TxnPrepare { gxid } => TxnPrepare { gxid: m.map(gxid) },
        TxnRollback { gxid } => TxnRollback { gxid: m.map(gxid) },
        TxnRollbackMulti(v) => TxnRollbackMulti(m.list(&v)),
        SnapshotGet { count, gxid } => SnapshotGet { count, gxid: m.map(gxid) },
        SnapshotGetMulti(v) => SnapshotGetMulti(m.list(&v)),
        SnapshotGxidGet { count, gxid } => SnapshotGxidGet { count, gxid: m.map(gxid) },
        other => other,
    }
}

/// The captured answer in our terms: GXIDs through the map (learning from
/// begins), timestamps zeroed.
fn expected_response(captured: Response, ours: &Response, m: &mut Gxids, what: &str) -> Response {
    use Response::*;
    let snap = |s: Snapshot, m: &Gxids| Snapshot { xmin: m.map(s.xmin), xmax: m.map(s.xmax), xip: m.list(&s.xip) };
    match (captured, ours) {
        (TxnBeginGetGxid { gxid, .. }, TxnBeginGetGxid { gxid: o, .. }) => {
            m.learn(gxid, *o, what);
            TxnBeginGetGxid { gxid: *o, timestamp: 0 }
        }
        (TxnBeginGetGxidMulti { gxids, .. }, TxnBeginGetGxidMulti { gxids: o, .. }) if gxids.len() == o.len() => {
            for (c, g) in gxids.iter().zip(o) {
                m.learn(*c, *g, what);
            }
            TxnBeginGetGxidMulti { gxids: o.clone(), timestamp: 0 }
        }
        (TxnBeginGetGxidAutovacuum { gxid }, TxnBeginGetGxidAutovacuum { gxid: o }) => {
            m.learn(gxid, *o, what);
            TxnBeginGetGxidAutovacuum { gxid: *o }
        }
        (TxnBegin { handle, .. }, _) => TxnBegin { handle, timestamp: 0 },
        (ReportXmin { latest_completed, global_xmin, errcode }, _) => {
            let _ = global_xmin;
            let global_xmin = match ours {
                ReportXmin { global_xmin, .. } => *global_xmin,
                _ => 0,
            };
            ReportXmin { latest_completed: m.map(latest_completed), global_xmin, errcode }
        }
        (TxnPrepare { gxid }, _) => TxnPrepare { gxid: m.map(gxid) },
        (TxnStartPrepared { gxid }, _) => TxnStartPrepared { gxid: m.map(gxid) },
        (TxnCommitPrepared { gxid, status }, _) => TxnCommitPrepared { gxid: m.map(gxid), status },
        (TxnCommit { gxid, status }, _) => TxnCommit { gxid: m.map(gxid), status },
        (TxnRollback { gxid, status }, _) => TxnRollback { gxid: m.map(gxid), status },
        (TxnGetGidData { gxid, prepared_gxid, nodes }, _) => {
            TxnGetGidData { gxid: m.map(gxid), prepared_gxid: m.map(prepared_gxid), nodes }
        }
        (TxnGetNextGxid { gxid }, _) => TxnGetNextGxid { gxid: m.map(gxid) },
        (SnapshotGet { gxid, count, status, snapshot }, _) => {
            SnapshotGet { gxid: m.map(gxid), count, status, snapshot: snap(snapshot, m) }
        }
        (SnapshotGetMulti { statuses, snapshot }, _) => SnapshotGetMulti { statuses, snapshot: snap(snapshot, m) },
        (SnapshotGxidGet { gxid, count, status, snapshot }, _) => {
            SnapshotGxidGet { gxid: m.map(gxid), count, status, snapshot: snap(snapshot, m) }
        }
        (other, _) => other,
    }
}

fn zero_timestamps(r: Response) -> Response {
    match r {
        Response::TxnBeginGetGxid { gxid, .. } => Response::TxnBeginGetGxid { gxid, timestamp: 0 },
        Response::TxnBeginGetGxidMulti { gxids, .. } => Response::TxnBeginGetGxidMulti { gxids, timestamp: 0 },
        Response::TxnBegin { handle, .. } => Response::TxnBegin { handle, timestamp: 0 },
        other => other,
    }
}

/// The capture's first GXID (the lowest one a begin answer handed out).
fn first_gxid(cap: &str, events: &[Event]) -> u32 {
    events
        .iter()
        .filter(|e| !e.to_proxy)
        .filter_map(|e| {
            let raw = read_frame(cap, &e.conn, false, e.offset, e.len);
            match ServerFrame::decode(raw, false).ok()? {
                ServerFrame::Result(r) => match r.response().ok()? {
                    Response::TxnBeginGetGxid { gxid, .. } | Response::TxnBeginGetGxidAutovacuum { gxid } => Some(gxid),
                    _ => None,
                },
                _ => None,
            }
        })
        .min()
        .unwrap_or(10000)
}

/// Replays one capture; returns how many answers were compared.
fn replay(cap: &str) -> usize {
    let events = timeline(cap);
    let x = first_gxid(cap, &events).to_string();
    let sim = Daemon::sim(&["-x", &x]);
    let proxy = Daemon::proxy(sim.addr, "", 1);
    let mut clients: BTreeMap<String, Client> = BTreeMap::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut gxids = Gxids::default();
    let mut compared = 0;
    for e in &events {
        if skipped.contains(&e.conn) {
            continue;
        }
        let raw = read_frame(cap, &e.conn, e.to_proxy, e.offset, e.len);
        let what = format!("{cap} conn{} @{}", e.conn, e.offset);
        if e.to_proxy {
            if !clients.contains_key(&e.conn) {
                if raw.tag != b'A' {
                    // Opened before the capture began.
                    skipped.push(e.conn.clone());
                    continue;
                }
                clients.insert(e.conn.clone(), Client::connect(proxy.addr));
            }
            let c = clients.get_mut(&e.conn).expect("client");
            let mut out = BytesMut::new();
            match ClientFrame::decode(raw.clone(), false) {
                Ok(ClientFrame::Command(cmd)) => match cmd.request() {
                    Ok(req) => encode_command(&mut out, None, &rewrite_request(req, &gxids)),
                    Err(_) => raw.encode(&mut out),
                },
                _ => raw.encode(&mut out),
            }
            c.send_raw(&out);
        } else {
            let Some(c) = clients.get_mut(&e.conn) else { continue };
            let want = ServerFrame::decode(raw, false).expect("captured answer decodes");
            let got = c.recv();
            match (want, got) {
                (ServerFrame::Result(w), ServerFrame::Result(g)) => {
                    let g = zero_timestamps(g.response().expect("our answer decodes"));
                    let w = expected_response(w.response().expect("captured answer decodes"), &g, &mut gxids, &what);
                    assert_eq!(g, w, "{what}");
                }
                (w, g) => assert_eq!(g, w, "{what}"),
            }
            compared += 1;
        }
    }
    compared
}

/// Replays a capture and checks that every captured answer of a connection
/// with a startup packet in the capture was compared (the counts are those
/// of the README tables, minus connections opened before the capture).
fn conforms(cap: &str, answers: usize) {
    assert_eq!(replay(cap), answers, "{cap}: answers compared");
}

#[test]
fn cap1_test_client_grouped_rounds() {
    conforms("cap1", 12);
}

#[test]
fn cap2_forwarded_messages_and_two_phase_commit() {
    conforms("cap2", 27);
}

#[test]
fn cap4_real_coordinator_and_datanode() {
    conforms("cap4", 135);
}

#[test]
fn cap5_autocommit_insert() {
    conforms("cap5", 11);
}
