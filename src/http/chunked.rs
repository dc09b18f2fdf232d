//! A streaming chunked-body decoder that re-emits normalised framing.
//!
//! httparse's chunk-size parser accepts an empty size line and any byte in extensions, so the size line is
//! checked here against RFC 9112 section 7.1. Extensions are validated and dropped; chunk sizes are kept, so
//! the next hop sees the same chunks with clean size lines.

use super::error::HttpError;
use super::fields;

/// Longest size line (size plus extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;

/// What the decoder writes for the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// Chunked framing again, extensions removed, trailers kept.
    Chunked,
    /// Payload bytes only (for an HTTP/1.0 peer that cannot read chunked framing).
    Payload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SizeLine,
    Data(u64),
    DataCr,
    DataLf,
    Trailers,
    Done,
}

/// Incremental decoder: feed it whatever bytes arrived, it consumes what belongs to the body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    emit: Emit,
    /// The size line or trailer section read so far.
    line: Vec<u8>,
    /// Where the current trailer line starts in `line`.
    line_start: usize,
    max_trailer_bytes: usize,
}

impl ChunkedDecoder {
    pub fn new(emit: Emit, max_trailer_bytes: usize) -> Self {
        ChunkedDecoder { state: State::SizeLine, emit, line: Vec::new(), line_start: 0, max_trailer_bytes }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending what the next hop must receive to `out`.
    ///
    /// Returns how many bytes of `input` belong to the body; bytes after the last chunk are left unconsumed
    /// (a pipelined request, or a protocol fault of the backend).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, HttpError> {
        let mut pos = 0;
        while pos < input.len() && self.state != State::Done {
            match self.state {
                State::SizeLine => {
                    let rest = &input[pos..];
                    match rest.iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            self.line.extend_from_slice(&rest[..=i]);
                            pos += i + 1;
                            self.check_size_line_length()?;
                            self.finish_size_line(out)?;
                        }
                        None => {
                            self.line.extend_from_slice(rest);
                            pos = input.len();
                            self.check_size_line_length()?;
                        }
                    }
                }
                State::Data(remaining) => {
                    let available = (input.len() - pos) as u64;
                    let take = remaining.min(available) as usize;
                    out.extend_from_slice(&input[pos..pos + take]);
                    pos += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data(left) };
                }
                State::DataCr => {
                    if input[pos] != b'\r' {
                        return Err(HttpError::BadChunk("chunk data overruns its size"));
                    }
                    pos += 1;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if input[pos] != b'\n' {
                        return Err(HttpError::BadChunk("chunk data overruns its size"));
                    }
                    pos += 1;
                    if self.emit == Emit::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                    self.state = State::SizeLine;
                }
                State::Trailers => {
                    let b = input[pos];
                    pos += 1;
                    self.line.push(b);
                    if self.line.len() > self.max_trailer_bytes {
                        return Err(HttpError::BadChunk("trailer section too large"));
                    }
                    if b == b'\n' {
                        let current = &self.line[self.line_start..];
                        if !current.ends_with(b"\r\n") {
                            return Err(HttpError::BadChunk("trailer line must end with CRLF"));
                        }
                        if current.len() == 2 {
                            self.finish_trailers(out)?;
                        } else {
                            self.line_start = self.line.len();
                        }
                    }
                }
                State::Done => unreachable!("loop condition excludes Done"),
            }
        }
        Ok(pos)
    }

    /// Checked whether or not the line is complete, so the answer does not depend on how the bytes arrived.
    fn check_size_line_length(&self) -> Result<(), HttpError> {
        if self.line.len() > MAX_SIZE_LINE {
            return Err(HttpError::BadChunk("size line too long"));
        }
        Ok(())
    }

    fn finish_size_line(&mut self, out: &mut Vec<u8>) -> Result<(), HttpError> {
        let line = std::mem::take(&mut self.line);
        let body = line.strip_suffix(b"\r\n").ok_or(HttpError::BadChunk("size line must end with CRLF"))?;
        let size = parse_size_line(body)?;
        if size == 0 {
            self.state = State::Trailers;
        } else {
            if self.emit == Emit::Chunked {
                write_hex_line(out, size);
            }
            self.state = State::Data(size);
        }
        Ok(())
    }

    fn finish_trailers(&mut self, out: &mut Vec<u8>) -> Result<(), HttpError> {
        let section = std::mem::take(&mut self.line);
        let mut storage = [httparse::EMPTY_HEADER; super::MAX_HEADERS];
        let fields = match httparse::parse_headers(&section, &mut storage) {
            Ok(httparse::Status::Complete((_, fields))) => fields,
            _ => return Err(HttpError::BadChunk("malformed trailer section")),
        };
        // Checked even when the trailers are dropped, so a body is refused or not whatever the next hop is.
        if fields.iter().any(|f| !fields::is_valid_value(f.value)) {
            return Err(HttpError::BadChunk("malformed trailer field"));
        }
        if self.emit == Emit::Chunked {
            out.extend_from_slice(b"0\r\n");
            for f in fields.iter() {
                if !super::rewrite::kept_in_trailers(f.name.as_bytes()) {
                    continue;
                }
                out.extend_from_slice(f.name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(f.value);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
        }
        self.state = State::Done;
        Ok(())
    }
}

/// `chunk-size *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )` without the CRLF.
fn parse_size_line(line: &[u8]) -> Result<u64, HttpError> {
    let digits_end = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
    if digits_end == 0 {
        return Err(HttpError::BadChunk("missing chunk size"));
    }
    if digits_end > 16 {
        return Err(HttpError::BadChunk("chunk size overflows"));
    }
    let text = std::str::from_utf8(&line[..digits_end]).map_err(|_| HttpError::BadChunk("size"))?;
    let size = u64::from_str_radix(text, 16).map_err(|_| HttpError::BadChunk("chunk size overflows"))?;
    check_extensions(&line[digits_end..])?;
    Ok(size)
}

fn check_extensions(mut ext: &[u8]) -> Result<(), HttpError> {
    const BAD: HttpError = HttpError::BadChunk("invalid chunk extension");
    let skip_bws = |s: &mut &[u8]| {
        while let [b' ' | b'\t', rest @ ..] = *s {
            *s = rest;
        }
    };
    loop {
        let before = ext.len();
        skip_bws(&mut ext);
        if ext.is_empty() {
            // Whitespace is allowed only before a ';' (the grammar's BWS): "5 " is refused, as llhttp does.
            return if ext.len() == before { Ok(()) } else { Err(BAD) };
        }
        let [b';', rest @ ..] = ext else { return Err(BAD) };
        ext = rest;
        skip_bws(&mut ext);
        let name_len = ext.iter().position(|&b| !fields::is_tchar(b)).unwrap_or(ext.len());
        if name_len == 0 {
            return Err(BAD);
        }
        ext = &ext[name_len..];
        skip_bws(&mut ext);
        if let [b'=', rest @ ..] = ext {
            ext = rest;
            skip_bws(&mut ext);
            ext = skip_ext_value(ext).ok_or(BAD)?;
        }
    }
}

/// Skips a token or quoted-string, returning what follows it.
fn skip_ext_value(s: &[u8]) -> Option<&[u8]> {
    if let [b'"', rest @ ..] = s {
        let mut i = 0;
        while i < rest.len() {
            match rest[i] {
                b'"' => return Some(&rest[i + 1..]),
                b'\\' if i + 1 < rest.len() && is_qdtext_or_escapable(rest[i + 1]) => i += 2,
                b if is_qdtext_or_escapable(b) && b != b'\\' => i += 1,
                _ => return None,
            }
        }
        None
    } else {
        let n = s.iter().position(|&b| !fields::is_tchar(b)).unwrap_or(s.len());
        (n > 0).then(|| &s[n..])
    }
}

fn is_qdtext_or_escapable(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn write_hex_line(out: &mut Vec<u8>, size: u64) {
    use std::io::Write;
    let _ = write!(out, "{size:x}\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], emit: Emit) -> Result<(Vec<u8>, usize), HttpError> {
        let mut d = ChunkedDecoder::new(emit, 1024);
        let mut out = Vec::new();
        let n = d.feed(input, &mut out)?;
        assert!(d.is_done(), "not done");
        Ok((out, n))
    }

    #[test]
    fn rechunks_and_drops_extensions() {
        let (out, n) = decode_all(b"5;a=b;c=\"q\\\"x\"\r\nhello\r\n0\r\nX-T: 1\r\n\r\nNEXT", Emit::Chunked).unwrap();
        assert_eq!(out, b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n");
        assert_eq!(n, 36, "stops before the pipelined bytes");
    }

    #[test]
    fn dechunks() {
        let (out, _) = decode_all(b"3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n", Emit::Payload).unwrap();
        assert_eq!(out, b"abc0123456789");
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let input = b"4\r\nwiki\r\n5;x\r\npedia\r\n0\r\nA: b\r\n\r\n";
        let mut d = ChunkedDecoder::new(Emit::Chunked, 1024);
        let mut out = Vec::new();
        for b in input.iter() {
            assert_eq!(d.feed(std::slice::from_ref(b), &mut out).unwrap(), 1);
        }
        assert!(d.is_done());
        assert_eq!(out, b"4\r\nwiki\r\n5\r\npedia\r\n0\r\nA: b\r\n\r\n");
    }

    #[test]
    fn refuses_bad_framing() {
        let cases: &[&[u8]] = &[
            b"\r\n",                     // empty size
            b"5\nhello\r\n0\r\n\r\n",    // bare LF
            b"5\r\nhelloX\r\n0\r\n\r\n", // overrun
            b"-1\r\n",
            b"0x5\r\nhello\r\n",
            b"5 ;\r\nhello\r\n",
            b"5 \r\nhello\r\n",
            b"5;a=b\t\r\nhello\r\n",
            b"5;\r\nhello\r\n",
            b"5;a=\"x\r\n",
            b"5;a\x01\r\n",
            b"11111111111111111\r\n",
            b"5\r\nhello\r\n0\r\nBad Field\r\n\r\n",
        ];
        for c in cases {
            let mut d = ChunkedDecoder::new(Emit::Chunked, 1024);
            assert!(d.feed(c, &mut Vec::new()).is_err(), "{}", String::from_utf8_lossy(c));
        }
    }

    #[test]
    fn long_size_line_refused_however_it_arrives() {
        let mut input = b"1".to_vec();
        input.extend(std::iter::repeat_n(b";a=b".as_slice(), 1100).flatten());
        input.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        // Whole: it was accepted once (the limit was only checked while the line was incomplete).
        let mut whole = ChunkedDecoder::new(Emit::Chunked, 1024);
        assert!(whole.feed(&input, &mut Vec::new()).is_err());
        let mut pieces = ChunkedDecoder::new(Emit::Chunked, 1024);
        assert!(input.chunks(100).map(|c| pieces.feed(c, &mut Vec::new())).any(|r| r.is_err()));
    }

    #[test]
    fn large_trailers_refused() {
        let mut d = ChunkedDecoder::new(Emit::Chunked, 16);
        assert!(d.feed(b"0\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaa\r\n\r\n", &mut Vec::new()).is_err());
    }
}
