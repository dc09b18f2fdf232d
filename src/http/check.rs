//! Properties that must hold for any input, asserted by the fuzz targets (`fuzz/`) and by the randomized unit
//! test below: no panic, and what shoal writes for the next hop parses again as the same message with the same
//! framing. A proxy whose forwarded head delimits the body differently from the head it read is how request
//! smuggling starts, so these checks compare framing above all.
//!
//! Each function panics when a property is broken; inputs the parsers refuse are fine and simply return.

use std::net::{IpAddr, Ipv4Addr};

use super::chunked::{ChunkedDecoder, Emit};
use super::request::{lower_minor_version, parse_request};
use super::response::{self, parse_response, ResponseBody};
use super::rewrite::{client_response, upstream_request, Delivery, Forwarded};
use super::{HeadLimits, MAX_HEADERS};

/// The limits a fuzzed head is read with: small enough to reach the size errors.
const LIMITS: HeadLimits = HeadLimits { max_head_bytes: 4096, max_headers: 64 };
/// The trailer section limit a fuzzed chunked body is read with.
const TRAILERS: usize = 1024;
/// What a rewritten head is read back with: it gained a few fields, and it must still parse.
const ROOMY: HeadLimits = HeadLimits { max_head_bytes: usize::MAX, max_headers: MAX_HEADERS };

/// A request head shoal accepts is forwarded as a head that parses to the same method, target, body framing
/// and upgrade, and takes exactly the bytes written.
pub fn request_round_trip(input: &[u8]) {
    let mut buf = input.to_vec();
    lower_minor_version(&mut buf);
    let Ok(Some(req)) = parse_request(&buf, &LIMITS) else { return };
    let mut out = Vec::new();
    let fwd =
        Forwarded { client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), port: 80, tls: false, strip_cookie: None };
    upstream_request(&req, &fwd, &mut out);
    let again = match parse_request(&out, &ROOMY) {
        Ok(Some(again)) => again,
        other => panic!("forwarded head does not parse ({other:?}):\n{}", String::from_utf8_lossy(&out)),
    };
    assert_eq!(again.head_len, out.len(), "forwarded head has bytes after its end");
    assert_eq!((again.method, again.target), (req.method, req.target));
    assert_eq!(again.body, req.body, "body framing changed:\n{}", String::from_utf8_lossy(&out));
    assert_eq!(again.upgrade, req.upgrade);
}

/// A response head shoal accepts is delivered as a head that parses to the same status and body framing (or
/// to read-until-close when chunked framing is removed for an HTTP/1.0 client), with the connection kept
/// open exactly when the delivery says so.
///
/// The first input byte picks the delivery, within the rules the exchange follows: a response framed by the
/// backend's close, or de-chunked, closes the client connection; a 101 starts a tunnel.
pub fn response_round_trip(input: &[u8]) {
    let Some((&flags, input)) = input.split_first() else { return };
    let request_is_head = flags & 1 != 0;
    let mut input = input.to_vec();
    response::lower_minor_version(&mut input);
    let Ok(Some(resp)) = parse_response(&input, &LIMITS, request_is_head) else { return };
    let upgrade = resp.status == 101;
    let dechunk = flags & 2 != 0 && resp.body == ResponseBody::Chunked;
    let close = !upgrade && (flags & 4 != 0 || dechunk || resp.body == ResponseBody::UntilClose);
    let delivery =
        Delivery { close, dechunk, http10_keep_alive: !close && !upgrade && flags & 8 != 0, upgrade, set_cookie: None };
    let mut out = Vec::new();
    client_response(&resp, &delivery, &mut out);
    let again = match parse_response(&out, &ROOMY, request_is_head) {
        Ok(Some(again)) => again,
        other => panic!("delivered head does not parse ({other:?}):\n{}", String::from_utf8_lossy(&out)),
    };
    assert_eq!(again.head_len, out.len(), "delivered head has bytes after its end");
    assert_eq!(again.status, resp.status);
    let framing = if dechunk { ResponseBody::UntilClose } else { resp.body };
    assert_eq!(again.body, framing, "body framing changed:\n{}", String::from_utf8_lossy(&out));
    if !upgrade {
        assert_eq!(again.keep_alive, !close, "connection persistence changed:\n{}", String::from_utf8_lossy(&out));
    }
}

/// A chunked body decodes the same whether it arrives whole or in pieces, and the re-chunked form shoal sends
/// on decodes to the same payload, consuming exactly what was sent.
///
/// The first input byte sets the piece size.
pub fn chunked_round_trip(input: &[u8]) {
    let Some((&step, body)) = input.split_first() else { return };
    let step = usize::from(step.max(1));
    let Some((consumed, payload)) = decode(body, Emit::Payload, body.len().max(1), TRAILERS) else { return };
    let (pieces_consumed, pieces_payload) =
        decode(body, Emit::Payload, step, TRAILERS).expect("a body accepted whole is refused in pieces");
    assert_eq!((pieces_consumed, &pieces_payload), (consumed, &payload), "piecewise decoding differs");

    let (_, rechunked) = decode(body, Emit::Chunked, step, TRAILERS).expect("re-chunking refused an accepted body");
    // Re-written trailer fields may be a little longer ("a:b" becomes "a: b"): the next hop's limit is its own.
    let (used, again) =
        decode(&rechunked, Emit::Payload, rechunked.len().max(1), usize::MAX).expect("re-chunked body refused");
    assert_eq!(used, rechunked.len(), "re-chunked body has bytes after its end");
    assert_eq!(again, payload, "re-chunked body carries another payload");
}

/// Feeds `body` in pieces of `step` bytes, with a trailer section of at most `max_trailer_bytes`; the bytes consumed and the output once the last chunk is read,
/// `None` if refused or unfinished.
fn decode(body: &[u8], emit: Emit, step: usize, max_trailer_bytes: usize) -> Option<(usize, Vec<u8>)> {
    let mut decoder = ChunkedDecoder::new(emit, max_trailer_bytes);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() && !decoder.is_done() {
        let end = (pos + step).min(body.len());
        let n = decoder.feed(&body[pos..end], &mut out).ok()?;
        assert!(n == end - pos || decoder.is_done(), "{} bytes left unconsumed before the end", end - pos - n);
        pos += n;
    }
    decoder.is_done().then_some((pos, out))
}

/// Random HTTP-shaped input, run through every property above: the same checks as the fuzz targets, on the
/// stable toolchain and in every test run. Heads are built from plausible lines and then mutated, so that
/// many are accepted and reach the round trips.
#[cfg(test)]
mod random {
    use super::*;

    const REQUEST_LINES: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n",
        b"POST /u HTTP/1.1\r\n",
        b"HEAD / HTTP/1.0\r\n",
        b"PUT /p?q HTTP/1.2\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"GET http://a/x HTTP/1.1\n",
    ];
    const STATUS_LINES: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.0 200 OK\r\n",
        b"HTTP/1.1 204 No Content\r\n",
        b"HTTP/1.1 304 Not Modified\r\n",
        b"HTTP/1.1 101 Switching\r\n",
        b"HTTP/1.1 100 Continue\r\n",
        b"HTTP/1.1 502 \r\n",
    ];
    const NAMES: &[&[u8]] = &[
        b"Host: ",
        b"Content-Length: ",
        b"Transfer-Encoding: ",
        b"Connection: ",
        b"Upgrade: ",
        b"Expect: ",
        b"Keep-Alive: ",
        b"TE: ",
        b"X-A: ",
        b"x-forwarded-proto: ",
    ];
    const VALUES: &[&[u8]] = &[
        b"a",
        b"0",
        b"5",
        b"5, 5",
        b"18446744073709551616",
        b"chunked",
        b"gzip, chunked",
        b"chunked, gzip",
        b"gzip",
        b"close",
        b"keep-alive",
        b"upgrade",
        b"Upgrade, X-A",
        b"websocket",
        b"100-continue",
        b"",
        b"x\ty",
    ];
    const CHUNKS: &[&[u8]] = &[
        b"3\r\nabc\r\n",
        b"1;a=b\r\nx\r\n",
        b"A\r\n0123456789\r\n",
        b"1 ; q=\"s\"\r\nz\r\n",
        b"0\r\n\r\n",
        b"0\r\nT: v\r\n\r\n",
        b"\r\n",
        b"GET / HTTP/1.1\r\n",
    ];

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a [u8]]) -> &'a [u8] {
            from[self.below(from.len())]
        }

        /// A head: the first line, a few fields, the blank line, and a little of a body.
        fn head(&mut self, first_lines: &[&[u8]]) -> Vec<u8> {
            let mut v = self.pick(first_lines).to_vec();
            for _ in 0..self.below(6) {
                v.extend_from_slice(self.pick(NAMES));
                v.extend_from_slice(self.pick(VALUES));
                v.extend_from_slice(b"\r\n");
            }
            v.extend_from_slice(b"\r\n");
            v.extend_from_slice(self.pick(CHUNKS));
            self.mutate(&mut v);
            v
        }

        fn chunks(&mut self) -> Vec<u8> {
            let mut v = Vec::new();
            for _ in 0..1 + self.below(5) {
                v.extend_from_slice(self.pick(CHUNKS));
            }
            self.mutate(&mut v);
            v
        }

        /// Sometimes changes, inserts or removes one byte.
        fn mutate(&mut self, v: &mut Vec<u8>) {
            if v.is_empty() || self.below(3) != 0 {
                return;
            }
            let at = self.below(v.len());
            let byte = *self.pick(&[b"\r", b"\n", b" ", b":", b"\t", b"\0", b"\x80", b",", b"0"]).first().unwrap_or(&0);
            match self.below(3) {
                0 => v[at] = byte,
                1 => v.insert(at, byte),
                _ => {
                    v.remove(at);
                }
            }
        }
    }

    #[test]
    fn properties_hold_on_random_input() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut accepted = [0usize; 3];
        for _ in 0..100_000 {
            let request = rng.head(REQUEST_LINES);
            let mut response = vec![rng.next() as u8];
            response.extend_from_slice(&rng.head(STATUS_LINES));
            let mut chunked = vec![rng.next() as u8];
            chunked.extend_from_slice(&rng.chunks());

            accepted[0] += usize::from(matches!(parse_request(&request, &LIMITS), Ok(Some(_))));
            accepted[1] += usize::from(matches!(parse_response(&response[1..], &LIMITS, false), Ok(Some(_))));
            accepted[2] += usize::from(decode(&chunked[1..], Emit::Payload, chunked.len(), TRAILERS).is_some());
            request_round_trip(&request);
            response_round_trip(&response);
            chunked_round_trip(&chunked);
        }
        // The generator must reach the round trips, not only the refusals.
        assert!(accepted.iter().all(|&n| n > 10_000), "accepted (request, response, chunked): {accepted:?}");
    }
}
