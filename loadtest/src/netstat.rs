//! The kernel's TCP counters (`/proc/net/netstat` and `/proc/net/snmp`) around a storm: whether
//! connections waited on the kernel rather than on a process. A SYN dropped because a listener's
//! accept queue was full is sent again only after the initial retransmission timeout (1 s on
//! Linux, then 2 s more), a wait that shows as an idle machine with clients still on their way.
//! The counters are the network namespace's: every process of a loopback run (clients, nginx,
//! instances, PostgreSQL, Redis) adds to them.

use std::collections::BTreeMap;

/// The counters a storm report quotes: (table, field, name in the report).
const COUNTERS: [(&str, &str, &str); 7] = [
    // A connection completed but the listener's accept queue was full: its final ACK is dropped
    // (the client thinks it is connected; the server sends the SYN-ACK again later).
    ("TcpExt", "ListenOverflows", "listen_overflows"),
    // Every SYN or ACK a listener dropped, overflows included.
    ("TcpExt", "ListenDrops", "listen_drops"),
    // SYNs (and SYN-ACKs) sent again after their timeout.
    ("TcpExt", "TCPSynRetrans", "syn_retransmits"),
    // SYNs answered with a cookie because the half-open queue was full.
    ("TcpExt", "SyncookiesSent", "syncookies_sent"),
    // Retransmission timeouts of every kind.
    ("TcpExt", "TCPTimeouts", "retransmission_timeouts"),
    // Segments sent again, of every kind.
    ("Tcp", "RetransSegs", "retransmitted_segments"),
    // Connections reset by this host.
    ("Tcp", "OutRsts", "resets_sent"),
];

/// The counters of [`COUNTERS`] in `texts` (files in the format of `/proc/net/netstat`: for each
/// table a line of names and then a line of values, both starting `Table:`). A counter not
/// found is left out, so an older kernel gives a shorter report rather than a wrong one; a
/// line without its partner is skipped without shifting the tables after it.
pub fn parse(texts: &[&str]) -> BTreeMap<&'static str, u64> {
    let mut found = BTreeMap::new();
    for text in texts {
        // The names line waiting for its values line.
        let mut names: Option<(&str, &str)> = None;
        for line in text.lines() {
            let Some((table, rest)) = line.split_once(':') else { continue };
            match names.take() {
                Some((named, fields)) if named == table => {
                    for (name, value) in fields.split_whitespace().zip(rest.split_whitespace()) {
                        if let Some((_, _, ours)) = COUNTERS.iter().find(|(t, f, _)| *t == table && *f == name)
                            && let Ok(value) = value.parse::<u64>()
                        {
                            found.insert(*ours, value);
                        }
                    }
                }
                _ => names = Some((table, rest)),
            }
        }
    }
    found
}

/// The counters now (empty where `/proc` cannot be read).
pub fn read() -> BTreeMap<&'static str, u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    parse(&[&netstat, &snmp])
}

/// How much each counter grew from `before` to `after` (only those in both).
pub fn growth(
    before: &BTreeMap<&'static str, u64>,
    after: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    after.iter().filter_map(|(k, v)| Some((*k, v.saturating_sub(*before.get(k)?)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_name_from_each_tables_pair_of_lines() {
        // The shape of the real files, with fields in another order and a table we do not read.
        let netstat = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPTimeouts TCPSynRetrans\n\
                       TcpExt: 5 9 120 131 40 77\n\
                       IpExt: InNoRoutes ListenDrops\n\
                       IpExt: 1 999\n";
        // A names line without its values (a truncated read) must not shift the tables after it.
        let snmp = "Icmp: InMsgs\nTcp: RtoAlgorithm OutRsts RetransSegs\nTcp: 1 12 300\n";
        let read = parse(&[netstat, snmp]);
        assert_eq!(read["listen_overflows"], 120);
        assert_eq!(read["listen_drops"], 131, "IpExt's field of the same name is not TcpExt's");
        assert_eq!(read["syn_retransmits"], 77);
        assert_eq!(read["syncookies_sent"], 5);
        assert_eq!(read["retransmission_timeouts"], 40);
        assert_eq!(read["retransmitted_segments"], 300);
        assert_eq!(read["resets_sent"], 12);
        assert_eq!(read.len(), COUNTERS.len());
    }

    #[test]
    fn growth_is_per_counter_and_a_counter_missing_on_either_side_is_left_out() {
        let before = BTreeMap::from([("listen_drops", 10), ("syn_retransmits", 3)]);
        let after = BTreeMap::from([("listen_drops", 25), ("syn_retransmits", 3), ("resets_sent", 4)]);
        assert_eq!(growth(&before, &after), BTreeMap::from([("listen_drops", 15), ("syn_retransmits", 0)]));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_s_counters_are_readable() {
        // The run's report depends on it; a kernel without these files would show empty figures.
        let now = read();
        assert!(now.contains_key("listen_drops") && now.contains_key("retransmitted_segments"), "{now:?}");
    }
}
