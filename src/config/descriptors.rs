//! The descriptor budget: every client connection may hold a backend connection too, so `--max-connections`
//! needs about twice as many descriptors, plus what listeners, pools, pipes and the control listeners take.
//! As HAProxy does, a configuration the limit cannot hold is refused at start, not discovered at EMFILE.

/// Descriptors besides client and backend connections: per thread its listeners, its event loop and a few
/// splice pipes; the admin (32) and runtime API (10) connections; gossip, logs, signals and slack.
pub fn reserve(threads: usize, listeners: usize) -> usize {
    threads * (listeners + 8) + 42 + 64
}

/// Raises the soft open-file limit to the hard one and returns it.
pub fn raise_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass, which lives on this stack frame.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return usize::MAX;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// Client connections `limit` descriptors hold.
pub fn connections_within(limit: usize, reserve: usize) -> usize {
    limit.saturating_sub(reserve) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_thousand_descriptors_hold_under_ten_thousand_connections() {
        let reserve = reserve(2, 1);
        assert_eq!(reserve, 124);
        assert_eq!(connections_within(20_000, reserve), 9_938);
        assert_eq!(connections_within(100, reserve), 0);
    }
}
