//! etcd's Go client, given an endpoint with a scheme (`--endpoints=http://host:port`,
//! or the member URLs `--cluster` reads), dials each member itself for Status, HashKV,
//! Defragment and MoveLeader and sends `:authority: http://host:port`. Go's HTTP/2
//! server takes that; the `h2` crate under tonic resets the stream as malformed, which
//! etcdctl shows as `RST_STREAM with error code: PROTOCOL_ERROR`.
//!
//! So the bytes a client sends pass through [`AuthorityFix`] first. It follows the
//! HTTP/2 frames, decodes each header block (HPACK state must be followed in any case),
//! and rewrites an `:authority` that carries a scheme to the bare `host:port`. Blocks
//! are passed through untouched until the first rewrite; from then on every block of
//! that connection is re-encoded as literals without indexing, so the server's HPACK
//! table never needs to agree with the client's again.
//!
//! A connection whose first request names a bare `host:port` is passed through untouched
//! from then on, without decoding: a gRPC client sends one authority per connection,
//! and following HPACK for every request cost a member a tenth of its CPU under load.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// HTTP/2's connection preface. A connection that starts otherwise is HTTP/1.1 (the
/// `/health`, `/metrics` and `/version` beside the API) and is passed through untouched.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PREFACE_LEN: usize = PREFACE.len();
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's floor).
const MAX_FRAME: usize = 16_384;
/// A header block gathered past this is handed to `h2` as it is, to enforce its own
/// limits on: endless CONTINUATION frames must not grow memory here.
const MAX_BLOCK: usize = 256 * 1024;

/// A header block being gathered: its HEADERS frame's flags, stream and priority, the
/// block fragments so far, and the frames' original bytes.
struct Block {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    raw: Vec<u8>,
}

/// The client-to-server half of an HTTP/2 connection, with `:authority` repaired.
pub struct AuthorityFix<S> {
    inner: S,
    /// Read from the client, not yet looked at.
    raw: BytesMut,
    /// Looked at, for the server to read.
    ready: BytesMut,
    preface_left: usize,
    block: Option<Block>,
    decoder: Decoder<'static>,
    rewriting: bool,
    /// Something did not parse: pass the rest through untouched and let `h2` judge it.
    opaque: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            preface_left: PREFACE_LEN,
            block: None,
            decoder: Decoder::new(),
            rewriting: false,
            opaque: false,
        }
    }

    /// Move whatever complete frames `raw` holds into `ready`, repaired.
    fn process(&mut self) {
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.raw.len());
            let at = PREFACE_LEN - self.preface_left;
            if self.raw[..n] != PREFACE[at..at + n] {
                self.opaque = true;
            }
            self.ready.put(self.raw.split_to(n));
            self.preface_left -= n;
        }
        while !self.opaque && self.preface_left == 0 && self.raw.len() >= FRAME_HEADER_LEN {
            let len = u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
            if self.raw.len() < FRAME_HEADER_LEN + len {
                break;
            }
            let frame = self.raw.split_to(FRAME_HEADER_LEN + len);
            self.on_frame(&frame);
        }
        if self.opaque {
            if let Some(b) = self.block.take() {
                self.ready.put_slice(&b.raw);
            }
            let rest = self.raw.split();
            self.ready.put(rest);
        }
    }

    fn on_frame(&mut self, frame: &[u8]) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];
        match (kind, self.block.as_mut()) {
            (HEADERS, None) => {
                let Some((priority, fragment)) = split_headers_payload(flags, payload) else {
                    self.opaque = true;
                    self.ready.put_slice(frame);
                    return;
                };
                self.block = Some(Block {
                    stream,
                    flags,
                    priority,
                    fragment: fragment.to_vec(),
                    raw: frame.to_vec(),
                });
            }
            (CONTINUATION, Some(b)) if b.stream == stream => {
                b.fragment.extend_from_slice(payload);
                b.raw.extend_from_slice(frame);
                if b.raw.len() > MAX_BLOCK {
                    self.opaque = true;
                    return;
                }
            }
            _ => {
                // Not ours to judge (h2 rejects a frame that interrupts a block).
                self.ready.put_slice(frame);
                return;
            }
        }
        if flags & END_HEADERS != 0 {
            let block = self.block.take().expect("a block is being gathered");
            self.finish_block(block);
        }
    }

    fn finish_block(&mut self, block: Block) {
        let mut headers = Vec::new();
        let decoded = self.decoder.decode_with_cb(&block.fragment, |n, v| {
            headers.push((n.into_owned(), v.into_owned()))
        });
        if decoded.is_err() {
            self.opaque = true;
            self.ready.put_slice(&block.raw);
            return;
        }
        let mut repaired = false;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority"
                && let Some(bare) = without_scheme(value)
            {
                *value = bare;
                repaired = true;
            }
        }
        if !(repaired || self.rewriting) {
            self.ready.put_slice(&block.raw);
            // This connection's authority needs no repair: stop looking.
            self.opaque = headers.iter().any(|(n, _)| n.as_slice() == b":authority");
            return;
        }
        self.rewriting = true;
        let encoded = encode_literals(&headers);
        write_block(&mut self.ready, &block, &encoded);
    }
}

/// The priority fields and the block fragment of a HEADERS frame's payload.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(p.get(..5)?.try_into().ok()?);
        p = &p[5..];
    }
    let end = p.len().checked_sub(pad)?;
    Some((priority, &p[..end]))
}

/// `host:port` for `scheme://host:port[/]`; None for an authority without a scheme.
fn without_scheme(value: &[u8]) -> Option<Vec<u8>> {
    let at = value.windows(3).position(|w| w == b"://")?;
    let rest = &value[at + 3..];
    let rest = rest.strip_suffix(b"/").unwrap_or(rest);
    (!rest.is_empty()).then(|| rest.to_vec())
}

/// HPACK literals without indexing, new names: nothing enters the server's table.
fn encode_literals(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        for s in [name, value] {
            // A 7-bit length prefix with the Huffman bit clear: the string as is.
            loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, &mut out)
                .expect("writing to a Vec");
            out.extend_from_slice(s);
        }
    }
    out
}

/// `block`'s HEADERS frame again, carrying `encoded` (unpadded), split into
/// CONTINUATION frames where it exceeds the frame size every peer accepts.
fn write_block(out: &mut BytesMut, block: &Block, encoded: &[u8]) {
    let mut first = Vec::new();
    if let Some(p) = block.priority {
        first.extend_from_slice(&p);
    }
    let room = MAX_FRAME - first.len();
    let (head, mut rest) = encoded.split_at(encoded.len().min(room));
    first.extend_from_slice(head);
    let keep = block.flags & !(PADDED | END_HEADERS);
    let end = if rest.is_empty() { END_HEADERS } else { 0 };
    put_frame(out, HEADERS, keep | end, block.stream, &first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = tail;
        let end = if rest.is_empty() { END_HEADERS } else { 0 };
        put_frame(out, CONTINUATION, end, block.stream, chunk);
    }
}

fn put_frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    out.put_slice(&len[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
    out.put_slice(payload);
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.opaque && this.ready.is_empty() && this.raw.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The client closed: what is left (an incomplete frame) goes as it is.
                this.opaque = true;
                this.process();
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.raw.extend_from_slice(read.filled());
            this.process();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn headers_frame(stream: u32, block: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame(&mut out, HEADERS, END_HEADERS, stream, block);
        out.to_vec()
    }

    /// What the server reads after the client sent `bytes`.
    async fn through(bytes: Vec<u8>) -> Vec<u8> {
        let mut fix = AuthorityFix::new(&bytes[..]);
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.unwrap();
        out
    }

    fn decode_blocks(mut bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        bytes = &bytes[PREFACE_LEN..];
        let mut decoder = Decoder::new();
        let mut blocks = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let (frame, rest) = bytes.split_at(FRAME_HEADER_LEN + len);
            bytes = rest;
            if frame[3] == HEADERS {
                blocks.push(decoder.decode(&frame[FRAME_HEADER_LEN..]).unwrap());
            }
        }
        blocks
    }

    #[tokio::test]
    async fn a_scheme_in_authority_is_removed_and_later_blocks_stay_decodable() {
        let mut enc = loona_hpack::Encoder::new();
        let mut client = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let bad: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":authority", b"http://127.0.0.1:2379"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
            (b"x-custom", b"kept"),
        ];
        client.extend(headers_frame(1, &enc.encode(bad.clone())));
        // The client's encoder now refers to its dynamic table for repeats.
        client.extend(headers_frame(3, &enc.encode(bad)));
        let blocks = decode_blocks(&through(client).await);
        assert_eq!(blocks.len(), 2);
        for b in blocks {
            let authority = b.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(authority.1, b"127.0.0.1:2379");
            assert!(b.iter().any(|(n, v)| n == b"x-custom" && v == b"kept"));
        }
    }

    /// The connection preface and a first request naming a bare authority, with the
    /// client's encoder as it stands after it.
    fn bare_authority_start() -> (loona_hpack::Encoder<'static>, Vec<u8>) {
        let mut enc = loona_hpack::Encoder::new();
        let mut client = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let good: Vec<(&[u8], &[u8])> = vec![(b":authority", b"127.0.0.1:2379")];
        client.extend(headers_frame(1, &enc.encode(good)));
        (enc, client)
    }

    #[tokio::test]
    async fn a_connection_without_a_scheme_passes_through_byte_for_byte() {
        let (_, mut client) = bare_authority_start();
        client.extend([0, 0, 4, 0, 1, 0, 0, 0, 1, 1, 2, 3, 4]); // a DATA frame
        client.extend([0, 0, 9]); // and the start of one cut off by the close
        assert_eq!(through(client.clone()).await, client);
    }

    #[tokio::test]
    async fn an_http1_request_passes_through_untouched() {
        // Longer than the preface, and shaped like frames past it: never parsed as such.
        let request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:2379\r\n\r\n".to_vec();
        let mut fix = AuthorityFix::new(&request[..]);
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, request);
        assert!(fix.opaque);
    }

    #[tokio::test]
    async fn a_connection_whose_first_authority_is_bare_is_not_decoded_again() {
        let (mut enc, mut client) = bare_authority_start();
        let path: Vec<(&[u8], &[u8])> = vec![(b":path", b"/x")];
        let later = headers_frame(3, &enc.encode(path));
        let mut fix = AuthorityFix::new(AsyncReadExt::chain(&client[..], &later[..]));
        let mut out = vec![0u8; client.len()];
        fix.read_exact(&mut out).await.unwrap();
        assert!(
            fix.opaque,
            "settled by the first block, before the next arrived"
        );
        fix.read_to_end(&mut out).await.unwrap();
        client.extend(later);
        assert_eq!(out, client);
    }

    #[tokio::test]
    async fn an_endless_header_block_is_handed_on_rather_than_gathered() {
        let mut client = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut frames = BytesMut::new();
        put_frame(&mut frames, HEADERS, 0, 1, &[0x82]);
        for _ in 0..(MAX_BLOCK / MAX_FRAME + 2) {
            put_frame(&mut frames, CONTINUATION, 0, 1, &[0x82; MAX_FRAME]);
        }
        client.extend_from_slice(&frames);
        let mut fix = AuthorityFix::new(&client[..]);
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, client);
        assert!(fix.block.is_none() && fix.opaque);
    }

    #[test]
    fn only_an_authority_with_a_scheme_changes() {
        assert_eq!(without_scheme(b"http://a:1/"), Some(b"a:1".to_vec()));
        assert_eq!(without_scheme(b"https://a:1"), Some(b"a:1".to_vec()));
        assert_eq!(without_scheme(b"a:1"), None);
    }
}
