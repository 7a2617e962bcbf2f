//! Process limits that decide how many sockets one hub can hold. Each WebSocket is one open
//! file, so the connection cap follows the open-file limit (`ulimit -n`) rather than a number
//! picked without looking.

/// Open files kept back from WebSockets: the database pool, Redis, the HTTP listener and its
/// short-lived requests, Stripe calls, logs and libraries.
pub const FILE_RESERVE: u64 = 512;

/// Raises this process's soft open-file limit to its hard limit (allowed without privileges)
/// and returns the soft limit now in force (1024, the usual default, if it cannot be read).
pub fn raise_open_files() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit; assuming 1024");
            1024
        }
    }
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
