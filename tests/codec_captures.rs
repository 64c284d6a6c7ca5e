//! Replays every captured byte stream of real XL 10 traffic
//! (`tests/vectors/capN`, copied from the shared captures) through the codec:
//! every frame must split, decode to a typed message and re-encode to exactly
//! the bytes that crossed the wire, whether the stream arrives whole or in
//! arbitrary chunks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use gtmproxy::codec::frame::{self, DEFAULT_MAX_FRAME};
use gtmproxy::codec::{encode_command, encode_result, ClientFrame, DecodeError, RawFrame, ServerFrame};

struct FileInfo {
    path: PathBuf,
    proxied: bool,
    frames: usize,
}

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// The capture README tables say, per file, which link it belongs to and how
/// many frames it holds.
fn files() -> Vec<FileInfo> {
    let mut out = Vec::new();
    let mut caps: Vec<_> = std::fs::read_dir(vectors()).unwrap().map(|e| e.unwrap().path()).collect();
    caps.sort();
    for cap in caps {
        let readme = std::fs::read_to_string(cap.join("README.md")).unwrap();
        for line in readme.lines().filter(|l| l.starts_with("| `conn")) {
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cols[1].trim_matches('`');
            out.push(FileInfo {
                path: cap.join(name),
                proxied: cols[3].contains("remote type 1 (GTM_PROXY)"),
                frames: cols[5].parse().unwrap(),
            });
        }
    }
    out
}

fn is_client_tag(tag: u8) -> bool {
    matches!(tag, b'A' | b'C' | b'F' | b'X')
}

/// The cap6 probe script sent three deliberately malformed frames: startup
/// bodies of 72 and 80 bytes, and a begin with no payload.
fn expected_bad(path: &Path, raw: &RawFrame) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    (name.starts_with("conn16-probe") || name.starts_with("conn17-probe")) && raw.tag == b'A'
        || name.starts_with("conn15-probe") && raw.tag == b'C'
}

fn reencode(raw: &RawFrame, proxied: bool) -> Result<BytesMut, DecodeError> {
    let mut out = BytesMut::new();
    if is_client_tag(raw.tag) {
        let f = ClientFrame::decode(raw.clone(), proxied)?;
        match &f {
            ClientFrame::Command(c) => {
                let req = c.request()?;
                assert_eq!(req.msg_type(), c.msg_type);
                encode_command(&mut out, c.header, &req);
            }
            other => other.encode(&mut out),
        }
    } else {
        let f = ServerFrame::decode(raw.clone(), proxied)?;
        match &f {
            ServerFrame::Result(r) => {
                let resp = r.response()?;
                assert_eq!(resp.result_type(), r.result_type);
                encode_result(&mut out, r.header, &resp);
            }
            other => other.encode(&mut out),
        }
    }
    Ok(out)
}

#[test]
fn every_captured_frame_round_trips() {
    let infos = files();
    assert_eq!(infos.len(), 140, "capture tables list 140 files");
    let mut per_tag: BTreeMap<char, usize> = BTreeMap::new();
    let mut total = 0;
    let mut rejected = 0;
    for info in &infos {
        let data = std::fs::read(&info.path).unwrap();
        let mut buf = BytesMut::from(&data[..]);
        let mut n = 0;
        let mut pos = 0;
        while let Some(raw) = frame::split(&mut buf, DEFAULT_MAX_FRAME).unwrap() {
            let wire = &data[pos..pos + raw.wire_len()];
            pos += raw.wire_len();
            n += 1;
            *per_tag.entry(raw.tag as char).or_default() += 1;
            let mut plain = BytesMut::new();
            raw.encode(&mut plain);
            assert_eq!(&plain[..], wire);
            match reencode(&raw, info.proxied) {
                Ok(bytes) => {
                    assert_eq!(&bytes[..], wire, "{} frame {} does not re-encode byte for byte", info.path.display(), n)
                }
                Err(e) => {
                    assert!(expected_bad(&info.path, &raw), "{} frame {}: {}", info.path.display(), n, e);
                    rejected += 1;
                }
            }
        }
        assert!(buf.is_empty(), "{}: bytes left over", info.path.display());
        assert_eq!(n, info.frames, "{}: frame count", info.path.display());
        total += n;
    }
    assert_eq!(total, 1539);
    assert_eq!(rejected, 3, "the three malformed probe frames");
    let want: BTreeMap<char, usize> =
        [('A', 55), ('C', 577), ('E', 8), ('F', 278), ('R', 53), ('S', 537), ('X', 31)].into_iter().collect();
    assert_eq!(per_tag, want);
}

#[test]
fn captured_streams_split_identically_in_chunks() {
    // A deterministic spread of chunk sizes, including 1-byte dribbles.
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for info in files() {
        let data = std::fs::read(&info.path).unwrap();
        let mut whole = BytesMut::from(&data[..]);
        let mut expect = Vec::new();
        while let Some(f) = frame::split(&mut whole, DEFAULT_MAX_FRAME).unwrap() {
            expect.push(f);
        }
        let mut got = Vec::new();
        let mut buf = BytesMut::new();
        let mut off = 0;
        while off < data.len() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = 1 + (seed % 37) as usize;
            let end = (off + n).min(data.len());
            buf.extend_from_slice(&data[off..end]);
            off = end;
            while let Some(f) = frame::split(&mut buf, DEFAULT_MAX_FRAME).unwrap() {
                got.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, expect, "{}", info.path.display());
    }
}

/// The frame listings of a capture README: for each file, (offset, tag,
/// `ph=N` as the README shows it) of every frame it lists; `xN` repeats are
/// expanded (same length), the first pass of `N x [ ... ]` blocks is listed.
fn listed_frames(cap: &Path) -> BTreeMap<String, Vec<(usize, u8, Option<i16>)>> {
    let readme = std::fs::read_to_string(cap.join("README.md")).unwrap();
    let mut out: BTreeMap<String, Vec<(usize, u8, Option<i16>)>> = BTreeMap::new();
    let mut file: Option<String> = None;
    for line in readme.lines() {
        if let Some(name) = line.strip_prefix("### `").and_then(|l| l.strip_suffix('`')) {
            file = Some(name.to_string());
            continue;
        }
        let Some(f) = &file else { continue };
        let t = line.trim_start();
        let Some((off, rest)) = t.split_once(char::is_whitespace) else { continue };
        let Ok(off) = off.parse::<usize>() else { continue };
        let rest = rest.trim_start();
        let b = rest.as_bytes();
        if b.len() < 3 || !b[0].is_ascii_uppercase() || b[1] != b'(' {
            continue;
        }
        let len: usize = rest[2..rest.find(')').unwrap()].parse().unwrap();
        let ph = rest.split_whitespace().find_map(|w| w.strip_prefix("ph=")).map(|v| v.parse::<i16>().unwrap());
        let reps = rest
            .split_whitespace()
            .last()
            .and_then(|w| w.strip_prefix('x'))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(1);
        for k in 0..reps {
            out.entry(f.clone()).or_default().push((off + k * (len + 1), b[0], ph));
        }
    }
    out
}

/// The proxy header the codec decodes is the one the capture README shows
/// for each frame (written from the capture, not by this codec): `ph=N`
/// where the link carries it, none elsewhere.
#[test]
fn proxy_header_matches_the_capture_listings() {
    let mut checked = 0;
    let mut with_header = 0;
    let mut caps: Vec<_> = std::fs::read_dir(vectors()).unwrap().map(|e| e.unwrap().path()).collect();
    caps.sort();
    let infos = files();
    for cap in caps {
        for (name, frames) in listed_frames(&cap) {
            let info = infos.iter().find(|i| i.path == cap.join(&name)).expect("listed file in the table");
            let data = std::fs::read(&info.path).unwrap();
            for (off, tag, ph) in frames {
                let mut buf = BytesMut::from(&data[off..]);
                let raw = frame::split(&mut buf, DEFAULT_MAX_FRAME).unwrap().expect("a whole frame at a listed offset");
                assert_eq!(raw.tag, tag, "{name} @{off}");
                let header = if is_client_tag(raw.tag) {
                    match ClientFrame::decode(raw, info.proxied) {
                        Ok(ClientFrame::Command(c)) => c.header,
                        _ => continue,
                    }
                } else {
                    match ServerFrame::decode(raw, info.proxied) {
                        Ok(ServerFrame::Result(r)) => r.header,
                        Ok(ServerFrame::Error { header, .. }) => header,
                        _ => continue,
                    }
                };
                assert_eq!(header, ph, "{}/{name} frame at {off}", cap.display());
                checked += 1;
                with_header += header.is_some() as usize;
            }
        }
    }
    // Most C/S/E frames are listed; a good share carry a header.
    eprintln!("{checked} frames checked, {with_header} with a proxy header");
    assert!(checked > 800, "{checked} frames checked");
    assert!(with_header > 200, "{with_header} frames with a proxy header");
}
