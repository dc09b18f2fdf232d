//! Header field rules, each a small function with its own tests.
//!
//! These decide message framing, so they are strict: anything two parsers could read differently is refused
//! (RFC 9112 section 6 and RFC 9110 section 8.6).

use std::borrow::Cow;

use super::error::HttpError;

/// `tchar` from RFC 9110 section 5.6.2.
const fn tchar_rule(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// [`tchar_rule`] for every byte: every header name of every message is checked, one lookup per byte.
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = tchar_rule(b as u8);
        b += 1;
    }
    table
};

/// `tchar` from RFC 9110 section 5.6.2.
pub fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// A non-empty run of `tchar`.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// A field value: visible ASCII, obs-text, space and tab only; never CR, LF, NUL or other controls.
pub fn is_valid_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// One header field as parsed: its name and raw value, borrowed from the read buffer.
pub type Field<'a> = (&'a str, &'a [u8]);

/// Room for the fields of one head, kept from one parse to the next so that a warm thread parses without
/// allocating. Only the allocation is kept: the fields themselves borrow a buffer that does not outlive a parse.
#[derive(Debug, Default)]
pub struct FieldStore(Vec<Field<'static>>);

impl FieldStore {
    /// The kept vector, empty, to hold the fields of a head in `'a`'s buffer.
    pub fn take<'a>(&mut self) -> Vec<Field<'a>> {
        std::mem::take(&mut self.0)
    }

    /// Keeps `fields`' allocation for the next head.
    pub fn keep(&mut self, mut fields: Vec<Field<'_>>) {
        fields.clear();
        // Collecting a vector's own iterator into an element type of the same layout reuses its allocation
        // (std's in-place iteration); the closure never runs, the vector being empty.
        self.0 = fields.into_iter().map(|_| unreachable!("an emptied vector")).collect();
    }
}

/// The fields whose values decide framing and connection handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Host = 0,
    TransferEncoding = 1,
    ContentLength = 2,
    Connection = 3,
    Upgrade = 4,
    Expect = 5,
}

impl Known {
    fn of(name: &str) -> Option<Known> {
        let is = |known: &str| name.eq_ignore_ascii_case(known);
        match name.len() {
            4 if is("host") => Some(Known::Host),
            6 if is("expect") => Some(Known::Expect),
            7 if is("upgrade") => Some(Known::Upgrade),
            10 if is("connection") => Some(Known::Connection),
            14 if is("content-length") => Some(Known::ContentLength),
            17 if is("transfer-encoding") => Some(Known::TransferEncoding),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        ["host", "transfer-encoding", "content-length", "connection", "upgrade", "expect"][self as usize]
    }
}

/// Where the [`Known`] fields are, found in the one pass that checks every field: a head is not scanned
/// again per field, and a field that occurs once (the usual case) needs no list of its values.
#[derive(Debug, Default)]
pub struct FieldIndex<'a> {
    /// Per [`Known`] field: its first value and how many times it occurs.
    seen: [(Option<&'a [u8]>, u32); 6],
}

impl<'a> FieldIndex<'a> {
    pub fn note(&mut self, name: &str, value: &'a [u8]) {
        if let Some(known) = Known::of(name) {
            let (first, count) = &mut self.seen[known as usize];
            first.get_or_insert(value);
            *count += 1;
        }
    }

    pub fn count(&self, known: Known) -> u32 {
        self.seen[known as usize].1
    }

    /// The first value of `known`, if it occurs.
    pub fn first(&self, known: Known) -> Option<&'a [u8]> {
        self.seen[known as usize].0
    }

    /// Every value of `known`, in order; `headers` is what was noted, for a field that occurs more than once.
    pub fn values<'s>(&'s self, known: Known, headers: &[Field<'a>]) -> Cow<'s, [&'a [u8]]> {
        match &self.seen[known as usize] {
            (Some(first), 1) => Cow::Borrowed(std::slice::from_ref(first)),
            (None, _) => Cow::Borrowed(&[]),
            _ => Cow::Owned(
                headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(known.name())).map(|(_, v)| *v).collect(),
            ),
        }
    }
}

/// Optional whitespace trimmed from both ends.
pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The elements of a comma-separated list across every instance of a field, trimmed.
pub fn list_elements<'a>(values: &'a [&'a [u8]]) -> impl Iterator<Item = &'a [u8]> + 'a {
    values.iter().flat_map(|v| v.split(|&b| b == b',')).map(trim_ows)
}

/// Parses every Content-Length instance into one length.
///
/// Each element must be 1*DIGIT (no sign, no space inside) without overflow; repeated values are accepted only
/// when they are all identical (RFC 9110 section 8.6). Returns `None` when the field is absent.
pub fn content_length(values: &[&[u8]]) -> Result<Option<u64>, HttpError> {
    let mut found: Option<u64> = None;
    for element in list_elements(values) {
        let n = parse_decimal(element).ok_or(HttpError::BadContentLength)?;
        match found {
            Some(prev) if prev != n => return Err(HttpError::ConflictingContentLength),
            _ => found = Some(n),
        }
    }
    Ok(found)
}

/// 1*DIGIT into a u64, refusing empty input, signs and overflow.
pub fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Transfer codings a proxy may pass through without understanding them.
const KNOWN_CODINGS: &[&[u8]] = &[b"chunked", b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"];

/// What a Transfer-Encoding field says about framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferCodings {
    /// `chunked` is present, exactly once, and last.
    pub chunked_last: bool,
    /// The codings as received, normalised to lower case and joined with ", " for forwarding.
    pub joined: String,
}

/// Parses every Transfer-Encoding instance.
///
/// Refuses empty elements, parameters (`chunked;x`: whether the next hop reads that as chunked is anybody's
/// guess, so HAProxy refuses it too), `chunked` more than once or anywhere but last, and codings nobody knows
/// (501).
/// A list whose last coding is not chunked is returned with `chunked_last == false`: a request must refuse
/// it, a response reads to close.
pub fn transfer_codings(values: &[&[u8]]) -> Result<TransferCodings, HttpError> {
    let mut joined = String::new();
    let mut chunked_seen = false;
    let mut chunked_last = false;
    for element in list_elements(values) {
        if element.contains(&b';') {
            return Err(HttpError::BadTransferEncoding("coding with parameters"));
        }
        let name = trim_ows(element);
        if !is_token(name) {
            return Err(HttpError::BadTransferEncoding("empty or invalid coding"));
        }
        let lower = name.to_ascii_lowercase();
        if chunked_seen {
            return Err(HttpError::BadTransferEncoding("coding after chunked"));
        }
        if !KNOWN_CODINGS.contains(&lower.as_slice()) {
            return Err(HttpError::UnknownTransferCoding);
        }
        chunked_seen = lower == b"chunked";
        chunked_last = chunked_seen;
        if !is_valid_value(element) {
            return Err(HttpError::BadTransferEncoding("invalid bytes"));
        }
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(&String::from_utf8_lossy(&lower));
    }
    if joined.is_empty() {
        return Err(HttpError::BadTransferEncoding("empty"));
    }
    Ok(TransferCodings { chunked_last, joined })
}

/// The options a Connection field carries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// The other options named, lower-cased: these fields are hop-by-hop and must not be forwarded. The three
    /// above are not copied here: the usual `Connection: keep-alive` costs no allocation.
    others: Vec<Vec<u8>>,
}

impl ConnectionOptions {
    pub fn parse(values: &[&[u8]]) -> Self {
        let mut opts = ConnectionOptions::default();
        for element in list_elements(values).filter(|e| !e.is_empty()) {
            if element.eq_ignore_ascii_case(b"close") {
                opts.close = true;
            } else if element.eq_ignore_ascii_case(b"keep-alive") {
                opts.keep_alive = true;
            } else if element.eq_ignore_ascii_case(b"upgrade") {
                opts.upgrade = true;
            } else {
                opts.others.push(element.to_ascii_lowercase());
            }
        }
        opts
    }

    /// True when the Connection field lists `name` (compared case-insensitively).
    pub fn names(&self, name: &[u8]) -> bool {
        (self.close && name.eq_ignore_ascii_case(b"close"))
            || (self.keep_alive && name.eq_ignore_ascii_case(b"keep-alive"))
            || (self.upgrade && name.eq_ignore_ascii_case(b"upgrade"))
            || self.others.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Fields that describe one hop only and are never forwarded as received.
///
/// Framing fields (Content-Length, Transfer-Encoding) are listed too: the proxy writes its own from the framing
/// it decided, so a peer can never make the two hops frame a message differently.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    // By length first: it runs for every field of every head, and most fields have a length no hop-by-hop
    // name has.
    let is = |hop: &[u8]| name.eq_ignore_ascii_case(hop);
    match name.len() {
        2 => is(b"te"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        14 => is(b"content-length"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        _ => false,
    }
}

/// Fields whose removal a client's Connection header may never ask for: the proxy relies on them.
pub fn is_protected(name: &[u8]) -> bool {
    const PROTECTED: &[&[u8]] = &[b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-port"];
    PROTECTED.iter().any(|h| h.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_finds_each_known_field_in_one_pass() {
        let headers: Vec<(&str, &[u8])> =
            vec![("Host", b"a"), ("X-Other", b"x"), ("connection", b"close"), ("CONNECTION", b"upgrade")];
        let mut index = FieldIndex::default();
        for (n, v) in &headers {
            index.note(n, v);
        }
        assert_eq!((index.count(Known::Host), index.count(Known::Connection)), (1, 2));
        assert!(matches!(index.values(Known::Host, &headers), Cow::Borrowed([b"a"])), "one value: no list");
        assert_eq!(&*index.values(Known::Connection, &headers), [&b"close"[..], b"upgrade"], "in order");
        assert!(index.values(Known::ContentLength, &headers).is_empty());
    }

    #[test]
    fn content_length_accepts_digits_and_identical_repeats() {
        assert_eq!(content_length(&[b"42"]), Ok(Some(42)));
        assert_eq!(content_length(&[b"7", b"7"]), Ok(Some(7)));
        assert_eq!(content_length(&[b"7, 7"]), Ok(Some(7)));
        assert_eq!(content_length(&[]), Ok(None));
    }

    #[test]
    fn content_length_refuses_signs_spaces_overflow_and_conflicts() {
        for bad in [&b"+5"[..], b"-1", b"5 5", b"0x10", b"", b"18446744073709551616", b"1_0"] {
            assert_eq!(content_length(&[bad]), Err(HttpError::BadContentLength), "{bad:?}");
        }
        assert_eq!(content_length(&[b"5", b"6"]), Err(HttpError::ConflictingContentLength));
        assert_eq!(content_length(&[b"5, 6"]), Err(HttpError::ConflictingContentLength));
    }

    #[test]
    fn transfer_codings_rules() {
        let ok = transfer_codings(&[b"gzip", b"Chunked"]).unwrap();
        assert!(ok.chunked_last);
        assert_eq!(ok.joined, "gzip, chunked");
        assert!(!transfer_codings(&[b"gzip"]).unwrap().chunked_last);
        assert!(matches!(transfer_codings(&[b"chunked, chunked"]), Err(HttpError::BadTransferEncoding(_))));
        assert!(matches!(transfer_codings(&[b"chunked, gzip"]), Err(HttpError::BadTransferEncoding(_))));
        assert!(matches!(transfer_codings(&[b"chunked,"]), Err(HttpError::BadTransferEncoding(_))));
        for with_parameters in [&b"chunked;"[..], b"chunked; foo=bar", b"chunked ;x", b"gzip;q=1, chunked"] {
            let refused = transfer_codings(&[with_parameters]);
            assert!(matches!(refused, Err(HttpError::BadTransferEncoding(_))), "{with_parameters:?}: {refused:?}");
        }
        assert!(transfer_codings(&[b" chunked "]).unwrap().chunked_last, "whitespace around elements is allowed");
        assert_eq!(transfer_codings(&[b"foo, chunked"]), Err(HttpError::UnknownTransferCoding));
        assert_eq!(transfer_codings(&[b"identity"]), Err(HttpError::UnknownTransferCoding));
    }

    #[test]
    fn connection_options() {
        let o = ConnectionOptions::parse(&[b"Keep-Alive, X-Foo", b" upgrade "]);
        assert!(o.keep_alive && o.upgrade && !o.close);
        assert!(o.names(b"x-foo"));
        assert!(o.names(b"X-FOO"));
        // The known options are named too: `Connection: keep-alive` makes a Keep-Alive field hop-by-hop.
        assert!(o.names(b"keep-alive") && o.names(b"Upgrade"));
        assert!(!o.names(b"close") && !o.names(b"x-bar"));
        assert!(ConnectionOptions::parse(&[b"CLOSE"]).names(b"close"));
    }

    #[test]
    fn value_and_token_checks() {
        assert!((0..=255u8).all(|b| is_tchar(b) == tchar_rule(b)), "the table is the rule");
        assert_eq!((0..=255u8).filter(|&b| is_tchar(b)).count(), 77, "RFC 9110's 77 tchars");
        assert!(is_token(b"GET"));
        assert!(!is_token(b"GE T"));
        assert!(!is_token(b""));
        assert!(is_valid_value(b"a b\tc\x80"));
        assert!(!is_valid_value(b"a\rb"));
        assert!(!is_valid_value(b"a\0b"));
        assert_eq!(trim_ows(b" \t x \t"), b"x");
    }

    #[test]
    fn hop_by_hop_and_protected() {
        for hop in [
            "Connection",
            "KEEP-ALIVE",
            "proxy-connection",
            "TE",
            "Trailer",
            "upgrade",
            "Transfer-Encoding",
            "content-length",
        ] {
            assert!(is_hop_by_hop(hop.as_bytes()), "{hop}");
        }
        for end_to_end in ["host", "tf", "trailers", "connectio", "content-lengthx", "transfer-encodinG ", "x"] {
            assert!(!is_hop_by_hop(end_to_end.as_bytes()), "{end_to_end}");
        }
        assert!(is_protected(b"X-Forwarded-For"));
        assert!(!is_protected(b"x-custom"));
    }
}
