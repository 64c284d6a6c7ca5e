//! Integration tests of gtm_proxy over real loopback sockets, with gtm_sim
//! as the GTM. They check every byte a backend sees.

mod harness;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gtmproxy::codec::types::node_type;
use gtmproxy::codec::*;
use harness::*;

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

/// Zero the timestamps of begin answers so runs can be compared.
fn normalise(frame: &[u8]) -> Vec<u8> {
    let mut v = frame.to_vec();
    if v[0] == b'S' && v.len() >= 9 {
        let t = i32::from_be_bytes([v[5], v[6], v[7], v[8]]);
        let n = v.len();
        if t == ResultType::TXN_BEGIN_GETGXID_RESULT.0
            || t == ResultType::TXN_BEGIN_RESULT.0
            || t == ResultType::TXN_BEGIN_GETGXID_MULTI_RESULT.0
        {
            v[n - 8..].fill(0);
        }
    }
    v
}

/// What the proxy changes in a direct GTM answer: the XL proxy's rewrites
/// (protocol doc 6.2), and a per-element failure of a grouped request
/// becoming an `E` for that backend (doc 6.3).
fn as_proxy_would(req: &Request, direct: Vec<u8>) -> Vec<u8> {
    let mut buf = BytesMut::from(&direct[..]);
    let raw = frame::split(&mut buf, frame::DEFAULT_MAX_FRAME).unwrap().unwrap();
    let ServerFrame::Result(r) = ServerFrame::decode(raw, false).unwrap() else { return direct };
    let resp = r.response().unwrap();
    let element_failed = |what: &str, status: i32| {
        let mut out = BytesMut::new();
        let f = ErrorFields::new("ERROR", what).with_detail(&format!("GTM status {status}"));
        encode_error(&mut out, None, &f);
        out.to_vec()
    };
    let fixed = match (req, resp) {
        (Request::TxnRollback { .. }, Response::TxnRollback { status: Some(s), .. }) if s != 0 => {
            return element_failed("Transaction rollback failed", s)
        }
        (Request::TxnCommitMulti(v), Response::TxnCommitMulti { statuses }) if v.len() == 1 && statuses[0] != 0 => {
            return element_failed("Transaction commit failed", statuses[0])
        }
        (Request::TxnRollback { .. }, Response::TxnRollback { gxid, .. }) => {
            Response::TxnRollback { gxid, status: None }
        }
        (Request::SnapshotGetMulti(v), Response::SnapshotGetMulti { statuses, snapshot }) if v.len() == 1 => {
            Response::SnapshotGetMulti {
                statuses: statuses.iter().map(|s| if *s == 3 { 0 } else { *s }).collect(),
                snapshot,
            }
        }
        _ => return direct,
    };
    let mut out = BytesMut::new();
    encode_result(&mut out, None, &fixed);
    out.to_vec()
}

fn script() -> Vec<Request> {
    let key = b(b"db.public.s1\0");
    let key2 = b(b"db.public.s2\0");
    let sess = || SeqSession { coord_name: b(b"cn1"), coord_pid: 4242 };
    vec![
        Request::RegisterSession { coord_name: b(b"cn1"), coord_pid: 1234, backend_id: 2 },
        Request::NodeRegister(NodeRegister {
            node_type: node_type::DATANODE,
            name: b(b"dn9"),
            host: b(b"localhost"),
            port: 0,
            proxy_name: Bytes::new(),
            data_folder: Bytes::new(),
            status: 0,
        }),
        Request::ReportXmin { gxid: 10000, node_type: node_type::DATANODE, name: b(b"dn9") },
        Request::Barrier { id: b(b"b1\0") },
        Request::SequenceInit { key: key.clone(), increment: 1, min: 1, max: 1000, start: 1, cycle: false, gxid: 0 },
        Request::SequenceGetNext { key: key.clone(), session: sess(), range: 1 },
        Request::SequenceGetCurrent { key: key.clone(), session: sess() },
        Request::SequenceSetVal { key: key.clone(), session: sess(), value: 10, is_called: true },
        Request::SequenceAlter {
            key: key.clone(),
            increment: 2,
            min: 1,
            max: 2000,
            start: 1,
            last: 10,
            cycle: true,
            restart: false,
        },
        Request::SequenceRename { key: key.clone(), new_key: key2.clone(), gxid: 0 },
        Request::SequenceReset { key: key2.clone() },
        Request::SequenceClose { key: key2.clone(), key_type: 0, gxid: 0 },
        Request::SequenceGetNext { key: key.clone(), session: sess(), range: 1 },
        begin_req(b"cn1_1234_1\0"),
        Request::SnapshotGet { count: 1, gxid: 10000 },
        Request::SnapshotGxidGet { count: 1, gxid: 10000 },
        Request::SnapshotGetMulti(vec![10000]),
        Request::TxnPrepare { gxid: 10000 },
        Request::TxnStartPrepared { gxid: 10000, gid: b(b"gid1"), nodes: b(b"dn1,dn2") },
        Request::TxnGetGidData { isolation: 1, read_only: false, gid: b(b"gid1") },
        Request::TxnCommitPrepared { gxid: 10001, prepared_gxid: 10000, waited: vec![] },
        Request::TxnGetGidData { isolation: 1, read_only: false, gid: b(b"nosuchgid") },
        Request::TxnBegin(Begin { isolation: 1, read_only: false, session_id: b(b"\0") }),
        Request::TxnGetGxid { handle: 0 },
        Request::TxnBeginGetGxidAutovacuum { isolation: 1, read_only: false },
        begin_req(b"\0"),
        Request::SnapshotGetMulti(vec![0]),
        Request::TxnCommit { gxid: 10004, waited: vec![] },
        Request::TxnGetNextGxid,
        begin_req(b"\0"),
        Request::SnapshotGetMulti(vec![10005]),
        Request::TxnCommitMulti(vec![10005]),
        begin_req(b"\0"),
        Request::TxnRollback { gxid: 10006 },
        Request::TxnCommitMulti(vec![10006]),
        Request::TxnRollbackMulti(vec![10003]),
        Request::TxnBeginGetGxidMulti(vec![BeginElem {
            begin: Begin { isolation: 1, read_only: false, session_id: b(b"\0") },
            conn_id: 77,
        }]),
        Request::NodeUnregister { node_type: node_type::DATANODE, name: b(b"dn9") },
    ]
}

/// Every message a backend sends gets, through the proxy, exactly the bytes a
/// direct GTM connection gets (with the XL proxy's documented rewrites).
#[test]
fn every_message_answered_as_the_gtm_answers() {
    let sim_a = Daemon::sim(&[]);
    let sim_b = Daemon::sim(&[]);
    let proxy = Daemon::proxy(sim_a.addr, "", 1);
    let mut via = Client::proxy_backend(proxy.addr, "cn1");
    let mut direct = Client::connect(sim_b.addr);
    direct.startup("cn1", node_type::DEFAULT, false, 0);
    let mut handle = -1;
    for (i, req) in script().into_iter().enumerate() {
        // MSG_TXN_GET_GXID must name a live handle (a free one crashes the
        // real GTM): use the one the preceding MSG_TXN_BEGIN returned.
        let req = match req {
            Request::TxnGetGxid { .. } => Request::TxnGetGxid { handle },
            other => other,
        };
        direct.send(&req);
        let want = as_proxy_would(&req, direct.recv_bytes());
        via.send(&req);
        let got = via.recv_bytes();
        assert_eq!(normalise(&got), normalise(&want), "step {i}: {req:?}");
        if want[0] == b'S' && i32::from_be_bytes([want[5], want[6], want[7], want[8]]) == ResultType::TXN_BEGIN_RESULT.0
        {
            handle = i32::from_le_bytes([want[9], want[10], want[11], want[12]]);
        }
    }
}

/// Requests of many backends arriving together are grouped into MULTI
/// frames with -1 headers and per-element connection ids, each batch ends
/// with F, and no MULTI is empty or larger than batch_max.
#[test]
fn concurrent_requests_are_grouped() {
    let sim = Daemon::sim(&[]);
    let relay = Relay::start(sim.addr);
    let proxy = Daemon::proxy(relay.addr, "batch_max = 7\n", 1);
    const N: usize = 40;
    let mut clients: Vec<Client> = (0..N).map(|_| Client::proxy_backend(proxy.addr, "cn1")).collect();
    let mut gxids = Vec::new();
    for _ in 0..3 {
        let mut wire = BytesMut::new();
        encode_command(&mut wire, None, &begin_req(b"\0"));
        for c in clients.iter_mut() {
            c.send_raw(&wire);
        }
        for c in clients.iter_mut() {
            match c.response() {
                Response::TxnBeginGetGxid { gxid, .. } => gxids.push(gxid),
                other => panic!("{other:?}"),
            }
        }
        for (c, g) in clients.iter_mut().zip(&gxids[gxids.len() - N..]) {
            c.send(&Request::SnapshotGetMulti(vec![*g]));
        }
        for (c, g) in clients.iter_mut().zip(&gxids[gxids.len() - N..]) {
            match c.response() {
                Response::SnapshotGetMulti { statuses, .. } => assert_eq!(statuses, vec![0]),
                other => panic!("{other:?} for {g}"),
            }
        }
        for (c, g) in clients.iter_mut().zip(&gxids[gxids.len() - N..]) {
            c.send(&Request::TxnCommitMulti(vec![*g]));
        }
        for c in clients.iter_mut() {
            assert_eq!(c.response(), Response::TxnCommitMulti { statuses: vec![0] });
        }
    }
    let mut sorted = gxids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 3 * N, "every begin got its own GXID");

    let frames = relay.worker_frames();
    let mut multi_sizes = Vec::new();
    let mut saw_f_after_last = false;
    for f in &frames {
        match f {
            ClientFrame::Command(c) => {
                saw_f_after_last = false;
                let req = c.request().expect("proxy sends valid requests");
                let n = match &req {
                    Request::TxnBeginGetGxidMulti(v) => {
                        let mut ids: Vec<i16> = v.iter().map(|e| e.conn_id).collect();
                        ids.sort_unstable();
                        ids.dedup();
                        assert_eq!(ids.len(), v.len(), "one element per backend");
                        assert!(ids.iter().all(|i| (0..N as i16).contains(i)));
                        v.len()
                    }
                    Request::TxnCommitMulti(v) | Request::SnapshotGetMulti(v) => v.len(),
                    Request::BackendDisconnect { .. } => continue,
                    other => panic!("unexpected upstream request {other:?}"),
                };
                assert_eq!(c.header, Some(-1), "grouped requests carry header -1");
                multi_sizes.push(n);
            }
            ClientFrame::Flush => saw_f_after_last = true,
            _ => {}
        }
    }
    assert!(saw_f_after_last, "the last batch ends with F");
    assert!(multi_sizes.iter().all(|&n| (1..=7).contains(&n)), "{multi_sizes:?}");
    assert!(multi_sizes.iter().any(|&n| n > 1), "some requests were grouped: {multi_sizes:?}");
    assert_eq!(multi_sizes.iter().sum::<usize>(), 9 * N);
}

/// Frames a backend pipelines in one write are all answered, in order,
/// without waiting for more input (the C proxy stalls here).
#[test]
fn pipelined_frames_are_answered_in_order() {
    let sim = Daemon::sim(&[]);
    let proxy = Daemon::proxy(sim.addr, "", 2);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let mut wire = BytesMut::new();
    encode_command(&mut wire, None, &begin_req(b"\0"));
    encode_command(&mut wire, None, &Request::RegisterSession { coord_name: b(b"cn1"), coord_pid: 1, backend_id: 1 });
    encode_command(&mut wire, None, &begin_req(b"\0"));
    encode_command(&mut wire, None, &Request::Barrier { id: b(b"x\0") });
    c.send_raw(&wire);
    let g1 = match c.response() {
        Response::TxnBeginGetGxid { gxid, .. } => gxid,
        other => panic!("{other:?}"),
    };
    assert_eq!(c.response(), Response::RegisterSession);
    match c.response() {
        Response::TxnBeginGetGxid { gxid, .. } => assert_eq!(gxid, g1 + 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.response(), Response::Barrier);
}

/// A backend that never sends its startup packet, one stuck in the middle of
/// a frame, and one that does not read its answers do not delay others.
#[test]
fn silent_and_slow_backends_do_not_block_others() {
    let sim = Daemon::sim(&[]);
    let mport = free_port();
    let proxy = Daemon::proxy(sim.addr, &format!("metrics_port = {mport}\n"), 1);
    let _silent = Client::connect(proxy.addr);
    let mut partial = Client::proxy_backend(proxy.addr, "cn1");
    let mut wire = BytesMut::new();
    encode_command(&mut wire, None, &begin_req(b"\0"));
    partial.send_raw(&wire[..7]);
    // A backend that floods requests and never reads.
    let mut hog = Client::proxy_backend(proxy.addr, "cn1");
    let mut flood = BytesMut::new();
    for _ in 0..20_000 {
        encode_command(&mut flood, None, &Request::SnapshotGetMulti(vec![0]));
    }
    hog.sock.set_nonblocking(true).unwrap();
    let _ = std::io::Write::write(&mut hog.sock, &flood);
    // The hog is really there: the proxy is reading and serving its flood
    // (only it sends anything yet) while the others are served.
    wait_metrics(mport, "the hog's requests read", |m| {
        metric_of(m, "gtm_proxy_requests_total", 0).unwrap_or(0) >= 1000
    });
    let mut ok = Client::proxy_backend(proxy.addr, "cn1");
    for _ in 0..50 {
        let g = ok.begin();
        assert_eq!(ok.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
    }
    // The partial frame completes later and is answered.
    partial.send_raw(&wire[7..]);
    assert!(matches!(partial.response(), Response::TxnBeginGetGxid { .. }));
}

/// Unknown, refused and malformed messages get an E for that backend only;
/// its connection stays usable (below `backend_error_limit`, raised here
/// above the number of cases) and other backends are not affected.
#[test]
fn bad_requests_get_an_error_for_that_backend_only() {
    let sim = Daemon::sim(&[]);
    let proxy = Daemon::proxy(sim.addr, "backend_error_limit = 100\n", 1);
    let mut bad = Client::proxy_backend(proxy.addr, "cn1");
    let mut good = Client::proxy_backend(proxy.addr, "cn1");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (cmd_bytes(99, &[]), "invalid frontend message type 99"),
        (cmd_bytes(MsgType::SEQUENCE_GET_LAST.0, &[0, 0, 0, 2, b'a', 0]), "never answers"),
        (cmd_bytes(MsgType::TXN_GET_STATUS.0, &[]), "never answers"),
        (cmd_bytes(MsgType::BACKEND_DISCONNECT.0, &[0]), "only the proxy"),
        (cmd_bytes(MsgType::BEGIN_BACKUP.0, &[]), "not proxied"),
        (cmd_bytes(MsgType::TXN_BEGIN_GETGXID.0, &[]), "insufficient data"),
        (cmd_bytes(MsgType::TXN_COMMIT_MULTI.0, &[0x7f, 0xff, 0xff, 0xff]), "insufficient data"),
        (vec![b'F', 0, 0, 0, 8, 0, 0, 0, 63], "invalid frontend message type 70"),
        // Requests that would crash or corrupt the real GTM.
        (cmd_bytes(MsgType::TXN_BEGIN_GETGXID_MULTI.0, &[0, 0, 0, 0]), "between 1 and 16384"),
        (cmd_bytes(MsgType::SNAPSHOT_GET_MULTI.0, &[0, 0, 0, 0]), "between 1 and 16384"),
        (cmd_bytes(MsgType::SNAPSHOT_GET.0, &[0, 0, 0, 2, 1, 0, 0, 0]), "count must be 1"),
    ];
    for (wire, needle) in cases {
        bad.send_raw(&wire);
        match bad.recv() {
            ServerFrame::Error { fields, .. } => {
                assert_eq!(fields.severity(), "ERROR");
                assert!(fields.message().contains(needle), "{} does not mention {needle}", fields.message());
            }
            other => panic!("expected E for {needle}, got {other:?}"),
        }
        let g = good.begin();
        assert_eq!(good.call(&Request::TxnRollback { gxid: g }), Response::TxnRollback { gxid: g, status: None });
    }
    // The offender is still served.
    let g = bad.begin();
    assert!(g > 0);
}

fn cmd_bytes(t: i32, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_command_raw(&mut b, None, MsgType(t), payload);
    b.to_vec()
}

/// Startup problems: a non-startup first frame gets the XL text, a startup
/// packet of the wrong size a FATAL; both are closed.
#[test]
fn bad_startup_is_refused_and_closed() {
    let sim = Daemon::sim(&[]);
    let proxy = Daemon::proxy(sim.addr, "", 1);
    let mut c = Client::connect(proxy.addr);
    c.send_raw(&cmd_bytes(16, &[0, 0, 0, 1, 0, 0, 0, 0, 1, 0]));
    match c.recv() {
        ServerFrame::Error { fields, .. } => {
            assert_eq!(fields.message(), "Expecting a startup message, but received C")
        }
        other => panic!("{other:?}"),
    }
    assert!(c.closed_within(Duration::from_secs(5)));
    let mut c = Client::connect(proxy.addr);
    let mut short = vec![b'A', 0, 0, 0, 76];
    short.extend([0u8; 72]);
    c.send_raw(&short);
    match c.recv() {
        ServerFrame::Error { fields, .. } => assert_eq!(fields.severity(), "FATAL"),
        other => panic!("{other:?}"),
    }
    assert!(c.closed_within(Duration::from_secs(5)));
    let mut ok = Client::proxy_backend(proxy.addr, "cn1");
    assert!(ok.begin() > 0);
}

/// A backend that leaves with a request in flight: the answer is dropped,
/// `MSG_BACKEND_DISCONNECT` goes out only after it, with the backend's id,
/// and the id is not given to a newcomer meanwhile.
#[test]
fn backend_closing_with_work_in_flight() {
    let sim = Daemon::sim(&[]);
    let relay = Relay::start(sim.addr);
    let mport = free_port();
    let proxy = Daemon::proxy(relay.addr, &format!("metrics_port = {mport}\n"), 1);
    let in_flight = |n: u64| {
        wait_metrics(mport, &format!("{n} in flight"), |m| metric_of(m, "gtm_proxy_in_flight_requests", 0) == Some(n))
    };
    let mut a = Client::proxy_backend(proxy.addr, "cn1");
    let g = a.begin();
    sim.stop();
    a.send(&Request::SnapshotGetMulti(vec![g]));
    // The proxy has sent it upstream before the backend goes.
    in_flight(1);
    a.close();
    let mut b = Client::proxy_backend(proxy.addr, "cn1");
    b.send(&begin_req(b"\0"));
    in_flight(2);
    sim.cont();
    let gb = match b.response() {
        Response::TxnBeginGetGxid { gxid, .. } => gxid,
        other => panic!("{other:?}"),
    };
    assert_eq!(b.call(&Request::TxnCommitMulti(vec![gb])), Response::TxnCommitMulti { statuses: vec![0] });
    let frames = eventually(Duration::from_secs(5), || {
        let f = relay.worker_frames();
        f.iter().any(|f| matches!(f, ClientFrame::Command(c) if c.msg_type == MsgType::BACKEND_DISCONNECT)).then_some(f)
    });
    let mut a_id = None;
    let mut snapshot_at = None;
    let mut disconnect_at = None;
    let mut b_id = None;
    for (i, f) in frames.iter().enumerate() {
        let ClientFrame::Command(c) = f else { continue };
        match c.request().unwrap() {
            Request::TxnBeginGetGxidMulti(v) if a_id.is_none() => a_id = Some(v[0].conn_id),
            Request::TxnBeginGetGxidMulti(v) => b_id = Some(v[0].conn_id),
            Request::SnapshotGetMulti(v) if v == vec![g] => snapshot_at = Some(i),
            Request::BackendDisconnect { is_postmaster: false, node: None } => {
                assert_eq!(c.header, a_id, "disconnect names the departed backend");
                disconnect_at = Some(i);
            }
            _ => {}
        }
    }
    assert!(snapshot_at.expect("snapshot sent") < disconnect_at.expect("disconnect sent"));
    assert_ne!(a_id, b_id, "an id with work in flight is not reused");
}

/// The connection ids of MSG_BACKEND_DISCONNECT frames the relay saw, in order.
fn disconnects(relay: &Relay) -> Vec<i16> {
    relay
        .worker_frames()
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Command(c) if c.msg_type == MsgType::BACKEND_DISCONNECT => c.header,
            _ => None,
        })
        .collect()
}

/// The connection id of the last grouped begin element the relay saw.
fn last_begin_conn(relay: &Relay) -> i16 {
    relay
        .worker_frames()
        .iter()
        .rev()
        .find_map(|f| match f {
            ClientFrame::Command(c) => match c.request() {
                Ok(Request::TxnBeginGetGxidMulti(v)) => v.last().map(|e| e.conn_id),
                _ => None,
            },
            _ => None,
        })
        .expect("a grouped begin")
}

/// Identifiers are reused once free, oldest-freed first, and a newcomer
/// holding a reused id works.
#[test]
fn identifiers_are_reused_safely() {
    let sim = Daemon::sim(&[]);
    let relay = Relay::start(sim.addr);
    let proxy = Daemon::proxy(relay.addr, "", 1);
    let wait_disconnects = |n: usize| eventually(WAIT, || (disconnects(&relay).len() == n).then_some(()));
    for i in 0..5 {
        let mut c = Client::proxy_backend(proxy.addr, "cn1");
        let g = c.begin();
        assert_eq!(c.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
        c.close();
        // Its id is free (the disconnect went out) before the next one comes.
        wait_disconnects(i + 1);
    }
    assert_eq!(disconnects(&relay), vec![0, 0, 0, 0, 0], "a free id is reused");
    // Three at once hold ids 0, 1, 2; they leave in the order 1, 2, 0; the
    // next three get 1, 2, 0 (a lowest-first policy would give 0, 1, 2).
    let mut held: Vec<(Client, i16)> = (0..3)
        .map(|_| {
            let mut c = Client::proxy_backend(proxy.addr, "cn1");
            let _ = c.begin();
            let id = last_begin_conn(&relay);
            (c, id)
        })
        .collect();
    assert_eq!(held.iter().map(|(_, id)| *id).collect::<Vec<_>>(), vec![0, 1, 2]);
    for (k, i) in [1usize, 2, 0].into_iter().enumerate() {
        held[i].0.close();
        wait_disconnects(6 + k);
    }
    assert_eq!(disconnects(&relay)[5..], [1, 2, 0]);
    let mut reused = Vec::new();
    let mut newcomers = Vec::new();
    for _ in 0..3 {
        let mut c = Client::proxy_backend(proxy.addr, "cn1");
        let g = c.begin();
        assert_eq!(c.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
        reused.push(last_begin_conn(&relay));
        newcomers.push(c);
    }
    assert_eq!(reused, vec![1, 2, 0], "freed ids are reused oldest-first");
}

/// Smart stop lets the open transaction end, then exits without waiting
/// for the backend to leave; fast stop closes backends after answering;
/// either way the proxy unregisters and removes its pid file.
#[test]
fn smart_and_fast_shutdown() {
    let sim = Daemon::sim(&[]);
    let mut proxy = Daemon::proxy(sim.addr, "smart_shutdown_timeout = 600s\n", 2);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let g = c.begin();
    proxy.signal(libc::SIGTERM);
    assert!(
        matches!(c.call(&Request::SnapshotGetMulti(vec![g])), Response::SnapshotGetMulti { .. }),
        "the open transaction is still served during a smart stop"
    );
    assert!(proxy.is_running(), "smart stop waits for the open transaction");
    assert_eq!(c.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
    assert_eq!(proxy.exit_code(WAIT), Some(0), "no transaction open: the proxy exits, the backend still connected");
    assert!(c.closed_within(WAIT));
    assert!(!proxy.dir.join("gtm_proxy.pid").exists());

    let mut proxy = Daemon::proxy(sim.addr, "", 2);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let _ = c.begin();
    proxy.signal(libc::SIGINT);
    assert!(c.closed_within(Duration::from_secs(10)), "fast stop closes backends");
    assert_eq!(proxy.exit_code(Duration::from_secs(10)), Some(0));
    // Unregistered: the same proxy name can register again on the GTM.
    let mut direct = Client::connect(sim.addr);
    direct.startup("test_proxy", node_type::GTM_PROXY_POSTMASTER, true, 0);
    let reg = Request::NodeRegister(NodeRegister {
        node_type: node_type::GTM_PROXY,
        name: b(b"test_proxy"),
        host: b(b"127.0.0.1"),
        port: 1,
        proxy_name: Bytes::new(),
        data_folder: b(b"/x"),
        status: 0,
    });
    assert!(matches!(direct.call(&reg), Response::NodeRegister { .. }));
}

/// Autovacuum transactions are recorded by the GTM without a backend id and
/// never ended by XL backends, so MSG_BACKEND_DISCONNECT cannot clean them
/// up; the proxy ends them when their backend leaves (as a direct link's
/// close would), instead of leaving them open forever.
#[test]
fn autovacuum_transactions_do_not_leak() {
    let sim = Daemon::sim(&["--persist"]);
    let proxy = Daemon::proxy(sim.addr, "", 1);
    let mut c = Client::proxy_backend(proxy.addr, "dn1");
    let mut vac = Vec::new();
    for _ in 0..3 {
        match c.call(&Request::TxnBeginGetGxidAutovacuum { isolation: 1, read_only: false }) {
            Response::TxnBeginGetGxidAutovacuum { gxid } => vac.push(gxid),
            other => panic!("{other:?}"),
        }
    }
    let open = |dir: &std::path::Path| -> usize {
        std::fs::read_to_string(dir.join("gtm_sim.state")).unwrap().lines().filter(|l| l.starts_with("txn ")).count()
    };
    assert_eq!(open(&sim.dir), 3, "the GTM holds the three autovacuum transactions");
    c.close();
    eventually(Duration::from_secs(5), || (open(&sim.dir) == 0).then_some(()));
}

/// SIGHUP re-reads gtm_proxy.conf: a new log level takes effect, a broken
/// file is reported and the running configuration kept.
#[test]
fn sighup_reloads_the_configuration() {
    let sim = Daemon::sim(&[]);
    let proxy = Daemon::proxy(sim.addr, "log_min_messages = WARNING\n", 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    assert!(!proxy.log().contains("configuration reloaded"));
    std::fs::write(
        proxy.dir.join("gtm_proxy.conf"),
        "log_min_messages = INFO\nhold_timeout = 5s\nlog_file = other.log\n",
    )
    .unwrap();
    proxy.signal(libc::SIGHUP);
    eventually(Duration::from_secs(5), || proxy.log().contains("worker 0 INFO:  configuration reloaded").then_some(()));
    assert!(proxy.log().contains("\"log_file\" cannot be changed without restarting"));
    std::fs::write(proxy.dir.join("gtm_proxy.conf"), "no_such_key = 1\n").unwrap();
    proxy.signal(libc::SIGHUP);
    eventually(Duration::from_secs(5), || proxy.log().contains("configuration not reloaded").then_some(()));
    let g = c.begin();
    assert_eq!(c.call(&Request::TxnCommitMulti(vec![g])), Response::TxnCommitMulti { statuses: vec![0] });
}

/// The Prometheus endpoint on metrics_port reports the workers' counters.
#[test]
fn metrics_endpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sim = Daemon::sim(&[]);
    let proxy = Daemon::proxy(sim.addr, &format!("metrics_port = {port}\n"), 1);
    let mut c = Client::proxy_backend(proxy.addr, "cn1");
    let g = c.begin();
    c.call(&Request::TxnCommitMulti(vec![g]));
    // Counters move at once, gauges once per worker round: wait until the
    // whole picture after the commit is there.
    let want = [
        "gtm_proxy_requests_total{worker=\"0\"} 2\n",
        "gtm_proxy_backends{worker=\"0\"} 1\n",
        "gtm_proxy_gtm_link_up{worker=\"0\"} 1\n",
        "gtm_proxy_ledger_gxids{worker=\"0\"} 0\n",
    ];
    let body = wait_metrics(port, "the state after one commit", |b| want.iter().all(|w| b.contains(w)));
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("# TYPE gtm_proxy_errors_sent_total counter"), "{body}");
    assert!(scrape(port, "/other").expect("an answer").starts_with("HTTP/1.1 404"));
}
