//! Packet authentication under a shared cluster key, like Serf's `-encrypt`: foca has none of its own.
//!
//! Each packet is `HMAC-SHA256(key, payload)[..16] || payload`. Packets that fail are dropped and counted.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const TAG: usize = 16;

#[derive(Clone)]
pub struct PacketAuth {
    key: Option<[u8; 32]>,
}

impl PacketAuth {
    /// Any secret string; it is hashed into the MAC key. `None` runs the cluster open.
    pub fn new(secret: Option<&str>) -> PacketAuth {
        PacketAuth { key: secret.map(|s| Sha256::digest(s.as_bytes()).into()) }
    }

    /// The bytes to put on the wire for `payload`.
    pub fn seal(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        if let Some(key) = &self.key {
            out.extend_from_slice(&tag(key, payload)[..TAG]);
        }
        out.extend_from_slice(payload);
    }

    /// The payload of an authentic packet, or `None`.
    pub fn open<'a>(&self, packet: &'a [u8]) -> Option<&'a [u8]> {
        let Some(key) = &self.key else { return Some(packet) };
        if packet.len() < TAG {
            return None;
        }
        let (t, payload) = packet.split_at(TAG);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
        mac.update(payload);
        mac.verify_truncated_left(t).ok()?;
        Some(payload)
    }
}

fn tag(key: &[u8; 32], payload: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens() {
        let a = PacketAuth::new(Some("secret"));
        let mut wire = Vec::new();
        a.seal(b"hello", &mut wire);
        assert_eq!(a.open(&wire), Some(&b"hello"[..]));
        assert_eq!(PacketAuth::new(Some("other")).open(&wire), None);
        wire[20] ^= 1;
        assert_eq!(a.open(&wire), None);
        assert_eq!(a.open(b"short"), None);
        let open = PacketAuth::new(None);
        open.seal(b"x", &mut wire);
        assert_eq!(open.open(&wire), Some(&b"x"[..]));
    }
}
