//! What an endpoint URL may be, and which addresses may receive events. Pure: the operator's
//! URL, callpay's own addresses and the operator's allowances in, a parsed URL or the reason it
//! is refused out. The same address rules ([`check_address`]) apply again at send time to every
//! address the URL's host resolves to, which is the only place a name's addresses are known.

use crate::config::EventsConfig;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use url::{Host, Url};

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Where callpay itself is reached: events must never be sent there (a loop, or a request
/// from inside the service to its own admin API).
#[derive(Debug, Clone, Default)]
pub struct OwnAddresses {
    /// The listen address.
    pub listen: Option<SocketAddr>,
    /// The metrics listener, if separate.
    pub metrics: Option<SocketAddr>,
    /// The public base URL.
    pub public_url: Option<String>,
}

/// The rules a receiver's URL and addresses are checked against, at registration and at
/// every attempt.
#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    /// callpay's own addresses (always refused).
    pub own: OwnAddresses,
    /// Plain `http://` accepted for hosts other than loopback (`events.allow_http`).
    pub allow_http: bool,
    /// Loopback receivers accepted (`events.allow_loopback`: the demo and the tests run their
    /// receivers on this machine; in production a loopback receiver is a request to whatever
    /// else listens beside callpay).
    pub allow_loopback: bool,
}

impl UrlPolicy {
    /// The policy of `cfg` around callpay's `own` addresses.
    pub fn new(own: OwnAddresses, cfg: &EventsConfig) -> Self {
        Self { own, allow_http: cfg.allow_http, allow_loopback: cfg.allow_loopback }
    }
}

/// A kind of address no receiver has: an address inside callpay's own network or machine
/// (what a server-side request forgery would reach) or one that is not a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `0.0.0.0/8` ("this network"; Linux connects `0.x.x.x` to the local machine).
    ThisNetwork,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16` (RFC 1918).
    Private,
    /// `100.64.0.0/10`, carrier-grade NAT's shared space (RFC 6598).
    SharedNat,
    /// `169.254.0.0/16`, `fe80::/10`: where cloud metadata services answer (`169.254.169.254`).
    LinkLocal,
    /// `fc00::/7` (IPv6's private addresses).
    UniqueLocal,
    /// `fec0::/10` (deprecated, still routed inside some networks).
    SiteLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `240.0.0.0/4`; `198.18.0.0/15` (benchmarking, and what fake-IP DNS proxies hand out, so
    /// a checked address could still be proxied anywhere); `192.0.0.0/24` (protocol
    /// assignments); the deprecated IPv4-compatible IPv6 addresses (`::a.b.c.d`); NAT64's
    /// local-use `64:ff9b:1::/48` (its IPv4 address may sit anywhere in it, so no one place can
    /// be checked); Teredo `2001::/32` (it tunnels to an IPv4 address); discard-only `100::/64`.
    Reserved,
}

impl std::fmt::Display for Special {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Special::Unspecified => "unspecified",
            Special::ThisNetwork => "in 0.0.0.0/8 (this network)",
            Special::Loopback => "loopback (events.allow_loopback is off)",
            Special::Private => "private (RFC 1918)",
            Special::SharedNat => "in the carrier-grade NAT space 100.64.0.0/10",
            Special::LinkLocal => "link-local (where cloud metadata services answer)",
            Special::UniqueLocal => "unique local (fc00::/7)",
            Special::SiteLocal => "site-local (fec0::/10)",
            Special::Multicast => "multicast",
            Special::Broadcast => "broadcast",
            Special::Reserved => "reserved",
        })
    }
}

/// What kind of special address `ip` is, if any. An IPv4 address inside an IPv6 one
/// (IPv4-mapped `::ffff:a.b.c.d`, SIIT's `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4
/// `2002:aabb:ccdd::`) is what it carries: those reach the IPv4 address through the host's
/// stack or a translator.
pub fn classify(ip: IpAddr) -> Option<Special> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Special> {
    let [a, b, ..] = ip.octets();
    Some(match ip {
        _ if ip.is_unspecified() => Special::Unspecified,
        _ if a == 0 => Special::ThisNetwork,
        _ if ip.is_loopback() => Special::Loopback,
        _ if ip.is_private() => Special::Private,
        _ if a == 100 && (b & 0xc0) == 64 => Special::SharedNat,
        _ if ip.is_link_local() => Special::LinkLocal,
        _ if ip.is_multicast() => Special::Multicast,
        _ if ip.is_broadcast() => Special::Broadcast,
        _ if a >= 240 => Special::Reserved,
        _ if a == 198 && (b & 0xfe) == 18 => Special::Reserved,
        _ if a == 192 && b == 0 && ip.octets()[2] == 0 => Special::Reserved,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Special> {
    let s = ip.segments();
    let low_v4 = Ipv4Addr::from(u32::from(s[6]) << 16 | u32::from(s[7]));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    Some(match s {
        _ if ip.is_unspecified() => Special::Unspecified,
        _ if ip.is_loopback() => Special::Loopback,
        [0, 0, 0, 0, 0, 0, _, _] => Special::Reserved,
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => return classify_v4(low_v4),
        [0x64, 0xff9b, 1, ..] | [0x2001, 0, ..] | [0x100, 0, 0, 0, ..] => Special::Reserved,
        [0x2002, hi, lo, ..] => return classify_v4(Ipv4Addr::from(u32::from(hi) << 16 | u32::from(lo))),
        [first, ..] if first & 0xfe00 == 0xfc00 => Special::UniqueLocal,
        [first, ..] if first & 0xffc0 == 0xfe80 => Special::LinkLocal,
        [first, ..] if first & 0xffc0 == 0xfec0 => Special::SiteLocal,
        _ if ip.is_multicast() => Special::Multicast,
        _ => return None,
    })
}

/// Why a URL is refused; [`Refused::code`] is the API's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not an absolute URL with a host, or too long.
    #[error("not an absolute http(s) URL with a host (at most {MAX_URL_LEN} characters)")]
    Invalid,
    /// A scheme other than http and https.
    #[error("only http:// and https:// URLs are accepted")]
    Scheme,
    /// `user:password@` in the URL (it would end up in logs; use the signature instead).
    #[error("the URL must not carry a user name or password; receivers authenticate events by their signature")]
    Credentials,
    /// A `#fragment` (never sent over HTTP, so it is a mistake).
    #[error("the URL must not have a #fragment")]
    Fragment,
    /// Plain http to a host other than loopback, while `events.allow_http` is off.
    #[error("plain http:// is accepted only for loopback receivers; use https:// (or set events.allow_http)")]
    Insecure,
    /// callpay's own listen address, metrics address or public URL.
    #[error("the URL points at callpay itself")]
    Itself,
    /// An address of one of the [`Special`] kinds.
    #[error("the address is {0}: events are sent only to public addresses")]
    Address(Special),
}

impl Refused {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Refused::Invalid => "invalid_url",
            Refused::Scheme => "url_scheme_not_allowed",
            Refused::Credentials => "url_has_credentials",
            Refused::Fragment => "url_has_fragment",
            Refused::Insecure => "url_not_https",
            Refused::Itself => "url_is_callpay",
            Refused::Address(_) => "url_address_not_allowed",
        }
    }
}

/// `raw` as an endpoint URL under `policy`, or why not. A literal address is checked here; a
/// name's addresses when an attempt resolves it (a name may resolve elsewhere by then).
pub fn check_url(raw: &str, policy: &UrlPolicy) -> Result<Url, Refused> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > MAX_URL_LEN {
        return Err(Refused::Invalid);
    }
    let url = Url::parse(raw).map_err(|_| Refused::Invalid)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused::Scheme);
    }
    let host = url.host().ok_or(Refused::Invalid)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refused::Credentials);
    }
    if url.fragment().is_some() {
        return Err(Refused::Fragment);
    }
    let port = url.port_or_known_default().ok_or(Refused::Invalid)?;
    if port == 0 {
        return Err(Refused::Invalid);
    }
    let ip = match host {
        Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        Host::Domain(_) => None,
    };
    // `localhost` names resolve to loopback by the rules of RFC 6761, whatever DNS says.
    let localhost = matches!(host, Host::Domain(d) if is_localhost(d));
    if let Some(ip) = ip {
        check_address(SocketAddr::new(ip, port), policy)?;
    } else if localhost {
        if policy.own.listens_on_loopback(port) {
            return Err(Refused::Itself);
        }
        if !policy.allow_loopback {
            return Err(Refused::Address(Special::Loopback));
        }
    }
    let loopback = localhost || ip.is_some_and(|ip| classify(ip) == Some(Special::Loopback));
    if url.scheme() == "http" && !policy.allow_http && !loopback {
        return Err(Refused::Insecure);
    }
    if let Some(public) = policy.own.public_url.as_deref().and_then(|p| Url::parse(p).ok())
        && public.host_str().map(str::to_ascii_lowercase) == url.host_str().map(str::to_ascii_lowercase)
        && public.port_or_known_default() == Some(port)
    {
        return Err(Refused::Itself);
    }
    Ok(url)
}

fn is_localhost(domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    d == "localhost" || d.ends_with(".localhost")
}

impl OwnAddresses {
    /// Whether one of callpay's listeners answers on loopback at `port`.
    fn listens_on_loopback(&self, port: u16) -> bool {
        [self.listen, self.metrics]
            .into_iter()
            .flatten()
            .any(|a| a.port() == port && (a.ip().is_loopback() || a.ip().is_unspecified()))
    }
}

/// Whether `addr` (a literal in the URL, or one its host resolved to) may receive events
/// under `policy`: not callpay itself, and not [`Special`] unless it is loopback and loopback
/// receivers are allowed.
pub fn check_address(addr: SocketAddr, policy: &UrlPolicy) -> Result<(), Refused> {
    // An IPv4-mapped address is the IPv4 address, for callpay's own addresses too.
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let special = classify(ip);
    let ours = [policy.own.listen, policy.own.metrics].into_iter().flatten().any(|a| {
        a.port() == addr.port()
            && (a.ip() == ip
                || (special == Some(Special::Loopback) && (a.ip().is_loopback() || a.ip().is_unspecified())))
    });
    match special {
        _ if ours => Err(Refused::Itself),
        None => Ok(()),
        Some(Special::Loopback) if policy.allow_loopback => Ok(()),
        Some(kind) => Err(Refused::Address(kind)),
    }
}

/// The stored endpoints `policy` refuses now, with why: an endpoint registered under older
/// rules (which accepted private and loopback receivers) stays stored, but every attempt to it
/// is refused. Listed so an operator hears of it at start rather than from failed deliveries.
pub async fn refused_endpoints(
    outbox: &dyn crate::store::outbox::Outbox,
    policy: &UrlPolicy,
) -> crate::store::StoreResult<Vec<(String, String, Refused)>> {
    let mut refused = Vec::new();
    for e in outbox.endpoints().await? {
        // A literal address or `localhost` is judged here; a name where it resolves, at each attempt.
        if let Err(why) = check_url(&e.url, policy) {
            refused.push((e.id, e.url, why));
        }
    }
    Ok(refused)
}

/// Logs an error for each stored endpoint [`refused_endpoints`] finds (run once when the
/// delivery worker starts).
pub async fn warn_refused_endpoints(outbox: std::sync::Arc<dyn crate::store::outbox::Outbox>, policy: UrlPolicy) {
    match refused_endpoints(outbox.as_ref(), &policy).await {
        Ok(refused) => {
            for (id, url, why) in refused {
                tracing::error!(endpoint = %id, url, reason = %why, code = why.code(),
                    "event endpoint refused by the address rules: its deliveries will fail until it points at a public address");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the event endpoints to check them"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> OwnAddresses {
        OwnAddresses {
            listen: Some("127.0.0.1:8080".parse().unwrap()),
            metrics: Some("127.0.0.1:9100".parse().unwrap()),
            public_url: Some("https://pay.example.com".into()),
        }
    }

    /// The default rules around [`own`]; loopback receivers allowed if `allow_loopback`.
    fn policy(allow_loopback: bool) -> UrlPolicy {
        UrlPolicy { own: own(), allow_http: false, allow_loopback }
    }

    #[test]
    fn each_bad_url_is_refused_for_its_reason() {
        let cases = [
            ("", Refused::Invalid),
            ("not a url", Refused::Invalid),
            ("/relative/path", Refused::Invalid),
            ("ftp://example.com/hook", Refused::Scheme),
            ("file:///etc/passwd", Refused::Scheme),
            ("javascript:alert(1)", Refused::Scheme),
            ("wss://example.com/hook", Refused::Scheme),
            ("https://user:pw@example.com/hook", Refused::Credentials),
            ("https://user@example.com/hook", Refused::Credentials),
            ("https://example.com/hook#frag", Refused::Fragment),
            ("http://example.com/hook", Refused::Insecure),
            ("https://example.com:0/hook", Refused::Invalid),
            ("http://127.0.0.1:8080/v1/stripe/webhook", Refused::Itself),
            ("http://localhost:8080/", Refused::Itself),
            ("http://[::1]:8080/", Refused::Itself),
            ("http://127.0.0.1:9100/metrics", Refused::Itself),
            ("https://pay.example.com/v1/x", Refused::Itself),
            ("https://PAY.example.com:443/v1/x", Refused::Itself),
            ("https://169.254.169.254/latest/meta-data", Refused::Address(Special::LinkLocal)),
            ("https://0.0.0.0/", Refused::Address(Special::Unspecified)),
            ("https://[fe80::1]/", Refused::Address(Special::LinkLocal)),
            ("https://224.0.0.1/", Refused::Address(Special::Multicast)),
            ("https://10.0.0.1/", Refused::Address(Special::Private)),
            ("http://127.0.0.1:9999/", Refused::Address(Special::Loopback)),
            ("http://localhost:9999/", Refused::Address(Special::Loopback)),
            // The address is the first thing wrong with it, not its scheme.
            ("http://169.254.169.254/", Refused::Address(Special::LinkLocal)),
        ];
        for (url, want) in cases {
            assert_eq!(check_url(url, &policy(false)).map(|u| u.to_string()), Err(want.clone()), "{url}");
        }
        assert_eq!(
            check_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_LEN)), &policy(false)),
            Err(Refused::Invalid)
        );
    }

    #[test]
    fn receivers_elsewhere_and_on_loopback_when_allowed_are_accepted() {
        for url in [
            "https://billing.example.com/callpay/events",
            "https://billing.example.com:8443/events?source=callpay",
            // callpay's public host on another port is another service.
            "https://pay.example.com:8443/events",
        ] {
            assert!(check_url(url, &policy(false)).is_ok(), "{url}");
        }
        for url in ["http://127.0.0.1:9999/events", "http://localhost:3000/events", "http://[::1]:9999/"] {
            assert!(check_url(url, &policy(true)).is_ok(), "{url}");
        }
        let http = UrlPolicy { allow_http: true, ..policy(false) };
        assert!(check_url("http://billing.internal/events", &http).is_ok(), "allow_http");
        // A hub listening on every interface is itself at any loopback address on its port.
        let any = UrlPolicy {
            own: OwnAddresses { listen: Some("0.0.0.0:8080".parse().unwrap()), ..OwnAddresses::default() },
            allow_loopback: true,
            ..UrlPolicy::default()
        };
        assert_eq!(check_url("http://127.0.0.2:8080/", &any), Err(Refused::Itself));
        assert_eq!(check_url("http://localhost:8080/", &any), Err(Refused::Itself));
        assert_eq!(check_address("[::ffff:127.0.0.1]:8080".parse().unwrap(), &policy(true)), Err(Refused::Itself));
        // One of its own (public) addresses is itself on its port, another service elsewhere.
        let public = UrlPolicy {
            own: OwnAddresses { listen: Some("203.0.113.7:8080".parse().unwrap()), ..OwnAddresses::default() },
            ..UrlPolicy::default()
        };
        assert_eq!(check_address("203.0.113.7:8080".parse().unwrap(), &public), Err(Refused::Itself));
        assert_eq!(check_address("[::ffff:203.0.113.7]:8080".parse().unwrap(), &public), Err(Refused::Itself));
        assert_eq!(check_address("203.0.113.7:8443".parse().unwrap(), &public), Ok(()));
    }

    #[tokio::test]
    async fn endpoints_stored_under_older_rules_are_listed_with_why() {
        use crate::store::outbox::{EventEndpoint, Outbox};
        let store = crate::store::SqlStore::connect("sqlite::memory:").await.unwrap();
        for (id, url) in [
            ("we_private", "https://10.0.0.7/hook"),
            ("we_loopback", "http://127.0.0.1:9000/hook"),
            ("we_public", "https://billing.example.com/hook"),
            ("we_public_ip", "https://8.8.8.8/hook"),
        ] {
            let e = EventEndpoint {
                id: id.into(),
                url: url.into(),
                secret: crate::config::Secret::new("whsec_test_0123456789abcdef"),
                description: String::new(),
                enabled: true,
                event_types: Vec::new(),
                created_by: "adm".into(),
                created_at: 1,
                updated_at: 1,
            };
            assert!(store.insert_endpoint(&e, 16).await.unwrap());
        }
        let mut refused = refused_endpoints(&store, &policy(false)).await.unwrap();
        refused.sort_by(|a, b| b.0.cmp(&a.0));
        let found: Vec<(&str, &str)> = refused.iter().map(|(id, _, why)| (id.as_str(), why.code())).collect();
        assert_eq!(found, [("we_private", "url_address_not_allowed"), ("we_loopback", "url_address_not_allowed")]);
        assert_eq!(refused[0].2, Refused::Address(Special::Private));
        // With loopback receivers allowed, only the private one is left.
        let refused = refused_endpoints(&store, &policy(true)).await.unwrap();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "we_private");
    }

    #[test]
    fn each_special_range_is_classified_as_its_kind() {
        let cases = [
            ("0.0.0.0", Special::Unspecified),
            ("::", Special::Unspecified),
            ("0.255.255.255", Special::ThisNetwork),
            ("127.0.0.1", Special::Loopback),
            ("127.255.255.255", Special::Loopback),
            ("::1", Special::Loopback),
            ("::ffff:127.0.0.1", Special::Loopback),
            ("10.0.0.0", Special::Private),
            ("172.16.0.0", Special::Private),
            ("172.31.255.255", Special::Private),
            ("192.168.255.255", Special::Private),
            ("::ffff:10.1.2.3", Special::Private),
            ("64:ff9b::c0a8:101", Special::Private),
            ("64:ff9b:1::c0a8:101", Special::Reserved),
            ("64:ff9b:1:abcd::808:808", Special::Reserved),
            ("::ffff:0:a00:1", Special::Private),
            ("198.18.0.0", Special::Reserved),
            ("198.19.255.255", Special::Reserved),
            ("192.0.0.8", Special::Reserved),
            ("2001:0:4136:e378::1", Special::Reserved),
            ("100::1", Special::Reserved),
            ("2002:ac10:1::", Special::Private),
            ("100.64.0.0", Special::SharedNat),
            ("100.127.255.255", Special::SharedNat),
            ("169.254.169.254", Special::LinkLocal),
            ("::ffff:169.254.169.254", Special::LinkLocal),
            ("fe80::1", Special::LinkLocal),
            ("febf:ffff::1", Special::LinkLocal),
            ("fc00::", Special::UniqueLocal),
            ("fdff:ffff::1", Special::UniqueLocal),
            ("fec0::1", Special::SiteLocal),
            ("224.0.0.0", Special::Multicast),
            ("239.255.255.255", Special::Multicast),
            ("ff02::1", Special::Multicast),
            ("ff0e::1", Special::Multicast),
            ("255.255.255.255", Special::Broadcast),
            ("240.0.0.1", Special::Reserved),
            ("::10.0.0.1", Special::Reserved),
            ("::8.8.8.8", Special::Reserved),
        ];
        for (ip, want) in cases {
            assert_eq!(classify(ip.parse().unwrap()), Some(want), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "fbff:ffff::1",
            "fe7f::1",
            "2001:db8::1",
            "198.17.255.255",
            "198.20.0.0",
            "192.0.1.1",
            "2001:4860::8888",
            "100:0:0:1::1",
        ] {
            assert_eq!(classify(ip.parse().unwrap()), None, "{ip}");
        }
    }

    /// The code a URL is refused with under the default rules, or with loopback receivers
    /// allowed; `None` if accepted.
    fn refusal(url: &str, allow_loopback: bool) -> Option<&'static str> {
        check_url(url, &policy(allow_loopback)).err().map(|r| r.code())
    }

    #[test]
    fn addresses_inside_networks_and_special_ranges_are_refused() {
        for url in [
            // Loopback, in every spelling the URL parser folds to it.
            "http://127.0.0.1:9999/events",
            "http://127.1.2.3:9/",
            "http://[::1]:9999/",
            "http://localhost:3000/events",
            "http://api.localhost/",
            "http://2130706433:9999/",
            "http://0x7f.1:9999/",
            "http://[::ffff:127.0.0.1]:9999/",
            // Private (RFC 1918), at each edge.
            "https://10.1.2.3/events",
            "https://10.255.255.255/",
            "https://172.16.0.1/",
            "https://172.31.255.255/",
            "https://192.168.1.1/",
            // Shared address space (carrier-grade NAT).
            "https://100.64.0.1/",
            "https://100.127.255.254/",
            // Link-local: the cloud metadata service, also in octal and as IPv6 forms of it.
            "https://169.254.169.254/latest/meta-data",
            "https://169.254.0.1/",
            "https://0251.0376.0251.0376/",
            "https://[::ffff:169.254.169.254]/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[2002:a9fe:a9fe::1]/",
            "https://[fe80::1]/",
            "https://[febf::1]/",
            // "This network", unspecified.
            "https://0.0.0.0/",
            "https://0.1.2.3/",
            "https://[::]/",
            // IPv6 unique local and the deprecated site-local; private IPv4 inside IPv6.
            "https://[fc00::1]/",
            "https://[fd12:3456:789a::1]/",
            "https://[fec0::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://[::ffff:192.168.0.1]/",
            "https://[64:ff9b::a00:1]/",
            "https://[2002:c0a8:1::]/",
            "https://[::a00:1]/",
            // Multicast, broadcast, reserved.
            "https://224.0.0.1/",
            "https://239.255.255.250/",
            "https://[ff02::1]/",
            "https://255.255.255.255/",
            "https://240.0.0.1/",
        ] {
            assert_eq!(refusal(url, false), Some("url_address_not_allowed"), "{url}");
        }
        // Allowing loopback receivers allows loopback, and nothing else.
        for url in ["https://10.1.2.3/", "https://169.254.169.254/", "https://[fd00::1]/", "https://100.64.0.1/"] {
            assert_eq!(refusal(url, true), Some("url_address_not_allowed"), "{url}");
        }
    }

    #[test]
    fn public_addresses_next_to_refused_ranges_are_accepted() {
        for url in [
            "https://93.184.215.14/events",
            "https://8.8.8.8/",
            "https://9.255.255.255/",
            "https://11.0.0.0/",
            "https://100.63.255.255/",
            "https://100.128.0.0/",
            "https://126.255.255.255/",
            "https://128.0.0.0/",
            "https://169.253.255.255/",
            "https://169.255.0.0/",
            "https://172.15.255.255/",
            "https://172.32.0.0/",
            "https://192.167.255.255/",
            "https://192.169.0.0/",
            "https://223.255.255.255/",
            "https://1.0.0.0/",
            "https://[2606:4700:4700::1111]/",
            "https://[::ffff:8.8.8.8]/",
            "https://[64:ff9b::808:808]/",
            "https://[2002:808:808::1]/",
            "https://[fbff::1]/",
            "https://[fe7f::1]/",
        ] {
            assert_eq!(refusal(url, false), None, "{url}");
        }
        for url in
            ["http://127.0.0.1:9999/", "http://localhost:3000/", "http://[::1]:9999/", "http://[::ffff:127.0.0.1]:9/"]
        {
            assert_eq!(refusal(url, true), None, "{url} with loopback receivers allowed");
        }
        // callpay itself stays refused, loopback receivers allowed or not.
        assert_eq!(refusal("http://127.0.0.1:8080/", true), Some("url_is_callpay"));
        assert_eq!(refusal("http://localhost:9100/metrics", true), Some("url_is_callpay"));
    }
}
