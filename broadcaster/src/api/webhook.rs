//! A job's webhook: when the job ends, its record is POSTed to the URL it named, signed so
//! the receiver can tell it came from this server and was not changed:
//! `Castwork-Signature: t=UNIX_SECONDS,v1=HEX`, where HEX is HMAC-SHA-256 over
//! `UNIX_SECONDS.BODY` keyed by the SHA-256 (hex) of the account's API key, which the
//! account can compute and this server stores (never the key itself). A delivery that gets
//! no 2xx is tried again with backoff, [`TRIES`] times in all; the URL is held to the same
//! address rules as inputs.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::fetch::checked_client;

/// Deliveries tried before giving up.
pub const TRIES: u32 = 5;

/// The signature header's value for `body` sent at `t` (Unix seconds).
pub fn signature(signing_key: &str, t: u64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(signing_key.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers `body` to `url`, retrying with backoff (1, 2, 4, 8 s); what happened, in words.
pub async fn deliver(url: &str, body: &str, signing_key: &str, allow_private: bool) -> String {
    let mut last = String::new();
    for attempt in 0..TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        let (client, parsed) =
            match checked_client(url, allow_private, Duration::from_secs(10)).await {
                Ok(c) => c,
                // The address rules do not change between tries.
                Err(e) => return format!("not delivered: {e}"),
            };
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let sent = client
            .post(parsed)
            .header("content-type", "application/json")
            .header("castwork-signature", signature(signing_key, t, body))
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                return format!("delivered ({} tries)", attempt + 1)
            }
            Ok(r) => last = format!("answered {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tracing::warn!(
            url,
            attempt = attempt + 1,
            error = last,
            "job webhook not delivered"
        );
    }
    format!("not delivered after {TRIES} tries: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_time_and_the_body() {
        let s = signature("k", 1700000000, "{}");
        assert!(s.starts_with("t=1700000000,v1="), "{s}");
        assert_eq!(s.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(s, signature("k", 1700000001, "{}"));
        assert_ne!(s, signature("k", 1700000000, "{ }"));
        assert_ne!(s, signature("other", 1700000000, "{}"));
    }
}
