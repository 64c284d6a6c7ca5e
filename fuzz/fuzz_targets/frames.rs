//! The frame splitter and the frame decoders, fed arbitrary byte streams.
//!
//! Checks, beyond "no panic":
//! * splitting is independent of how the bytes arrive: the stream fed in
//!   reads of varying size gives the same frames and the same end state as
//!   the whole stream at once;
//! * every accepted frame re-encodes to the exact bytes it came from, and
//!   the frames cover the consumed input with nothing skipped;
//! * each frame is decoded in all four roles (client / server frame, with
//!   and without the proxy header); a frame that decodes re-encodes to its
//!   own bytes, and a typed request or result re-encodes to the same bytes
//!   except for C bools sent as values above 1, and decodes back to itself;
//! * no decode allocates far beyond the input size.
#![no_main]

use bytes::BytesMut;
use gtm_proxy_fuzz::{bounded_alloc, encoded, read_sizes, same_but_bools};
use gtmproxy::codec::frame::{self, RawFrame, DEFAULT_MAX_FRAME, HEADER_LEN};
use gtmproxy::codec::{encode_command, encode_result, ClientFrame, FrameError, ServerFrame, StartupPacket};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum End {
    /// Ran out of input with this many bytes of a partial frame buffered.
    Partial(usize),
    Broken(FrameError),
}

/// Split `data` delivered in reads of the given sizes, as a connection's
/// read buffer would see it.
fn split_stream(data: &[u8], mut sizes: impl Iterator<Item = usize>) -> (Vec<RawFrame>, End) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let n = sizes.next().unwrap_or(data.len()).min(data.len() - pos);
        buf.extend_from_slice(&data[pos..pos + n]);
        pos += n;
        loop {
            match frame::split(&mut buf, DEFAULT_MAX_FRAME) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, End::Broken(e)),
            }
        }
    }
    (frames, End::Partial(buf.len()))
}

fn check_client(raw: &RawFrame, wire: &[u8], proxied: bool) {
    let Ok(cf) = ClientFrame::decode(raw.clone(), proxied) else { return };
    let out = encoded(|d| cf.encode(d));
    match &cf {
        // The packet is a raw C struct: the bool and the padding after it
        // are normalised on the way out, nothing else changes.
        ClientFrame::Startup(sp) => {
            assert_eq!(out.len(), wire.len());
            assert_eq!(&out[..HEADER_LEN + 68], &wire[..HEADER_LEN + 68]);
            assert_eq!(&out[HEADER_LEN + 72..], &wire[HEADER_LEN + 72..]);
            let again = StartupPacket::decode(&out[HEADER_LEN..]).expect("re-encoded startup decodes");
            assert_eq!(&again, sp);
            let _ = sp.name_lossy();
        }
        // `X` carries no body; one sent with a body still means close.
        ClientFrame::Close if !raw.body.is_empty() => assert_eq!(&out[..], b"X\0\0\0\x04"),
        _ => assert_eq!(&out[..], wire, "{cf:?}"),
    }
    let ClientFrame::Command(c) = &cf else { return };
    let _ = c.msg_type.to_string();
    match c.request() {
        Ok(req) => {
            assert_eq!(req.msg_type(), c.msg_type);
            let mut out = encoded(|d| encode_command(d, c.header, &req));
            assert!(same_but_bools(wire, &out), "{req:?}\n{wire:?}\n{out:?}");
            let raw2 = frame::split(&mut out, usize::MAX).unwrap().unwrap();
            let Ok(ClientFrame::Command(c2)) = ClientFrame::decode(raw2, proxied) else { panic!("re-decode") };
            assert_eq!(c2.request().as_ref(), Ok(&req));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn check_server(raw: &RawFrame, wire: &[u8], proxied: bool) {
    let Ok(sf) = ServerFrame::decode(raw.clone(), proxied) else { return };
    let out = encoded(|d| sf.encode(d));
    assert_eq!(&out[..], wire, "{sf:?}");
    match &sf {
        ServerFrame::Result(r) => {
            let _ = r.result_type.to_string();
            match r.response() {
                Ok(resp) => {
                    assert_eq!(resp.result_type(), r.result_type);
                    let mut out = encoded(|d| encode_result(d, r.header, &resp));
                    assert!(same_but_bools(wire, &out), "{resp:?}\n{wire:?}\n{out:?}");
                    let raw2 = frame::split(&mut out, usize::MAX).unwrap().unwrap();
                    let Ok(ServerFrame::Result(r2)) = ServerFrame::decode(raw2, proxied) else { panic!("re-decode") };
                    assert_eq!(r2.response().as_ref(), Ok(&resp));
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
        ServerFrame::Error { fields, .. } | ServerFrame::Notice { fields, .. } => {
            let _ = (fields.severity(), fields.message());
        }
        ServerFrame::Ready { .. } => {}
    }
}

fuzz_target!(|data: &[u8]| {
    bounded_alloc(data.len(), || {
        let (frames, end) = split_stream(data, std::iter::once(data.len()));
        let (frames2, end2) = split_stream(data, read_sizes(data));
        assert_eq!(frames, frames2);
        assert_eq!(end, end2);

        let mut pos = 0;
        for f in &frames {
            let wire = &data[pos..pos + f.wire_len()];
            assert_eq!(&encoded(|d| f.encode(d))[..], wire);
            for proxied in [false, true] {
                check_client(f, wire, proxied);
                check_server(f, wire, proxied);
            }
            pos += f.wire_len();
        }
        let rest = &data[pos..];
        match end {
            End::Partial(n) => {
                assert_eq!(n, rest.len());
                assert_eq!(frame::check(rest, DEFAULT_MAX_FRAME), Err(FrameError::Incomplete));
            }
            End::Broken(e) => {
                let _ = e.to_string();
                assert_eq!(frame::check(rest, DEFAULT_MAX_FRAME), Err(e));
            }
        }
    })
});
