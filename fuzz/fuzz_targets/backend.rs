//! A backend connection fed an arbitrary byte stream: the input side of
//! the proxy's backend handling, from the socket read to the upstream
//! frames the requests become.
//!
//! The pieces are the proxy's own public ones: `netio::read_into` over a
//! socket that hands out the stream in reads of varying size with
//! `WouldBlock` in between, the frame splitter at the backend frame cap, the
//! startup packet and `Peer`, `ClientFrame` / `Request` decoding, the
//! admission decision, and the `Batcher` that groups and encodes requests.
//! Only the worker's sequencing (one request outstanding per backend) is
//! mirrored here.
//!
//! Checks, beyond "no panic": every request that reaches the batcher comes
//! out of `flush` as a well-formed upstream frame carrying this backend's
//! identifier and the same request (forwarded payloads untouched), and the
//! disconnect message for the backend's startup round-trips.
#![no_main]

use std::collections::VecDeque;
use std::io::{self, Read};

use bytes::BytesMut;
use gtm_proxy_fuzz::{bounded_alloc, encoded, read_sizes};
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME, TAG_CLOSE, TAG_COMMAND, TAG_STARTUP};
use gtmproxy::codec::types::MAX_GLOBAL_TRANSACTIONS;
use gtmproxy::codec::{encode_command, ClientFrame, Request, StartupPacket};
use gtmproxy::netio::{read_into, ReadOutcome};
use gtmproxy::proxy::admission::{admit, Admission};
use gtmproxy::proxy::backend::{read_limit, Peer};
use gtmproxy::proxy::batch::{Batcher, Forward, Route};
use libfuzzer_sys::fuzz_target;

/// A non-blocking socket holding `data`: reads of varying size, each
/// followed by `WouldBlock`, then EOF.
struct Sock<'a, I> {
    data: &'a [u8],
    sizes: I,
    blocked: bool,
}

impl<I: Iterator<Item = usize>> Read for Sock<'_, I> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.blocked {
            self.blocked = false;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.blocked = true;
        let n = self.sizes.next().unwrap_or(1).min(self.data.len()).min(out.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

const CONN: i16 = 7;
const ROUTE: Route = Route { conn: CONN, gen: 1 };

/// What the backend asked for, as it must appear upstream.
#[derive(Debug)]
enum Sent {
    /// Forwarded with the backend's header: message type and payload.
    Forward(Request),
    /// One element of a MULTI (header -1).
    Grouped(Request),
}

fn check_upstream(out: BytesMut, sent: Sent) {
    let mut b = out;
    let mut cmds = Vec::new();
    while let Some(raw) = frame::split(&mut b, usize::MAX).expect("upstream frames split") {
        match ClientFrame::decode(raw, true).expect("upstream frame decodes") {
            ClientFrame::Command(c) => cmds.push(c),
            ClientFrame::Flush => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(b.is_empty());
    assert_eq!(cmds.len(), 1, "one request, one frame");
    let c = &cmds[0];
    let got = c.request().expect("upstream request decodes");
    match sent {
        Sent::Forward(Request::TxnBeginGetGxidMulti(mut v)) => {
            assert_eq!(c.header, Some(CONN));
            v.iter_mut().for_each(|e| e.conn_id = CONN);
            assert_eq!(got, Request::TxnBeginGetGxidMulti(v));
        }
        Sent::Forward(req) => {
            assert_eq!(c.header, Some(CONN));
            assert_eq!(got, req);
        }
        Sent::Grouped(req) => {
            assert_eq!(c.header, Some(-1));
            let ok = match (req, got) {
                (Request::TxnBeginGetGxid(b), Request::TxnBeginGetGxidMulti(v)) => {
                    v.len() == 1 && v[0].begin == b && v[0].conn_id == CONN
                }
                (Request::TxnRollback { gxid }, Request::TxnRollbackMulti(v)) => v == [gxid],
                (Request::TxnCommitMulti(a), Request::TxnCommitMulti(b)) => a == b,
                (Request::SnapshotGetMulti(a), Request::SnapshotGetMulti(b)) => a == b,
                _ => false,
            };
            assert!(ok);
        }
    }
}

/// The worker's handling of one request frame, up to the batcher.
fn dispatch(req: Request, c: gtmproxy::codec::Command, batch: &mut Batcher) -> Option<Sent> {
    match admit(c.msg_type, c.payload, req.clone(), CONN) {
        Admission::Group(g) => {
            batch.group(ROUTE, g);
            Some(Sent::Grouped(req))
        }
        Admission::Forward { payload, ends } => {
            batch.forwards.push_back(Forward { route: ROUTE, msg_type: c.msg_type, payload, ends });
            Some(Sent::Forward(req))
        }
        Admission::Refuse(why) => {
            let _ = why.to_string();
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    bounded_alloc(data.len(), || {
        let mut sock = Sock { data, sizes: read_sizes(data), blocked: false };
        let mut rbuf = BytesMut::new();
        let mut scratch = [0u8; 512];
        let mut startup_done = false;
        let mut batch = Batcher::default();
        let mut fifo = VecDeque::new();
        // Bounded: every round reads at least one byte or ends.
        for _ in 0..=data.len() * 2 + 2 {
            // The worker's cap: the read pause, or the whole of a larger
            // frame at the front (up to the frame limit).
            let cap = read_limit(&rbuf, DEFAULT_MAX_FRAME);
            let eof = match read_into(&mut sock, &mut rbuf, &mut scratch, cap, true) {
                Ok(ReadOutcome::Eof) => true,
                Ok(ReadOutcome::Drained | ReadOutcome::Full) => false,
                Err(e) => panic!("{e}"),
            };
            // Input held per connection is bounded by that cap.
            assert!(rbuf.len() <= cap + scratch.len());
            loop {
                let raw = match frame::split(&mut rbuf, DEFAULT_MAX_FRAME) {
                    Ok(Some(raw)) => raw,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = e.to_string();
                        return;
                    }
                };
                if !startup_done {
                    if raw.tag != TAG_STARTUP {
                        return;
                    }
                    let Ok(sp) = StartupPacket::decode(&raw.body) else { return };
                    let peer = Peer::from_startup(&sp);
                    let bye = peer.disconnect_request();
                    let mut out = encoded(|d| encode_command(d, Some(CONN), &bye));
                    let raw = frame::split(&mut out, DEFAULT_MAX_FRAME).unwrap().unwrap();
                    let Ok(ClientFrame::Command(c)) = ClientFrame::decode(raw, true) else { panic!() };
                    assert_eq!(c.request(), Ok(bye));
                    startup_done = true;
                    continue;
                }
                match raw.tag {
                    TAG_COMMAND => {}
                    TAG_CLOSE => return,
                    _ => continue,
                }
                let Ok(ClientFrame::Command(c)) = ClientFrame::decode(raw, false) else { continue };
                let req = match c.request() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = format!("invalid {} message: {e}", c.msg_type);
                        continue;
                    }
                };
                let Some(sent) = dispatch(req, c, &mut batch) else { continue };
                // The round ends and the batch goes upstream; the answer
                // frees the backend for its next frame.
                let mut out = BytesMut::new();
                assert_eq!(batch.flush(MAX_GLOBAL_TRANSACTIONS, &mut out, &mut fifo), 1);
                assert!(batch.is_empty());
                assert_eq!(fifo.pop_front().map(|p| p.routes()), Some(vec![ROUTE]));
                check_upstream(out, sent);
            }
            if eof {
                return;
            }
        }
        panic!("reading never reached EOF");
    })
});
