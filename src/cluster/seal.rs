//! Sealed gossip, as Serf's `-encrypt` (foca has no security of its own): every packet is encrypted and
//! authenticated with XChaCha20-Poly1305 under the cluster key, and names its sender's session, a counter and
//! the time it was sealed, so a captured packet played back later is refused.
//!
//! Wire format: `version (1) | flags (1) | key id (4) | nonce (24) | ciphertext | tag (16)`, where the nonce
//! is `session (8) | counter (8) | unix millis (8)`. Everything before the ciphertext is the AEAD's associated
//! data: altering any of it fails authentication. The session is random per process, so nonces never repeat
//! under one key.
//!
//! Every packet is sent twice, the second time a few milliseconds later as a *copy* (flag bit 0) sealed under
//! the next counter: a lossy link then loses a message only if it loses both. A copy whose original arrived is
//! dropped as a duplicate, quietly; one whose original was lost is delivered.
//!
//! A [`Keyring`] holds one or more keys: the first seals, every one opens. A cluster moves to a new key in
//! three rolling steps, as with `serf keys install/use/remove`: give every node `NEW` after `OLD`, then
//! `NEW` before `OLD`, then `NEW` alone.

use std::collections::HashMap;

use base64::Engine;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use thiserror::Error;

const VERSION: u8 = 2;
/// Flag: this packet repeats the one sealed just before it (counter - 1).
const COPY: u8 = 1;
const KEY_ID: usize = 4;
const NONCE: usize = 24;
const TAG: usize = 16;
/// Where the key id and the nonce start.
const AT_KEY: usize = 2;
const AT_NONCE: usize = AT_KEY + KEY_ID;
const HEADER: usize = AT_NONCE + NONCE;
/// Bytes a sealed packet adds to its payload.
pub const OVERHEAD: usize = HEADER + TAG;
/// The largest sealed packet: 1400 bytes fit an overlay network's MTU (swarm's VXLAN has 1450). Anything
/// longer is refused before it is authenticated, so a flood of forged 64 KiB datagrams costs a length check
/// each, not a pass of Poly1305 over every byte.
pub const MAX_SEALED: usize = 1400;
/// How far a packet's timestamp may be from this host's clock. Older packets are refused as replays, so the
/// hosts' clocks must agree within this (NTP).
pub const MAX_SKEW_MS: u64 = 30_000;
/// How many recent counters are remembered per sender session; older ones are refused. A sender's counter is
/// shared by all its destinations and every packet takes two (its copy), so one flush to many members (a
/// rejoin announced to each) moves it far between two packets to the same member: 128 refused the copy of a
/// lost packet once a node sent to more than about 64 members in the 10 ms before the copy left.
const WINDOW: u64 = Window::BITS;
/// Sender sessions remembered at once (only authentic packets create one).
const MAX_SESSIONS: usize = 4096;
/// Length of a key in bytes: what `shoal keygen` prints, base64-encoded.
pub const KEY_BYTES: usize = 32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{0:?} is not base64 ({1}); make a key with `shoal keygen`")]
    NotBase64(String, String),
    #[error("a key must be {KEY_BYTES} bytes (44 base64 characters), this one is {0}; make one with `shoal keygen`")]
    Length(usize),
    #[error("no key given")]
    Empty,
}

/// Why a packet was refused; each reason is counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Refused {
    #[error("too short or not a sealed packet")]
    Malformed,
    #[error("sealed under a key this node does not hold")]
    UnknownKey,
    #[error("failed authentication")]
    Forged,
    #[error("timestamp outside the replay window (a replay, or clocks out of sync)")]
    Stale,
    #[error("already received (a replay)")]
    Replayed,
    /// The copy of a packet whose original arrived: expected, never logged.
    #[error("a copy of a packet already received")]
    Duplicate,
}

impl Refused {
    pub const ALL: [Refused; 6] = [
        Refused::Malformed,
        Refused::UnknownKey,
        Refused::Forged,
        Refused::Stale,
        Refused::Replayed,
        Refused::Duplicate,
    ];

    /// A label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::UnknownKey => "unknown_key",
            Refused::Forged => "forged",
            Refused::Stale => "stale",
            Refused::Replayed => "replayed",
            Refused::Duplicate => "duplicate",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

struct Key {
    id: [u8; KEY_ID],
    cipher: XChaCha20Poly1305,
}

/// The cluster's keys, the first one sealing.
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    /// Parses base64 keys, as `shoal keygen` prints them.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Keyring, KeyError> {
        let keys = texts.iter().map(|t| parse_key(t.as_ref())).collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Keyring { keys })
    }

    /// The short ids of the keys, sealing key first, for logs (never the keys themselves).
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.iter().map(|b| format!("{b:02x}")).collect()).collect()
    }

    fn find(&self, id: &[u8]) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }
}

fn parse_key(text: &str) -> Result<Key, KeyError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| KeyError::NotBase64(elide(text), e.to_string()))?;
    if bytes.len() != KEY_BYTES {
        return Err(KeyError::Length(bytes.len()));
    }
    let digest = Sha256::new().chain_update(b"shoal cluster key id").chain_update(&bytes).finalize();
    let mut id = [0u8; KEY_ID];
    id.copy_from_slice(&digest[..KEY_ID]);
    let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| KeyError::Length(bytes.len()))?;
    Ok(Key { id, cipher })
}

/// A secret is never echoed whole in an error message.
fn elide(text: &str) -> String {
    let shown: String = text.chars().take(4).collect();
    if text.chars().count() > 4 {
        format!("{shown}...")
    } else {
        shown
    }
}

/// A fresh random key, base64-encoded (`shoal keygen`).
pub fn generate() -> std::io::Result<String> {
    let mut key = [0u8; KEY_BYTES];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(format!("no randomness: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

/// A bit set over the last [`Window::BITS`] counters: bit `i` stands for `highest - i`.
#[derive(Clone, Copy)]
struct Window([u64; 16]);

impl Window {
    const BITS: u64 = 16 * 64;

    /// Only `highest` seen.
    fn first() -> Window {
        let mut w = Window([0; 16]);
        w.0[0] = 1;
        w
    }

    fn get(&self, i: u64) -> bool {
        i < Self::BITS && self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: u64) {
        if i < Self::BITS {
            self.0[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    /// `highest` moved up by `n`: every bit moves `n` further from it, those beyond the window are dropped.
    fn advance(&mut self, n: u64) {
        if n >= Self::BITS {
            self.0 = [0; 16];
            return;
        }
        let (words, bits) = ((n / 64) as usize, (n % 64) as u32);
        for i in (0..16).rev() {
            let from = |j: usize| if j >= words { self.0[j - words] } else { 0 };
            let low = if bits > 0 && i > words { from(i - 1) >> (64 - bits) } else { 0 };
            self.0[i] = if i >= words { (from(i) << bits) | low } else { 0 };
        }
    }
}

/// The counters seen recently from one sender session.
struct Session {
    highest: u64,
    seen: Window,
    /// This host's clock (ms) when the session last sent an authentic packet.
    last: u64,
}

/// Seals outgoing packets and opens incoming ones, remembering what it has opened.
pub struct Sealer {
    keyring: Keyring,
    session: u64,
    counter: u64,
    sessions: HashMap<u64, Session>,
}

impl Sealer {
    pub fn new(keyring: Keyring) -> std::io::Result<Sealer> {
        let session = getrandom::u64().map_err(|e| std::io::Error::other(format!("no randomness: {e}")))?;
        Ok(Sealer { keyring, session, counter: 0, sessions: HashMap::new() })
    }

    /// Replaces the keys (a rotation step); the session and what was received are kept.
    pub fn set_keyring(&mut self, keyring: Keyring) {
        self.keyring = keyring;
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Writes the sealed form of `payload` to `out`; `copy` marks a repeat of the packet sealed just before.
    pub fn seal(&mut self, payload: &[u8], now_ms: u64, copy: bool, out: &mut Vec<u8>) {
        self.counter += 1;
        let key = &self.keyring.keys[0];
        out.clear();
        out.push(VERSION);
        out.push(if copy { COPY } else { 0 });
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(payload);
        let (header, body) = out.split_at_mut(HEADER);
        let nonce = XNonce::from_slice(&header[AT_NONCE..]);
        // Encryption fails only for messages beyond 256 GiB.
        let tag = key.cipher.encrypt_in_place_detached(nonce, header, body).expect("a gossip packet is small");
        out.extend_from_slice(&tag);
    }

    /// Decrypts `packet` in place and returns its payload, or why it is refused.
    pub fn open<'a>(&mut self, packet: &'a mut [u8], now_ms: u64) -> Result<&'a [u8], Refused> {
        if packet.len() < OVERHEAD || packet.len() > MAX_SEALED || packet[0] != VERSION {
            return Err(Refused::Malformed);
        }
        let key = self.keyring.find(&packet[AT_KEY..AT_NONCE]).ok_or(Refused::UnknownKey)?;
        let (header, rest) = packet.split_at_mut(HEADER);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG);
        let nonce = XNonce::from_slice(&header[AT_NONCE..]);
        key.cipher.decrypt_in_place_detached(nonce, header, body, Tag::from_slice(tag)).map_err(|_| Refused::Forged)?;
        let field = |at: usize| u64::from_be_bytes(header[AT_NONCE + at..AT_NONCE + at + 8].try_into().unwrap());
        let (session, counter, sent) = (field(0), field(8), field(16));
        if now_ms.abs_diff(sent) > MAX_SKEW_MS {
            return Err(Refused::Stale);
        }
        let copy = header[1] & COPY != 0;
        if copy && self.seen(session, counter.wrapping_sub(1)) {
            self.remember(session, counter, now_ms)?;
            return Err(Refused::Duplicate);
        }
        self.remember(session, counter, now_ms)?;
        Ok(body)
    }

    /// Whether `counter` of `session` was received (and is still remembered).
    fn seen(&self, session: u64, counter: u64) -> bool {
        self.sessions.get(&session).is_some_and(|s| counter <= s.highest && s.seen.get(s.highest - counter))
    }

    /// Records `counter` for `session`, refusing one already seen or older than the window.
    fn remember(&mut self, session: u64, counter: u64, now_ms: u64) -> Result<(), Refused> {
        if !self.sessions.contains_key(&session) {
            self.make_room(now_ms);
            self.sessions.insert(session, Session { highest: counter, seen: Window::first(), last: now_ms });
            return Ok(());
        }
        let s = self.sessions.get_mut(&session).expect("checked above");
        if counter > s.highest {
            s.seen.advance(counter - s.highest);
            s.seen.set(0);
            s.highest = counter;
        } else {
            let age = s.highest - counter;
            if age >= WINDOW || s.seen.get(age) {
                return Err(Refused::Replayed);
            }
            s.seen.set(age);
        }
        s.last = now_ms;
        Ok(())
    }

    /// Forgets sessions silent for longer than any packet of theirs stays acceptable, and the least recently
    /// heard one when the table is full.
    fn make_room(&mut self, now_ms: u64) {
        if self.sessions.len() < MAX_SESSIONS {
            return;
        }
        self.sessions.retain(|_, s| now_ms.saturating_sub(s.last) <= 3 * MAX_SKEW_MS);
        if self.sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = self.sessions.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k) {
                self.sessions.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn sealer(keys: &[&str]) -> Sealer {
        Sealer::new(Keyring::parse(keys).unwrap()).unwrap()
    }

    fn sealed(s: &mut Sealer, payload: &[u8], at: u64) -> Vec<u8> {
        let mut out = Vec::new();
        s.seal(payload, at, false, &mut out);
        out
    }

    fn copy(s: &mut Sealer, payload: &[u8], at: u64) -> Vec<u8> {
        let mut out = Vec::new();
        s.seal(payload, at, true, &mut out);
        out
    }

    #[test]
    fn seals_opens_and_hides_the_payload() {
        let key = generate().unwrap();
        let (mut a, mut b) = (sealer(&[&key]), sealer(&[&key]));
        let mut wire = sealed(&mut a, b"hello gossip", NOW);
        assert_eq!(wire.len(), 12 + OVERHEAD);
        assert!(find(&wire, b"hello").is_none(), "the payload is encrypted");
        assert_eq!(b.open(&mut wire, NOW).unwrap(), b"hello gossip");
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn refuses_packets_longer_than_any_sealer_makes_unopened() {
        let key = generate().unwrap();
        let (mut a, mut b) = (sealer(&[&key]), sealer(&[&key]));
        let mut largest = sealed(&mut a, &[7; MAX_SEALED - OVERHEAD], NOW);
        assert_eq!(b.open(&mut largest, NOW).map(<[u8]>::len), Ok(MAX_SEALED - OVERHEAD));
        let mut longer = sealed(&mut a, &[7; MAX_SEALED - OVERHEAD + 1], NOW);
        assert_eq!(b.open(&mut longer, NOW), Err(Refused::Malformed));
    }

    #[test]
    fn refuses_tampering_unknown_keys_and_junk() {
        let (k1, k2) = (generate().unwrap(), generate().unwrap());
        let mut a = sealer(&[&k1]);
        let mut b = sealer(&[&k1]);
        let wire = sealed(&mut a, b"payload", NOW);
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x40;
            let got = b.open(&mut bad, NOW);
            assert!(got.is_err(), "flipping byte {i} must be refused");
        }
        assert_eq!(sealer(&[&k2]).open(&mut wire.clone(), NOW), Err(Refused::UnknownKey));
        assert_eq!(b.open(&mut [1u8; 10], NOW), Err(Refused::Malformed));
        assert_eq!(b.open(&mut [7u8; 100], NOW), Err(Refused::Malformed));
    }

    #[test]
    fn replays_are_refused_now_and_later() {
        let key = generate().unwrap();
        let (mut a, mut b) = (sealer(&[&key]), sealer(&[&key]));
        let first = sealed(&mut a, b"one", NOW);
        let second = sealed(&mut a, b"two", NOW + 10);
        assert!(b.open(&mut second.clone(), NOW + 10).is_ok());
        assert!(b.open(&mut first.clone(), NOW + 11).is_ok(), "reordered within the window");
        assert_eq!(b.open(&mut first.clone(), NOW + 12), Err(Refused::Replayed));
        assert_eq!(b.open(&mut second.clone(), NOW + 12), Err(Refused::Replayed));
        // Captured and played back a minute later, to a node that never saw it (or forgot the session).
        let mut fresh = sealer(&[&key]);
        assert_eq!(fresh.open(&mut first.clone(), NOW + 60_000), Err(Refused::Stale));
        // Counters far behind the window are refused too.
        let old = sealed(&mut a, b"old", NOW + 20);
        for i in 0..WINDOW + 1 {
            let mut p = sealed(&mut a, b"x", NOW + 30);
            assert!(b.open(&mut p, NOW + 30).is_ok(), "packet {i}");
        }
        assert_eq!(b.open(&mut old.clone(), NOW + 31), Err(Refused::Replayed));
    }

    #[test]
    fn the_window_keeps_exactly_the_last_counters_seen() {
        // Against a plain set of counters, over random steps forward and back.
        let mut w = Window::first();
        let (mut highest, mut seen) = (5000u64, std::collections::BTreeSet::from([5000u64]));
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let step = x % 300;
            if x.is_multiple_of(3) {
                w.advance(step);
                highest += step;
                w.set(0);
                seen.insert(highest);
            } else if step < Window::BITS && step <= highest {
                w.set(step);
                seen.insert(highest - step);
            }
            let probe = x % (Window::BITS + 10);
            let want = probe < Window::BITS && probe <= highest && seen.contains(&(highest - probe));
            assert_eq!(w.get(probe), want, "counter {} (highest {highest})", highest.wrapping_sub(probe));
        }
    }

    #[test]
    fn a_copy_late_behind_a_burst_to_other_members_is_still_delivered() {
        // A rejoin announced to 300 members: the copy of a lost packet to this one leaves 10 ms after its
        // original, by which time the sender sealed 600 more packets, one of them to this member.
        let key = generate().unwrap();
        let (mut a, mut b) = (sealer(&[&key]), sealer(&[&key]));
        let (_lost, repeat) = (sealed(&mut a, b"to b", NOW), copy(&mut a, b"to b", NOW));
        for _ in 0..600 {
            sealed(&mut a, b"to others", NOW);
        }
        assert!(b.open(&mut sealed(&mut a, b"to b again", NOW), NOW).is_ok());
        assert_eq!(b.open(&mut repeat.clone(), NOW).unwrap(), b"to b", "the copy, 601 counters behind");
        assert_eq!(b.open(&mut repeat.clone(), NOW), Err(Refused::Replayed));
    }

    #[test]
    fn a_copy_is_delivered_only_when_its_original_was_lost() {
        let key = generate().unwrap();
        let (mut a, mut b) = (sealer(&[&key]), sealer(&[&key]));
        let (original, repeat) = (sealed(&mut a, b"one", NOW), copy(&mut a, b"one", NOW));
        assert!(b.open(&mut original.clone(), NOW).is_ok());
        assert_eq!(b.open(&mut repeat.clone(), NOW), Err(Refused::Duplicate));
        assert_eq!(b.open(&mut repeat.clone(), NOW), Err(Refused::Replayed), "the copy itself played back");
        let (_lost, repeat) = (sealed(&mut a, b"two", NOW), copy(&mut a, b"two", NOW));
        assert_eq!(b.open(&mut repeat.clone(), NOW).unwrap(), b"two", "the original never came");
        // The copy flag is authenticated: an original cannot pass for a copy.
        let mut forged = sealed(&mut a, b"three", NOW);
        forged[1] |= COPY;
        assert_eq!(b.open(&mut forged, NOW), Err(Refused::Forged));
    }

    #[test]
    fn keys_rotate_in_three_steps() {
        let (old, new) = (generate().unwrap(), generate().unwrap());
        let mut only_old = sealer(&[&old]);
        let mut installed = sealer(&[&old, &new]);
        let mut in_use = sealer(&[&new, &old]);
        let mut only_new = sealer(&[&new]);
        // Step 1 (install): old-only and installed nodes understand each other.
        let mut p = sealed(&mut installed, b"a", NOW);
        assert!(only_old.open(&mut p, NOW).is_ok());
        let mut p = sealed(&mut only_old, b"b", NOW);
        assert!(installed.open(&mut p, NOW).is_ok());
        // Step 2 (use): installed and in-use nodes too.
        let mut p = sealed(&mut in_use, b"c", NOW);
        assert!(installed.open(&mut p, NOW).is_ok());
        // Step 3 (remove): in-use and new-only nodes too; old-only ones are out.
        let mut p = sealed(&mut only_new, b"d", NOW);
        assert!(in_use.open(&mut p, NOW).is_ok());
        let mut p = sealed(&mut in_use, b"e", NOW);
        assert_eq!(only_old.open(&mut p, NOW), Err(Refused::UnknownKey));
        assert_eq!(installed.keyring().ids().len(), 2);
    }

    #[test]
    fn keys_must_be_32_base64_bytes() {
        assert!(matches!(Keyring::parse(&["s3cret"]), Err(KeyError::NotBase64(..) | KeyError::Length(_))));
        assert_eq!(Keyring::parse(&["c2hvcnQ="]).err(), Some(KeyError::Length(5)));
        assert_eq!(Keyring::parse::<&str>(&[]).err(), Some(KeyError::Empty));
        let err = Keyring::parse(&["not base64 at all, and secret"]).err().unwrap().to_string();
        assert!(!err.contains("secret"), "the key is not echoed: {err}");
        assert_eq!(generate().unwrap().len(), 44);
    }

    #[test]
    fn the_session_table_is_bounded() {
        let key = generate().unwrap();
        let mut b = sealer(&[&key]);
        for _ in 0..MAX_SESSIONS + 50 {
            let mut p = sealed(&mut sealer(&[&key]), b"x", NOW);
            assert!(b.open(&mut p, NOW).is_ok());
        }
        assert_eq!(b.sessions(), MAX_SESSIONS);
    }
}
