//! `gtm_sim` over real loopback sockets: byte-exact answers (checked against the
//! protocol reference dumps and the cap6 probe captures of the real gtm), proxy
//! link buffering, cleanup on disconnect, fatal paths, persistence across a
//! kill -9, signals and many links.

mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gtmproxy::codec::{Begin, BeginElem, NodeRegister, Request, Response, ServerFrame};
use harness::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

fn cap6(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/cap6").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn begin(session: &str) -> Begin {
    let mut s = session.as_bytes().to_vec();
    s.push(0);
    Begin { isolation: 1, read_only: false, session_id: Bytes::from(s) }
}

fn elem(session: &str, conn_id: i16) -> BeginElem {
    BeginElem { begin: begin(session), conn_id }
}

/// Microseconds since 2000-01-01 now, the GTM clock.
fn gtm_now() -> i64 {
    gtmproxy::sim::gtm_now()
}

fn ts_at(raw: &[u8], off: usize) -> i64 {
    i64::from_le_bytes(raw[off..off + 8].try_into().unwrap())
}

fn assert_recent(ts: i64) {
    assert!((ts - gtm_now()).abs() < 60_000_000, "timestamp {ts} is not the GTM clock");
}

/// Whether `gxid` is an open transaction, asked through a snapshot (status 0
/// open, 3 unknown).
fn is_open(c: &mut Client, gxid: u32) -> bool {
    match c.call(&Request::SnapshotGet { count: 1, gxid }) {
        Response::SnapshotGet { status, .. } => status == 0,
        r => panic!("{r:?}"),
    }
}

#[test]
fn begin_snapshot_commit_byte_exact() {
    let sim = Daemon::sim(&[]);
    let mut c = Client::connect(sim.addr);
    // Dump 1 of the protocol reference: a coordinator backend's exact bytes.
    let mut startup = hex("41 00 00 00 50 63 6e 31");
    startup.extend([0u8; 61]);
    startup.extend(hex("03 00 00 00 00 00 00 00 00 00 00 00"));
    c.send_raw(&startup);
    assert_eq!(c.recv_bytes(), hex("52 00 00 00 08 00 00 00 02"));

    c.send_raw(&hex("43 00 00 00 10 00 00 00 28 00 00 00 01 00 00 00 00"));
    assert_eq!(
        c.recv_bytes(),
        hex("53 00 00 00 1c 00 00 00 19 01 00 00 00 03 00 00 00 10 27 00 00 10 27 00 00 00 00 00 00")
    );
    c.send_raw(&hex("43 00 00 00 1e 00 00 00 10 00 00 00 01 00 00 00 00 0d 63 6e 31 5f 31 38 35 31 35 5f 31 37 00"));
    let r = c.recv_bytes();
    assert_eq!(&r[..13], &hex("53 00 00 00 14 00 00 00 0b 10 27 00 00")[..]);
    assert_recent(ts_at(&r, 13));
    c.send_raw(&hex("43 00 00 00 10 00 00 00 18 00 00 00 01 10 27 00 00"));
    assert_eq!(c.recv_bytes(), hex("53 00 00 00 10 00 00 00 11 01 00 00 00 00 00 00 00"));
    c.send_raw(&hex("43 00 00 00 10 00 00 00 28 00 00 00 01 00 00 00 00"));
    assert_eq!(
        c.recv_bytes(),
        hex("53 00 00 00 1c 00 00 00 19 01 00 00 00 03 00 00 00 11 27 00 00 11 27 00 00 00 00 00 00")
    );
    // Dump 5 layouts: commit of an unknown GXID, rollback with its big-endian status.
    c.send_raw(&hex("43 00 00 00 10 00 00 00 16 19 27 00 00 00 00 00 00"));
    assert_eq!(c.recv_bytes(), hex("53 00 00 00 10 00 00 00 10 19 27 00 00 ff ff ff ff"));
    c.send(&Request::TxnBeginGetGxid(begin("")));
    c.recv_bytes();
    c.send_raw(&hex("43 00 00 00 0c 00 00 00 1e 11 27 00 00"));
    assert_eq!(c.recv_bytes(), hex("53 00 00 00 10 00 00 00 12 11 27 00 00 00 00 00 00"));
    c.send(&Request::TxnGetNextGxid);
    assert_eq!(c.recv_bytes(), hex("53 00 00 00 0c 00 00 00 16 00 00 27 12"));
}

#[test]
fn grouped_begin_on_a_proxy_link_waits_for_flush() {
    let sim = Daemon::sim(&[]);
    let mut p = Client::worker_link(sim.addr);
    // Dump 2, round A: the XL proxy's three-element MULTI, header -1.
    p.send_raw(&hex(
        "43 00 00 00 46 ff ff 00 00 00 12 00 00 00 03 00 00 00 01 00 00 00 00 0b 63 6e 31 5f 31 31 31 31 \
         5f 31 00 00 00 00 00 00 01 00 00 00 00 0b 63 6e 31 5f 32 32 32 32 5f 32 00 00 01 00 00 00 01 00 \
         00 00 00 01 00 00 02",
    ));
    p.expect_silence(QUIET);
    p.flush();
    let r = p.recv_bytes();
    assert_eq!(&r[..27], &hex("53 00 00 00 22 00 00 00 0c ff ff 03 00 00 00 10 27 00 00 11 27 00 00 12 27 00 00")[..]);
    assert_recent(ts_at(&r, 27));
    assert_eq!(r.len(), 35);

    p.send_proxied(-1, &Request::TxnCommitMulti(vec![10002]));
    p.flush();
    assert_eq!(p.recv_bytes(), hex("53 00 00 00 12 00 00 00 11 ff ff 01 00 00 00 00 00 00 00"));

    // Round B: a forwarded snapshot (header 2) then a grouped one; answers in order.
    p.send_proxied(2, &Request::SnapshotGet { count: 1, gxid: 10002 });
    p.send_proxied(-1, &Request::SnapshotGetMulti(vec![10000, 10001]));
    p.expect_silence(QUIET);
    p.flush();
    assert_eq!(
        p.recv_bytes(),
        hex("53 00 00 00 2a 00 00 00 18 02 00 12 27 00 00 01 00 00 00 03 00 00 00 \
             10 27 00 00 13 27 00 00 00 00 00 02 10 27 00 00 11 27 00 00")
    );
    assert_eq!(
        p.recv_bytes(),
        hex("53 00 00 00 2a 00 00 00 19 ff ff 02 00 00 00 00 00 00 00 00 00 00 00 \
             10 27 00 00 13 27 00 00 00 00 00 02 10 27 00 00 11 27 00 00")
    );

    // Round C: commit and rollback MULTIs.
    p.send_proxied(-1, &Request::TxnCommitMulti(vec![10000]));
    p.send_proxied(-1, &Request::TxnRollbackMulti(vec![10001]));
    p.flush();
    assert_eq!(p.recv_bytes(), hex("53 00 00 00 12 00 00 00 11 ff ff 01 00 00 00 00 00 00 00"));
    assert_eq!(p.recv_bytes(), hex("53 00 00 00 12 00 00 00 13 ff ff 01 00 00 00 00 00 00 00"));
    // F itself is never answered.
    p.flush();
    p.expect_silence(QUIET);
}

#[test]
fn report_xmin_and_errors_are_flushed_without_f() {
    let sim = Daemon::sim(&[]);
    let mut p = Client::worker_link(sim.addr);
    p.send_proxied(-1, &Request::SnapshotGetMulti(vec![0]));
    p.expect_silence(QUIET);
    // Dump 4's REPORT_XMIN from slot 2; cn1 is not registered here (errcode 2).
    p.send_raw(&hex("43 00 00 00 19 02 00 00 00 00 07 24 27 00 00 00 00 00 03 00 00 00 03 63 6e 31"));
    let snap = hex("53 00 00 00 1e 00 00 00 19 ff ff 01 00 00 00 03 00 00 00 10 27 00 00 10 27 00 00 00 00 00 00");
    assert_eq!(p.recv_bytes(), snap);
    assert_eq!(p.recv_bytes(), hex("53 00 00 00 16 00 00 00 04 02 00 0f 27 00 00 00 00 00 00 02 00 00 00"));
    // An E goes out at once too, with what was buffered before it.
    p.send_proxied(-1, &Request::SnapshotGetMulti(vec![0]));
    p.send_proxied(
        2,
        &Request::TxnGetGidData { isolation: 1, read_only: false, gid: Bytes::from_static(b"nosuchgid") },
    );
    assert_eq!(p.recv_bytes(), snap);
    // Dump 3, byte for byte.
    let mut e = hex("45 00 00 00 3f 02 00 53 45 52 52 4f 52 00 4d");
    e.extend(b"Failed to get GID Data for prepared transaction\0\0");
    assert_eq!(p.recv_bytes(), e);
    p.expect_silence(QUIET);
}

#[test]
fn error_frames_on_direct_links() {
    let sim = Daemon::sim(&[]);
    let mut c = Client::backend(sim.addr, "cn1");
    c.send(&Request::TxnGetGidData { isolation: 1, read_only: false, gid: Bytes::from_static(b"nosuchgid") });
    let mut e = hex("45 00 00 00 3d 53 45 52 52 4f 52 00 4d");
    e.extend(b"Failed to get GID Data for prepared transaction\0\0");
    assert_eq!(c.recv_bytes(), e);
    let reg = Request::NodeRegister(NodeRegister {
        node_type: 1,
        name: Bytes::from_static(b"proxy1"),
        host: Bytes::from_static(b"127.0.0.1"),
        port: 16002,
        proxy_name: Bytes::new(),
        data_folder: Bytes::from_static(b"/srv/pgxl/cluster/proxy1"),
        status: 0,
    });
    assert_eq!(c.call(&reg), Response::NodeRegister { node_type: 1, name: Bytes::from_static(b"proxy1") });
    // cap6: the promoted GTM refusing the proxy's re-registration.
    c.send(&reg);
    assert_eq!(c.recv_bytes(), cap6("conn11-gtm2-to-proxy1.bin")[9..].to_vec());
    // A malformed payload is an ERROR; the link stays usable.
    c.send_raw(&hex("43 00 00 00 0c 00 00 00 10 00 00 00 01"));
    let mut e = hex("45 00 00 00 25 53 45 52 52 4f 52 00 4d");
    e.extend(b"no data left in message\0\0");
    assert_eq!(c.recv_bytes(), e);
    assert_eq!(c.call(&Request::TxnGetNextGxid), Response::TxnGetNextGxid { gxid: 10000 });
    // An unknown frame byte: ERROR, only that byte is consumed.
    c.send_raw(b"Z");
    match c.recv() {
        ServerFrame::Error { fields, .. } => {
            assert_eq!(
                (fields.severity(), fields.message()),
                ("ERROR".into(), "invalid frontend message type 90".into())
            )
        }
        f => panic!("{f:?}"),
    }
    assert_eq!(c.call(&Request::TxnGetNextGxid), Response::TxnGetNextGxid { gxid: 10000 });
}

#[test]
fn sessions_share_one_gxid() {
    let sim = Daemon::sim(&[]);
    // cap6 conn29: two begins with the same session in one write.
    let mut probe = Client::connect(sim.addr);
    probe.send_raw(&cap6("conn29-probe-to-gtm2.bin"));
    probe.recv_bytes();
    let a = probe.recv_bytes();
    let b = probe.recv_bytes();
    assert_eq!(&a[..13], &hex("53 00 00 00 14 00 00 00 0b 10 27 00 00")[..]);
    assert_eq!(a[..13], b[..13]);
    // The same session through a proxy MULTI gets the same GXID, and an element
    // reusing it keeps the transaction's original connection id.
    let mut p = Client::worker_link(sim.addr);
    p.send_proxied(-1, &Request::TxnBeginGetGxidMulti(vec![elem("cn9_1_1", 4), elem("other", 5)]));
    p.flush();
    match p.recv() {
        ServerFrame::Result(r) => match r.response().unwrap() {
            Response::TxnBeginGetGxidMulti { gxids, .. } => assert_eq!(gxids, vec![10000, 10001]),
            r => panic!("{r:?}"),
        },
        f => panic!("{f:?}"),
    }
    // Disconnecting backend 4 does not touch the probe's transaction (tagged -1).
    p.send_proxied(4, &Request::BackendDisconnect { is_postmaster: false, node: None });
    p.flush();
    p.expect_silence(QUIET);
    let mut o = Client::backend(sim.addr, "cn1");
    assert!(is_open(&mut o, 10000));
}

#[test]
fn backend_disconnect_versus_link_close() {
    let sim = Daemon::sim(&[]);
    let mut p = Client::worker_link(sim.addr);
    p.send_proxied(-1, &Request::TxnBeginGetGxidMulti(vec![elem("a", 1), elem("b", 2), elem("c", 3)]));
    p.send_proxied(
        3,
        &Request::TxnStartPrepared { gxid: 10002, gid: Bytes::from_static(b"gid3"), nodes: Bytes::from_static(b"dn1") },
    );
    p.flush();
    p.recv();
    p.recv();
    let mut o = Client::backend(sim.addr, "cn1");
    p.send_proxied(1, &Request::BackendDisconnect { is_postmaster: false, node: None });
    p.send_proxied(3, &Request::BackendDisconnect { is_postmaster: false, node: None });
    p.flush();
    p.expect_silence(QUIET);
    assert!(!is_open(&mut o, 10000));
    assert!(is_open(&mut o, 10001));
    assert!(is_open(&mut o, 10002), "prepared transactions survive");
    p.close();
    p.expect_eof();
    assert!(!is_open(&mut o, 10001), "link close aborts the rest of the client's transactions");
    assert!(is_open(&mut o, 10002));
    // EOF without X does the same.
    let mut d = Client::backend(sim.addr, "cn1");
    d.call(&Request::TxnBeginGetGxid(begin("d")));
    drop(d);
    let deadline = Instant::now() + WAIT;
    while is_open(&mut o, 10003) {
        assert!(Instant::now() < deadline, "EOF did not abort the transaction");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn unknown_message_type_is_fatal_and_keeps_transactions() {
    let sim = Daemon::sim(&[]);
    let mut c = Client::backend(sim.addr, "cn1");
    c.call(&Request::TxnBeginGetGxid(begin("kept")));
    c.send_raw(&hex("43 00 00 00 08 00 00 00 63"));
    // cap6 conn19: the promoted gtm's answer to message type 99.
    assert_eq!(c.recv_bytes(), cap6("conn19-gtm2-to-probe.bin")[9..].to_vec());
    c.expect_eof();
    let mut o = Client::backend(sim.addr, "cn1");
    assert!(is_open(&mut o, 10000), "the fatal path does not abort the link's transactions");
}

#[test]
fn startup_rejections_match_cap6() {
    let sim = Daemon::sim(&[]);
    for (probe, answer) in [
        ("conn15-probe-to-gtm2.bin", "conn15-gtm2-to-probe.bin"),
        ("conn16-probe-to-gtm2.bin", "conn16-gtm2-to-probe.bin"),
        ("conn17-probe-to-gtm2.bin", "conn17-gtm2-to-probe.bin"),
    ] {
        let mut c = Client::connect(sim.addr);
        c.send_raw(&cap6(probe));
        assert_eq!(c.recv_bytes(), cap6(answer), "{probe}");
        c.expect_eof();
    }
    // Probes answered with S (after R, whose client id differs): same bytes.
    for (probe, answer) in [
        ("conn23-probe-to-gtm2.bin", "conn23-gtm2-to-probe.bin"),
        ("conn24-probe-to-gtm2.bin", "conn24-gtm2-to-probe.bin"),
        ("conn25-probe-to-gtm2.bin", "conn25-gtm2-to-probe.bin"),
    ] {
        let mut c = Client::connect(sim.addr);
        c.send_raw(&cap6(probe));
        assert_eq!(c.recv_bytes()[..5], cap6(answer)[..5]);
        assert_eq!(c.recv_bytes(), cap6(answer)[9..].to_vec(), "{probe}");
    }
    // Probes the real gtm never answered: MSG_TXN_GET_STATUS, MSG_SEQUENCE_GET_LAST, F.
    for probe in ["conn18-probe-to-gtm2.bin", "conn22-probe-to-gtm2.bin", "conn30-probe-to-gtm2.bin"] {
        let mut c = Client::connect(sim.addr);
        c.send_raw(&cap6(probe));
        assert_eq!(c.recv_bytes()[0], b'R');
        c.expect_silence(QUIET);
    }
}

#[test]
fn proxy_send_buffer_is_8k() {
    let sim = Daemon::sim(&[]);
    let mut p = Client::worker_link(sim.addr);
    let mut batch = bytes::BytesMut::new();
    for _ in 0..500 {
        gtmproxy::codec::encode_command(&mut batch, Some(1), &Request::TxnBeginGetGxid(begin("")));
    }
    p.send_raw(&batch);
    // 500 results of 23 bytes; the GTM's 8 KiB send buffer went out when full,
    // and nothing more until F: wait for those bytes, then check that no more
    // arrive (a GTM flushing early fails the second check, one never flushing
    // the full buffer the first).
    assert_eq!(p.buffer_at_least(8192), 8192);
    assert_eq!(p.partial_bytes(QUIET), 8192, "only a full 8 KiB buffer goes out before F");
    p.flush();
    assert_eq!(p.buffer_at_least(500 * 23), 500 * 23);
    assert_eq!(p.partial_bytes(QUIET), 500 * 23);
}

#[test]
fn persistent_state_survives_kill9_like_a_promoted_standby() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = Daemon::sim_in(tmp.path(), 0, &["--persist"], None);
    let mut p = Client::worker_link(first.addr);
    assert_eq!(p.client_id, Some(2));
    p.send_proxied(-1, &Request::TxnBeginGetGxidMulti(vec![elem("s1", 1), elem("s2", 2)]));
    p.flush();
    p.recv();
    let mut d = Client::backend(first.addr, "cn1");
    assert_eq!(d.client_id, Some(3));
    d.call(&Request::TxnBeginGetGxid(begin("d1")));
    d.call(&Request::TxnCommitMulti(vec![10002]));
    d.call(&Request::TxnBeginGetGxid(begin("d2")));
    let key = Bytes::from_static(b"db.public.s\0");
    d.call(&Request::SequenceInit {
        key: key.clone(),
        increment: 1,
        min: 1,
        max: 100,
        start: 1,
        cycle: false,
        gxid: 0,
    });
    let nextval = |c: &mut Client| match c.call(&Request::SequenceGetNext {
        key: key.clone(),
        session: gtmproxy::codec::SeqSession { coord_name: Bytes::from_static(b"cn1"), coord_pid: 1 },
        range: 1,
    }) {
        Response::SequenceGetNext { value, .. } => value,
        r => panic!("{r:?}"),
    };
    assert_eq!(nextval(&mut d), 1);
    // Every answer seen was durable before it left: kill -9 right away.
    first.kill9();

    let second = Daemon::sim_in(tmp.path(), 0, &["--persist"], None);
    let mut o = Client::backend(second.addr, "cn1");
    assert_eq!(o.call(&Request::TxnGetNextGxid), Response::TxnGetNextGxid { gxid: 10004 });
    for g in [10000, 10001, 10003] {
        assert!(is_open(&mut o, g), "GXID {g} survived");
    }
    assert!(!is_open(&mut o, 10002));
    assert_eq!(nextval(&mut o), 2);
    // The old proxy worker re-presents client id 2 (≤ the highest client id among
    // open transactions, 3) and gets it back; an unknown higher id does not.
    let mut p2 = Client::connect(second.addr);
    assert_eq!(p2.startup("proxy1", 1, false, 2), 2);
    let mut stranger = Client::connect(second.addr);
    assert_ne!(stranger.startup("x", 1, false, 99), 99);
    // So its backends' transactions are still associated with it.
    p2.send_proxied(1, &Request::BackendDisconnect { is_postmaster: false, node: None });
    p2.send_proxied(-1, &Request::TxnCommitMulti(vec![10001]));
    p2.flush();
    match p2.recv() {
        ServerFrame::Result(r) => assert_eq!(r.response().unwrap(), Response::TxnCommitMulti { statuses: vec![0] }),
        f => panic!("{f:?}"),
    }
    assert!(!is_open(&mut o, 10000), "backend 1's transaction went with its disconnect");
    assert_eq!(o.call(&Request::TxnCommitMulti(vec![10003])), Response::TxnCommitMulti { statuses: vec![0] });
    match o.call(&Request::TxnBeginGetGxid(begin("new"))) {
        Response::TxnBeginGetGxid { gxid, .. } => assert_eq!(gxid, 10004),
        r => panic!("{r:?}"),
    }
    assert!(second.log().contains("starting client id 3"), "{}", second.log());
}

#[test]
fn corrupt_state_file_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("gtm_sim.state"), "gtm_sim-state 1\nnext_gxid 5\nend 0\n").unwrap();
    let mut cmd = command(sim_bin());
    cmd.args(["-p", "0", "--persist", "-l", "gtm_sim.log", "-D"]).arg(tmp.path());
    let out = run_bounded(cmd, WAIT);
    assert!(!out.status.success());
    let log = std::fs::read_to_string(tmp.path().join("gtm_sim.log")).unwrap();
    assert!(log.contains("corrupt state file"), "{log}");
}

#[test]
fn sigterm_exits_cleanly_and_removes_the_pid_file() {
    let mut sim = Daemon::sim(&[]);
    let pid_file = sim.dir.join("gtm.pid");
    let text = std::fs::read_to_string(&pid_file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text:?}");
    assert_eq!(lines[0], sim.pid().to_string());
    assert_eq!(Path::new(lines[1]), std::path::absolute(&sim.dir).unwrap());
    assert_eq!(lines[2], "1");
    let status = sim.terminate();
    assert!(status.success(), "{status}");
    assert!(!pid_file.exists());
}

#[test]
fn requests_that_crash_the_real_gtm_end_the_process() {
    let mut sim = Daemon::sim(&[]);
    let mut c = Client::backend(sim.addr, "cn1");
    c.send_raw(&hex("43 00 00 00 0c 00 00 00 12 00 00 00 00"));
    match c.recv() {
        ServerFrame::Error { fields, .. } => {
            assert_eq!((fields.severity(), fields.message()), ("PANIC".into(), "Zero or less transaction count".into()))
        }
        f => panic!("{f:?}"),
    }
    c.expect_eof();
    let status = sim.wait_exit(WAIT).expect("gtm_sim kept running");
    assert_eq!(status.code(), Some(gtmproxy::sim::EXIT_WOULD_CRASH));
    assert!(sim.log().contains("would abort the real GTM"));
}

#[test]
fn stop_cont_and_restart_on_the_same_port() {
    let mut sim = Daemon::sim(&[]);
    let addr = sim.addr;
    let mut c = Client::backend(addr, "cn1");
    sim.stop();
    c.send(&Request::TxnGetNextGxid);
    c.expect_silence(QUIET);
    sim.cont();
    assert!(matches!(c.recv(), ServerFrame::Result(_)));
    c.call(&Request::TxnBeginGetGxid(begin("x")));
    sim.restart_same_port(&[]);
    assert_eq!(sim.addr, addr);
    c.expect_eof();
    let mut c = Client::backend(addr, "cn1");
    assert_eq!(c.client_id, Some(2), "a restart without --persist starts from scratch");
    assert_eq!(c.call(&Request::TxnGetNextGxid), Response::TxnGetNextGxid { gxid: 10000 });
}

#[test]
fn a_thousand_links() {
    let sim = Daemon::sim(&[]);
    let mut links: Vec<Client> = (0..1000).map(|_| Client::backend(sim.addr, "cn1")).collect();
    for c in &mut links {
        c.send(&Request::TxnBeginGetGxid(begin("")));
    }
    let mut gxids: Vec<u32> = links
        .iter_mut()
        .map(|c| match c.recv() {
            ServerFrame::Result(r) => match r.response().unwrap() {
                Response::TxnBeginGetGxid { gxid, .. } => gxid,
                r => panic!("{r:?}"),
            },
            f => panic!("{f:?}"),
        })
        .collect();
    gxids.sort_unstable();
    gxids.dedup();
    assert_eq!(gxids.len(), 1000);
    let ids: std::collections::HashSet<_> = links.iter().map(|c| c.client_id).collect();
    assert_eq!(ids.len(), 1000);
}

#[test]
fn a_pipelined_flood_is_answered_in_full() {
    let sim = Daemon::sim(&[]);
    let mut c = Client::backend(sim.addr, "cn1");
    // 1.26 MB of requests in one go: more than one loop iteration's read budget.
    const N: usize = 140_000;
    let mut batch = bytes::BytesMut::new();
    for _ in 0..N {
        gtmproxy::codec::encode_command(&mut batch, None, &Request::TxnGetNextGxid);
    }
    let mut w = c.writer();
    let flood = std::thread::spawn(move || std::io::Write::write_all(&mut w, &batch).unwrap());
    // Meanwhile another link is served.
    let mut other = Client::backend(sim.addr, "cn1");
    assert_eq!(other.call(&Request::TxnGetNextGxid), Response::TxnGetNextGxid { gxid: 10000 });
    let want = hex("53 00 00 00 0c 00 00 00 16 00 00 27 10");
    for _ in 0..N {
        assert_eq!(c.recv_bytes(), want);
    }
    flood.join().unwrap();
}
