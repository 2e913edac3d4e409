//! The loopback guard: the load generator only ever talks to this machine.
//!
//! Every URL it is given or told to follow (the target, upload `Location`s, redirects)
//! passes [`check_loopback`] first: the host must be `localhost`, an address in
//! 127.0.0.0/8 or `::1`. Anything else is refused with an error that says so.

use reqwest::Url;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The host of `url` if it is a loopback one.
fn loopback_host(url: &Url) -> Option<&str> {
    let host = url.host_str()?;
    if host.eq_ignore_ascii_case("localhost") {
        return Some(host);
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>().ok()? {
        IpAddr::V4(ip) if ip.is_loopback() => Some(host),
        IpAddr::V6(ip) if ip.is_loopback() => Some(host),
        _ => None,
    }
}

/// Accepts `url` only if it is http(s) to a loopback host.
pub fn check_loopback(url: &Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "refusing {url}: scheme {:?} is not http or https",
            url.scheme()
        ));
    }
    match loopback_host(url) {
        Some(_) => Ok(()),
        None => Err(format!(
            "refusing {url}: the load generator only drives registries on this machine \
             (the host must be localhost, an address in 127.0.0.0/8, or ::1)"
        )),
    }
}

/// For `localhost`, the address to connect to, pinned so that a resolver that maps
/// `localhost` elsewhere cannot send traffic off the machine.
pub fn pinned_localhost(url: &Url) -> Option<(String, SocketAddr)> {
    let host = url.host_str()?;
    if !host.eq_ignore_ascii_case("localhost") {
        return None;
    }
    let port = url.port_or_known_default()?;
    Some((
        host.to_string(),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
    ))
}

/// Parses a target URL (the registry root) and checks it.
pub fn parse_target(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("invalid --url {raw:?}: {e}"))?;
    check_loopback(&url)?;
    if url.path() != "/" || url.query().is_some() {
        return Err(format!(
            "--url {raw:?} must be the registry root (scheme://host:port), without a path"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        for ok in [
            "http://127.0.0.1:5000/",
            "https://127.1.2.3/",
            "http://localhost:1/",
            "http://LOCALHOST/",
            "https://[::1]:443/",
        ] {
            assert!(parse_target(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:5000/",
            "http://192.168.1.1/",
            "http://example.com/",
            "http://localhost.example.com/",
            "http://[::ffff:10.0.0.1]/",
            "http://[fe80::1]/",
            "ftp://127.0.0.1/",
            "http://0.0.0.0:5000/",
        ] {
            let err = parse_target(bad).unwrap_err();
            assert!(err.contains("refusing"), "{bad}: {err}");
        }
        assert!(parse_target("http://127.0.0.1:5000/v2/").is_err());
    }
}
