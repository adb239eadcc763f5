//! Fetching a job's input URL without letting the API read this machine's own services: only
//! `http(s)`, the host resolved once here and connected to at that address (so a second,
//! different DNS answer cannot point the download elsewhere), no address that is loopback,
//! private, link-local or otherwise not public unless the operator allows it, no redirects,
//! and the download bounded in size and time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

/// The limits of one fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
    /// Also fetch from loopback, private and link-local addresses (a test, or an operator
    /// whose inputs are on its own network).
    pub allow_private: bool,
}

/// Whether `ip` is an address on the public internet: not loopback, private, link-local,
/// shared (carrier NAT), documentation, multicast, broadcast or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => public_v4(v4),
            None => public_v6(v6),
        },
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || a >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || first == 0x2001 && ip.segments()[1] == 0x0db8
        || first == 0x0064 && ip.segments()[1] == 0xff9b)
}

/// A client that reaches `url`'s host only at an address checked here (public, unless
/// `allow_private`), follows no redirect and gives up after `timeout`; and the URL parsed.
pub async fn checked_client(
    url: &str,
    allow_private: bool,
    timeout: Duration,
) -> Result<(reqwest::Client, reqwest::Url), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("only http:// and https:// URLs".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL are not accepted".into());
    }
    let host = parsed.host_str().ok_or("the URL has no host")?.to_string();
    let port = parsed
        .port_or_known_default()
        .ok_or("the URL has no port")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::lookup_host((bare, port)),
        )
        .await
        .map_err(|_| format!("{host} did not resolve in 10 s"))?
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect(),
    };
    let addr = addrs
        .iter()
        .copied()
        .find(|a| allow_private || is_public(a.ip()))
        .ok_or_else(|| {
            format!(
                "{host} is not on the public internet ({}): refused",
                addrs
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(bare, addr)
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    Ok((client, parsed))
}

/// Downloads `url` to `dest` within `limits`; the error says what was refused, in words for
/// the API's caller.
pub async fn fetch(url: &str, dest: &Path, limits: FetchLimits) -> Result<u64, String> {
    let (client, parsed) = checked_client(url, limits.allow_private, limits.timeout)
        .await
        .map_err(|e| format!("input: {e}"))?;
    let mut resp = client
        .get(parsed.clone())
        .send()
        .await
        .map_err(|e| format!("input: fetching {url}: {e}"))?;
    let status = resp.status();
    if status.is_redirection() {
        return Err(format!(
            "input: {url} answered {status} (a redirect): give the final URL"
        ));
    }
    if !status.is_success() {
        return Err(format!("input: {url} answered {status}"));
    }
    if resp.content_length().is_some_and(|n| n > limits.max_bytes) {
        return Err(format!(
            "input: larger than the {} MiB a job may fetch",
            limits.max_bytes >> 20
        ));
    }
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| format!("storing the input: {e}"))?;
    let mut size = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("input: reading {url}: {e}"))?
    {
        size += chunk.len() as u64;
        if size > limits.max_bytes {
            return Err(format!(
                "input: larger than the {} MiB a job may fetch",
                limits.max_bytes >> 20
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("storing the input: {e}"))?;
    }
    file.flush()
        .await
        .map_err(|e| format!("storing the input: {e}"))?;
    if size == 0 {
        return Err(format!("input: {url} is empty"));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn the_machines_own_services_and_other_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("in");
        let strict = FetchLimits {
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(5),
            allow_private: false,
        };
        for (url, why) in [
            ("http://127.0.0.1:6379/", "not on the public internet"),
            (
                "http://localhost:15672/api/users",
                "not on the public internet",
            ),
            ("http://[::1]/", "not on the public internet"),
            (
                "http://169.254.169.254/latest/meta-data/",
                "not on the public internet",
            ),
            ("file:///etc/passwd", "only http:// and https://"),
            ("gopher://example.com/", "only http:// and https://"),
            ("http://user:pw@example.com/", "credentials"),
        ] {
            let e = fetch(url, &dest, strict).await.unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
        assert!(!dest.exists());
    }
}
