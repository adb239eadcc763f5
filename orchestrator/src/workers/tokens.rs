//! Signed, expiring object URLs for workers: a job carries one URL to read its source
//! segment and one to write its renditions, each good for that job's objects alone and
//! until it expires. They are signed with the secret job ids are keyed with (shared by an
//! orchestrator's replicas through Redis), so any replica can check them.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Grant {
    /// Read this source segment.
    Source { key: String },
    /// Write renditions of this attempt of this segment.
    Renditions {
        stream: String,
        seq: u64,
        attempt: u32,
    },
}

#[derive(Serialize, Deserialize)]
struct Signed {
    #[serde(flatten)]
    grant: Grant,
    /// Unix seconds after which the token is refused.
    exp: u64,
}

/// Signs and checks object tokens.
#[derive(Clone)]
pub struct Tokens {
    key: Vec<u8>,
}

/// Why a token was refused (what the worker is told).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the object token is malformed")]
    Malformed,
    #[error("the object token's signature is wrong")]
    Forged,
    #[error("the object token expired")]
    Expired,
}

impl Tokens {
    pub fn new(key: Vec<u8>) -> Self {
        Tokens { key }
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        // Apart from job ids, which are keyed with the same secret.
        mac.update(b"castwork object token\0");
        mac.update(payload);
        mac
    }

    /// A token for `grant` until `exp` (Unix seconds): hex of its JSON, a dot, hex of its
    /// HMAC-SHA-256.
    pub fn sign(&self, grant: Grant, exp: u64) -> String {
        let payload = serde_json::to_vec(&Signed { grant, exp }).unwrap_or_default();
        let tag = self.mac(&payload).finalize().into_bytes();
        format!("{}.{}", hex::encode(&payload), hex::encode(tag))
    }

    /// What `token` allows, if it is ours and unexpired at `now` (Unix seconds).
    pub fn check(&self, token: &str, now: u64) -> Result<Grant, TokenError> {
        // A grant is a few hundred bytes; anything far longer is not one.
        if token.len() > 4096 {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        // One spelling per token: `hex::decode` also takes upper case, and a URL that
        // differs from the one we signed must not open anything.
        if token.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(TokenError::Malformed);
        }
        let payload = hex::decode(payload).map_err(|_| TokenError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| TokenError::Malformed)?;
        self.mac(&payload)
            .verify_slice(&tag)
            .map_err(|_| TokenError::Forged)?;
        let signed: Signed = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if now > signed.exp {
            return Err(TokenError::Expired);
        }
        Ok(signed.grant)
    }
}

/// How long an on-demand job's object URLs are good for: long enough for a job to wait
/// its turn behind a large backlog; a worker that finds them expired fails the attempt
/// (transient), and the retry gets new ones.
pub const VOD_URL_SECS: u64 = 6 * 3600;
/// How long a live job's URLs outlive its deadline.
pub const LIVE_URL_GRACE_SECS: u64 = 60;

/// Makes the object URLs of jobs: under BASE/work/ on this orchestrator's HTTP.
#[derive(Clone)]
pub struct WorkUrls {
    pub tokens: Tokens,
    /// What workers reach this orchestrator's `/work/` routes at (`--work-url`).
    pub base: String,
}

impl WorkUrls {
    /// The URLs of one attempt of a segment, valid until `exp` (Unix seconds).
    pub fn job_objects(
        &self,
        stream: &str,
        seq: u64,
        attempt: u32,
        source_key: &str,
        exp: u64,
    ) -> castwork_protocol::JobObjects {
        let base = self.base.trim_end_matches('/');
        let source = self.tokens.sign(
            Grant::Source {
                key: source_key.to_string(),
            },
            exp,
        );
        let upload = self.tokens.sign(
            Grant::Renditions {
                stream: stream.to_string(),
                seq,
                attempt,
            },
            exp,
        );
        castwork_protocol::JobObjects {
            source_url: format!("{base}/work/source?t={source}"),
            upload_url: format!("{base}/work/rendition?t={upload}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renditions() -> Grant {
        Grant::Renditions {
            stream: "s".into(),
            seq: 3,
            attempt: 1,
        }
    }

    #[test]
    fn a_token_allows_what_it_was_signed_for_until_it_expires() {
        let t = Tokens::new(b"k".to_vec());
        let token = t.sign(renditions(), 100);
        assert_eq!(t.check(&token, 100), Ok(renditions()));
        assert_eq!(t.check(&token, 101), Err(TokenError::Expired));
        assert_eq!(
            Tokens::new(b"other".to_vec()).check(&token, 0),
            Err(TokenError::Forged)
        );
    }

    #[test]
    fn a_changed_grant_or_garbage_is_refused() {
        let t = Tokens::new(b"k".to_vec());
        let token = t.sign(renditions(), 100);
        let (_, tag) = token.split_once('.').unwrap();
        // Another attempt's grant under this one's signature.
        let other = serde_json::to_vec(&Signed {
            grant: Grant::Renditions {
                stream: "s".into(),
                seq: 3,
                attempt: 2,
            },
            exp: 100,
        })
        .unwrap();
        let forged = format!("{}.{tag}", hex::encode(other));
        assert_eq!(t.check(&forged, 0), Err(TokenError::Forged));
        // The same bytes spelt in upper case: not the URL we handed out.
        assert_eq!(
            t.check(&token.to_ascii_uppercase(), 0),
            Err(TokenError::Malformed)
        );
        for junk in ["", ".", "zz.zz", "00.00", &"a".repeat(10_000)] {
            assert!(t.check(junk, 0).is_err(), "{junk}");
        }
    }
}
