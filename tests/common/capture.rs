//! A packet capture on the loopback interface, as tcpdump would take it: an AF_PACKET socket (root only)
//! keeping the payload of every UDP datagram sent to one port, to be played back later.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub struct Capture {
    packets: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Starts capturing UDP payloads sent to 127.0.0.1:`port`.
    pub fn udp_to(port: u16) -> Capture {
        // SAFETY: plain socket(2)/bind(2)/setsockopt(2) calls on a descriptor we own from here on.
        let fd = unsafe {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto));
            assert!(fd >= 0, "AF_PACKET socket (needs root): {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = libc::if_nametoindex(c"lo".as_ptr()) as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind to lo: {}", std::io::Error::last_os_error());
            let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            fd
        };
        let packets = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopping) = (packets.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stopping.load(Ordering::SeqCst) {
                // SAFETY: recvfrom writes at most buf.len() bytes and a sockaddr_ll of the given size.
                let (n, from) = unsafe {
                    let mut from: libc::sockaddr_ll = std::mem::zeroed();
                    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                    let n = libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut from as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    );
                    (n, from)
                };
                // Loopback shows each packet leaving and arriving: keep the arrivals.
                if n <= 0 || from.sll_pkttype != libc::PACKET_HOST {
                    continue;
                }
                if let Some(payload) = udp_payload_to(&buf[..n as usize], port) {
                    kept.lock().unwrap().push(payload.to_vec());
                }
            }
        });
        Capture { packets, stop, thread: Some(thread) }
    }

    /// Stops capturing and returns what was captured.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.packets.lock().unwrap())
    }
}

/// The payload of an IPv4 UDP datagram to `port`.
fn udp_payload_to(ip: &[u8], port: u16) -> Option<&[u8]> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let udp = &ip[usize::from(ip[0] & 0xf) * 4..];
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    udp.get(8..len)
}
