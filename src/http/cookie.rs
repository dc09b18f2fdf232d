//! The one cookie the proxy reads and writes itself: the sticky-session cookie (HAProxy's `cookie NAME insert
//! indirect nocache`). `Cookie` values are `name=value` pairs separated by `;` (RFC 6265 section 5.4).

use std::borrow::Cow;

/// The value of cookie `name` in a `Cookie` header value, if present.
pub fn find<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    pairs(header).find(|(n, _)| *n == name.as_bytes()).map(|(_, v)| v)
}

/// The `Cookie` header value without cookie `name` ("indirect": the app never sees it); `None` when nothing
/// is left. Only that cookie's bytes go: a header without it is left as it came, and the other cookies keep
/// their bytes (a value-only cookie stays value-only, spaces stay), as HAProxy cuts out only its own.
pub fn without<'a>(header: &'a [u8], name: &str) -> Option<Cow<'a, [u8]>> {
    let is_sticky = |segment: &[u8]| {
        let pair = segment.trim_ascii();
        pair.iter().position(|&b| b == b'=').is_some_and(|i| pair[..i].trim_ascii() == name.as_bytes())
    };
    let segments = || header.split(|&b| b == b';');
    if !segments().any(is_sticky) {
        return Some(Cow::Borrowed(header));
    }
    let mut out = Vec::with_capacity(header.len());
    for segment in segments().filter(|s| !is_sticky(s)).map(<[u8]>::trim_ascii).filter(|s| !s.is_empty()) {
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(segment);
    }
    (!out.is_empty()).then_some(Cow::Owned(out))
}

fn pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|&b| b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        if pair.is_empty() {
            return None;
        }
        Some(match pair.iter().position(|&b| b == b'=') {
            Some(i) => (pair[..i].trim_ascii(), pair[i + 1..].trim_ascii()),
            None => (pair, &b""[..]),
        })
    })
}

/// The sticky cookie's value for a server id, and back.
pub fn server_id(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    (text.len() == 16).then(|| u64::from_str_radix(text, 16).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_removes_one_cookie() {
        let h = b"NODESESSID=abc; SRV=00000000000000ff;theme=dark";
        assert_eq!(find(h, "SRV"), Some(&b"00000000000000ff"[..]));
        assert_eq!(find(h, "NODESESSID"), Some(&b"abc"[..]));
        assert_eq!(find(h, "missing"), None);
        assert_eq!(&*without(h, "SRV").unwrap(), b"NODESESSID=abc; theme=dark");
        assert_eq!(without(b"SRV=1", "SRV"), None);
        // Only the sticky cookie's bytes go: a value-only cookie and spaces around `=` stay as they came.
        assert_eq!(&*without(b"tok123; SRV=00000000000000ff; b = 2", "SRV").unwrap(), b"tok123; b = 2");
        assert!(matches!(without(b"tok123;a = 1", "SRV"), Some(Cow::Borrowed(b"tok123;a = 1"))), "untouched");
        assert_eq!(&*without(b"SRVX=1; SRV=2", "SRV").unwrap(), b"SRVX=1", "a longer name is another cookie");
        assert_eq!(server_id(b"00000000000000ff"), Some(255));
        assert_eq!(server_id(b"ff"), None);
        assert_eq!(server_id(b"zz00000000000000"), None);
    }
}
