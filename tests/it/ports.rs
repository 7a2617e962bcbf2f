//! Loopback ports for the servers a test starts itself and binds later: hub processes, nginx,
//! private Redis servers, the SMTP sink. A port found by binding port 0 and letting go is open to
//! anything until the server binds it: the kernel hands the same port to the next listener on
//! port 0 (another test's hub, the Stripe simulator) or to an outgoing connection. A mail server
//! the receipt tests keep down for seconds, or a node restarted on its port, leaves that window
//! wide open. So these ports come from below the kernel's own range, which it never hands out by
//! itself, and each is held by a lock file until this process ends, so the tests nextest runs
//! side by side in other processes never pick the same one.

use std::fs::File;
use std::sync::Mutex;

/// The lowest port handed out: clear of the well-known ports and of the machine's own services.
const FLOOR: u16 = 10_000;

/// The lock files of the ports this process holds (a lock lasts as long as its file is open).
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// The first port of the kernel's range for ports it picks itself.
pub fn kernels_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768)
}

/// A loopback port for a server this test starts, free now and held for this process.
pub fn reserve() -> u16 {
    reserve_with(&[])
}

/// As [`reserve`], with `port + offset` also free and held for each of `offsets` (a Redis
/// Cluster node also listens on its port + 10000).
pub fn reserve_with(offsets: &[u16]) -> u16 {
    let reach = offsets.iter().copied().max().unwrap_or(0);
    let top = kernels_low().checked_sub(reach).filter(|top| *top > FLOOR + 100).unwrap_or_else(|| {
        panic!(
            "no room for test servers' ports between {FLOOR} and the kernel's range (ip_local_port_range) less {reach}"
        )
    });
    let span = u32::from(top - FLOOR);
    let dir = std::env::temp_dir().join("callpay-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    // A random start, so processes starting together look in different places first.
    let start = {
        use std::hash::{BuildHasher, Hasher};
        u32::try_from(std::collections::hash_map::RandomState::new().build_hasher().finish() % u64::from(span)).unwrap()
    };
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    for i in 0..span {
        let port = FLOOR + u16::try_from((start + i) % span).unwrap();
        let ports: Vec<u16> = std::iter::once(port).chain(offsets.iter().map(|o| port + o)).collect();
        let mut locks = Vec::new();
        for p in &ports {
            let Ok(file) = File::create(dir.join(p.to_string())) else { break };
            if file.try_lock().is_err() {
                break;
            }
            locks.push(file);
        }
        let free = || ports.iter().all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok());
        if locks.len() == ports.len() && free() {
            held.extend(locks);
            return port;
        }
    }
    panic!("no free loopback port below {top}");
}

#[test]
fn ports_for_servers_a_test_starts_are_outside_the_kernels_range_and_held_from_other_processes() {
    let low = kernels_low();
    let (a, b) = (reserve(), reserve());
    assert!(a < low && b < low, "{a} and {b} are below the kernel's range from {low}");
    assert_ne!(a, b, "never the same port twice");
    let node = reserve_with(&[10_000]);
    assert!(node + 10_000 < low, "{node} and its bus port {} are below {low}", node + 10_000);
    // Another process opening a port's lock file cannot lock it (a lock belongs to its open
    // file, so a second open in this process stands in for another process).
    for port in [a, b, node, node + 10_000] {
        let other = File::create(std::env::temp_dir().join("callpay-test-ports").join(port.to_string())).unwrap();
        assert!(other.try_lock().is_err(), "port {port} is held");
    }
}
