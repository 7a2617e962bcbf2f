//! Name resolution for event deliveries, behind [`Resolver`]: [`SystemResolver`] asks the
//! operating system (getaddrinfo, as hyper would), [`MemoryResolver`] answers from a table (for
//! tests: a name that moves to another address between two attempts, as DNS rebinding does).
//! The sender resolves a receiver's name once per connection, checks what it got, and connects
//! to exactly that; nothing else resolves the name again.

use async_trait::async_trait;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::Mutex;

/// Looks names up.
#[async_trait]
pub trait Resolver: Send + Sync + 'static {
    /// The addresses of `host` (a name, not an IP literal), in the order to try them.
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>>;
}

/// The operating system's resolver (`/etc/hosts`, then DNS).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        // Port 0: only the addresses are wanted; the URL's port is put on each by the caller.
        let mut ips: Vec<IpAddr> = tokio::net::lookup_host((host, 0)).await?.map(|a| a.ip()).collect();
        ips.dedup();
        Ok(ips)
    }
}

/// An in-process resolver: answers from a table that tests change, and counts lookups.
#[derive(Debug, Default)]
pub struct MemoryResolver {
    names: Mutex<HashMap<String, Vec<IpAddr>>>,
    lookups: Mutex<HashMap<String, usize>>,
}

impl MemoryResolver {
    /// From now on `host` resolves to `ips` (none: the name does not exist).
    pub fn set(&self, host: &str, ips: impl IntoIterator<Item = IpAddr>) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_ascii_lowercase(), ips.into_iter().collect());
    }

    /// How many times `host` was looked up.
    pub fn lookups(&self, host: &str) -> usize {
        self.lookups.lock().unwrap_or_else(|p| p.into_inner()).get(&host.to_ascii_lowercase()).copied().unwrap_or(0)
    }
}

#[async_trait]
impl Resolver for MemoryResolver {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let host = host.to_ascii_lowercase();
        *self.lookups.lock().unwrap_or_else(|p| p.into_inner()).entry(host.clone()).or_default() += 1;
        match self.names.lock().unwrap_or_else(|p| p.into_inner()).get(&host) {
            Some(ips) if !ips.is_empty() => Ok(ips.clone()),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, format!("no such name: {host}"))),
        }
    }
}
