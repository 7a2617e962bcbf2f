//! What an endpoint URL may be. Pure: the operator's URL and callpay's own addresses in, a
//! parsed URL or the reason it is refused out. The same address rules apply again at send time
//! to what the URL's host resolves to ([`refused_address`]).

use std::net::{IpAddr, SocketAddr};
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
    /// An address no receiver has: unspecified, link-local (cloud metadata services),
    /// multicast or broadcast.
    #[error("the URL's address is unspecified, link-local, multicast or broadcast")]
    Address,
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
            Refused::Address => "url_address_not_allowed",
        }
    }
}

/// `raw` as an endpoint URL, or why not.
pub fn check_url(raw: &str, own: &OwnAddresses, allow_http: bool) -> Result<Url, Refused> {
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
    let localhost = matches!(host, Host::Domain(d) if is_localhost(d));
    if url.scheme() == "http" && !allow_http && !localhost && !ip.is_some_and(|ip| ip.is_loopback()) {
        return Err(Refused::Insecure);
    }
    if let Some(ip) = ip {
        refused_address(SocketAddr::new(ip, port), own)?;
    }
    if localhost && own.listens_on_loopback(port) {
        return Err(Refused::Itself);
    }
    if let Some(public) = own.public_url.as_deref().and_then(|p| Url::parse(p).ok())
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

/// Whether `addr` (a literal in the URL, or what its host resolved to) may receive events.
pub fn refused_address(addr: SocketAddr, own: &OwnAddresses) -> Result<(), Refused> {
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let bad = match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if bad {
        return Err(Refused::Address);
    }
    let ours = [own.listen, own.metrics].into_iter().flatten().any(|a| {
        a.port() == addr.port()
            && (a.ip() == ip || (ip.is_loopback() && (a.ip().is_loopback() || a.ip().is_unspecified())))
    });
    if ours { Err(Refused::Itself) } else { Ok(()) }
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
            ("https://169.254.169.254/latest/meta-data", Refused::Address),
            ("https://0.0.0.0/", Refused::Address),
            ("https://[fe80::1]/", Refused::Address),
            ("https://224.0.0.1/", Refused::Address),
        ];
        for (url, want) in cases {
            assert_eq!(check_url(url, &own(), false).map(|u| u.to_string()), Err(want.clone()), "{url}");
        }
        assert_eq!(
            check_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_LEN)), &own(), false),
            Err(Refused::Invalid)
        );
    }

    #[test]
    fn receivers_elsewhere_and_on_loopback_are_accepted() {
        for url in [
            "https://billing.example.com/callpay/events",
            "https://billing.example.com:8443/events?source=callpay",
            "http://127.0.0.1:9999/events",
            "http://localhost:3000/events",
            "http://[::1]:9999/",
            "https://10.1.2.3/events",
            // callpay's public host on another port is another service.
            "https://pay.example.com:8443/events",
        ] {
            assert!(check_url(url, &own(), false).is_ok(), "{url}");
        }
        assert!(check_url("http://billing.internal/events", &own(), true).is_ok(), "allow_http");
        // A hub listening on every interface is itself at any loopback address on its port.
        let any = OwnAddresses { listen: Some("0.0.0.0:8080".parse().unwrap()), ..OwnAddresses::default() };
        assert_eq!(check_url("http://127.0.0.2:8080/", &any, false), Err(Refused::Itself));
        assert!(refused_address("[::ffff:127.0.0.1]:8080".parse().unwrap(), &own()).is_err());
        assert!(refused_address("10.0.0.5:8080".parse().unwrap(), &own()).is_ok());
    }
}
