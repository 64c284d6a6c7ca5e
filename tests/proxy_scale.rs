//! 10,000 concurrent backends on one proxy.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use bytes::BytesMut;
use gtmproxy::codec::types::node_type;
use gtmproxy::codec::{encode_command, StartupPacket};
use harness::*;

#[test]
fn ten_thousand_backends() {
    const N: usize = 10_000;
    let limit = raise_fd_limit();
    assert!(limit as usize > N + 100, "open file limit {limit} is too low for this test");
    let sim = Daemon::sim(&[]);
    let proxy = Daemon::proxy(sim.addr, "", 2);
    let mut startup = BytesMut::new();
    StartupPacket::new("cn1", node_type::DEFAULT, false, 0).encode(&mut startup);
    let mut begin = BytesMut::new();
    encode_command(&mut begin, None, &begin_req(b"\0"));
    let t0 = Instant::now();
    let mut socks = Vec::with_capacity(N);
    for _ in 0..N {
        let mut s = TcpStream::connect_timeout(&proxy.addr, WAIT).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        s.write_all(&startup).unwrap();
        socks.push(s);
    }
    for s in socks.iter_mut() {
        let mut r = [0u8; 9];
        s.read_exact(&mut r).expect("startup answer");
        assert_eq!(r, [b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
    }
    let connected = t0.elapsed();
    for s in socks.iter_mut() {
        s.write_all(&begin).unwrap();
    }
    let mut gxids = Vec::with_capacity(N);
    for s in socks.iter_mut() {
        let mut r = [0u8; 21];
        s.read_exact(&mut r).expect("begin answer");
        assert_eq!(&r[..9], &[b'S', 0, 0, 0, 20, 0, 0, 0, 11]);
        gxids.push(u32::from_le_bytes([r[9], r[10], r[11], r[12]]));
    }
    gxids.sort_unstable();
    gxids.dedup();
    assert_eq!(gxids.len(), N, "every backend got its own GXID");
    // Timing is reported, not asserted (every read and write is bounded).
    eprintln!("{N} backends connected in {connected:?}, all answered in {:?}", t0.elapsed());
}
