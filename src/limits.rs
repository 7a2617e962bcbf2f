//! Process limits that decide how many sockets one hub can hold. Each WebSocket is one open
//! file, so the connection cap follows the open-file limit (`ulimit -n`) rather than a number
//! picked without looking.

/// Open files kept back from WebSockets: the database pool, Redis, the HTTP listener and its
/// short-lived requests, Stripe calls, logs and libraries.
pub const FILE_RESERVE: u64 = 512;

/// Raises this process's soft open-file limit to its hard limit (allowed without privileges)
/// and returns the soft limit now in force.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The connection cap for a configured value: the value itself, or for `0` the open-file
/// limit (raised to the hard limit) less [`FILE_RESERVE`], never below 64.
pub fn connection_cap(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let files = raise_open_files();
    files.saturating_sub(FILE_RESERVE).max(64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_cap_wins_and_auto_follows_the_file_limit() {
        assert_eq!(connection_cap(5), 5);
        let files = raise_open_files();
        assert_eq!(connection_cap(0) as u64, files.saturating_sub(FILE_RESERVE).max(64));
    }
}
