//! Who may publish a live stream, over RTMP or HTTP push: stream keys made with
//! `broadcaster keys add NAME` (stored hashed in Redis), an auth webhook as go-livepeer's
//! `-authWebhookUrl`, or nobody checked at all (`--open-ingest`, the explicit opt-out).

use std::net::SocketAddr;
use std::time::Duration;

use castwork_protocol::{
    profile::{parse_profiles, parse_transcoding_options},
    Profile,
};
use redis::aio::ConnectionManager;

/// Stream keys by their SHA-256 (hex) -> the stream name they publish.
const KEYS_HASH: &str = "cw:ingest_keys";
/// Stream names -> the SHA-256 of their key (so a name has one key, and a new one replaces
/// it).
const NAMES_HASH: &str = "cw:ingest_key_names";
/// Longest answer read from the auth webhook.
const MAX_WEBHOOK_ANSWER: usize = 64 * 1024;

/// How publishers are checked.
#[derive(Clone)]
pub enum IngestAuth {
    /// Every publisher is let in (`--open-ingest`).
    Open,
    /// The webhook at this URL decides.
    Webhook(String),
    /// A stream key from `broadcaster keys add` is needed.
    Keys(KeyStore),
}

impl std::fmt::Debug for IngestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IngestAuth::Open => f.write_str("open"),
            IngestAuth::Webhook(u) => write!(f, "webhook {u}"),
            IngestAuth::Keys(_) => f.write_str("stream keys"),
        }
    }
}

/// A publish to decide on.
#[derive(Debug, Clone)]
pub struct Publish<'a> {
    /// `rtmp` or `http`.
    pub via: &'static str,
    /// The key (RTMP) or the stream part of the push path (HTTP).
    pub key: &'a str,
    pub peer: Option<SocketAddr>,
}

/// What an allowed publish gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// The stream it publishes.
    pub stream: String,
    pub ladder: Vec<Profile>,
    /// HTTP push: what later segments of the stream must carry (the webhook's `streamKey`,
    /// when it gave one).
    pub push_token: Option<String>,
}

/// Why a publish is not allowed, in words for the publisher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The key is no stream key of `broadcaster keys`.
    #[error(
        "unknown stream key: publish with a key from `broadcaster keys add NAME` (the stream \
         NAME is played back under)"
    )]
    UnknownKey,
    /// The webhook said no or could not be asked, or the keys could not be read.
    #[error("{0}")]
    Refused(String),
}

impl IngestAuth {
    /// Decides on a publish: the grant, or why not (for the publisher).
    pub async fn check(
        &self,
        http: &reqwest::Client,
        req: &Publish<'_>,
        default_ladder: &[Profile],
    ) -> Result<Grant, Denied> {
        match self {
            IngestAuth::Open => Ok(Grant {
                stream: req.key.to_string(),
                ladder: default_ladder.to_vec(),
                push_token: None,
            }),
            IngestAuth::Webhook(url) => authorize(http, url, req, default_ladder)
                .await
                .map_err(Denied::Refused),
            IngestAuth::Keys(store) => match store.lookup(req.key).await {
                Ok(Some(stream)) => Ok(Grant {
                    stream,
                    ladder: default_ladder.to_vec(),
                    push_token: None,
                }),
                Ok(None) => Err(Denied::UnknownKey),
                Err(e) => Err(Denied::Refused(format!(
                    "cannot check the stream key now: {e}"
                ))),
            },
        }
    }

    /// Whether the push path names a key (which then authenticates every segment itself).
    pub fn keyed(&self) -> bool {
        matches!(self, IngestAuth::Keys(_))
    }

    /// Whether anyone may publish any stream (`--open-ingest`).
    pub fn open(&self) -> bool {
        matches!(self, IngestAuth::Open)
    }
}

/// Keys in Redis, stored as SHA-256 hashes (a stolen Redis dump gives no key), each
/// naming what it opens: stream keys name the stream they publish, API keys the account
/// whose jobs they make and read.
#[derive(Clone)]
pub struct KeyStore {
    redis: ConnectionManager,
    /// Hash of key hash -> name, and of name -> key hash.
    keys: &'static str,
    names: &'static str,
    /// What a key of this store starts with.
    prefix: &'static str,
}

fn key_hash(key: &str) -> String {
    castwork_protocol::secret::sha256_hex(key)
}

pub use castwork_protocol::secret::random_hex;

/// Makes `name` the only stream of key ARGV[1] (a hash), replacing the name's old key.
static ADD_KEY: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local old = redis.call('HGET', KEYS[2], ARGV[2])
if old then redis.call('HDEL', KEYS[1], old) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return old and 1 or 0
",
    )
});

/// Removes the key of stream ARGV[1]; 1 when it had one.
static REMOVE_KEY: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local old = redis.call('HGET', KEYS[2], ARGV[1])
if not old then return 0 end
redis.call('HDEL', KEYS[1], old)
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
",
    )
});

impl KeyStore {
    /// The stream keys.
    pub fn new(redis: ConnectionManager) -> Self {
        KeyStore {
            redis,
            keys: KEYS_HASH,
            names: NAMES_HASH,
            prefix: "cwk_",
        }
    }

    /// The API keys of `broadcaster serve`'s job API.
    pub fn api(redis: ConnectionManager) -> Self {
        KeyStore {
            redis,
            keys: "cw:api_keys",
            names: "cw:api_key_names",
            prefix: "cwa_",
        }
    }

    /// A new key for stream `name` (replacing its old one): printed once, stored hashed.
    /// Returns the key and whether an old one was replaced.
    pub async fn add(&self, name: &str) -> anyhow::Result<(String, bool)> {
        castwork_protocol::validate_stream_name(name).map_err(anyhow::Error::msg)?;
        let key = format!("{}{}", self.prefix, random_hex(20)?);
        let replaced: i64 = ADD_KEY
            .key(self.keys)
            .key(self.names)
            .arg(key_hash(&key))
            .arg(name)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok((key, replaced == 1))
    }

    /// Removes stream `name`'s key; false when it had none.
    pub async fn remove(&self, name: &str) -> redis::RedisResult<bool> {
        let r: i64 = REMOVE_KEY
            .key(self.keys)
            .key(self.names)
            .arg(name)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(r == 1)
    }

    /// The streams that have a key, sorted.
    pub async fn names(&self) -> redis::RedisResult<Vec<String>> {
        let mut v: Vec<String> = redis::cmd("HKEYS")
            .arg(self.names)
            .query_async(&mut self.redis.clone())
            .await?;
        v.sort();
        Ok(v)
    }

    /// The stream a key publishes, if it is a key.
    pub async fn lookup(&self, key: &str) -> redis::RedisResult<Option<String>> {
        if key.len() > 256 {
            return Ok(None);
        }
        redis::cmd("HGET")
            .arg(self.keys)
            .arg(key_hash(key))
            .query_async(&mut self.redis.clone())
            .await
    }
}

/// Asks the webhook at `url` about a publish, as go-livepeer's `-authWebhookUrl` does: it
/// POSTs `{"url": "rtmp://castwork/live/KEY" (or http://castwork/live/STREAM), "app",
/// "stream_key", "via", "peer"}`. A 2xx answer allows the publish; its JSON body may name
/// the stream (`"manifestID"`, or `"stream"`), the ladder (`"presets"`, a list or a
/// comma-separated string of preset names, and/or `"profiles"`, Livepeer
/// `transcodingOptions` profiles or a preset string) and, for HTTP push, the token later
/// segments must carry (`"streamKey"`). Any other answer, or no answer, refuses it.
pub async fn authorize(
    http: &reqwest::Client,
    url: &str,
    req: &Publish<'_>,
    default_ladder: &[Profile],
) -> Result<Grant, String> {
    let body = serde_json::json!({
        "url": format!("{}://castwork/live/{}", req.via, req.key),
        "app": "live",
        "stream_key": req.key,
        "via": req.via,
        "peer": req.peer.map(|p| p.to_string()),
    });
    let mut resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("the auth webhook is unreachable: {e}"))?;
    let status = resp.status();
    let bytes = crate::link::read_capped(&mut resp, MAX_WEBHOOK_ANSWER)
        .await
        .map_err(|e| format!("the auth webhook: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    if !status.is_success() {
        let why = text.trim();
        return Err(format!(
            "refused by the auth webhook ({status}){}",
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.chars().take(200).collect::<String>())
            }
        ));
    }
    let answer: serde_json::Value = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text)
            .map_err(|e| format!("the auth webhook's answer is not JSON: {e}"))?
    };
    grant_of(&answer, req.key, default_ladder)
}

/// The header go-livepeer's HTTP push reads a stream's settings from: the auth webhook's
/// answer, sent by the publisher itself.
pub const TRANSCODE_CONFIG_HEADER: &str = "Livepeer-Transcode-Configuration";

/// What a `Livepeer-Transcode-Configuration` header asks for: the stream (`manifestID`) and
/// the ladder (`presets` and/or `profiles`), each when it names one.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderConfig {
    pub stream: Option<String>,
    pub ladder: Option<Vec<Profile>>,
}

/// Reads a `Livepeer-Transcode-Configuration` header (JSON, as the auth webhook answers).
pub fn header_config(text: &str) -> Result<HeaderConfig, String> {
    if text.len() > MAX_WEBHOOK_ANSWER {
        return Err(format!("{TRANSCODE_CONFIG_HEADER} is over 64 KiB"));
    }
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("{TRANSCODE_CONFIG_HEADER} is not JSON: {e}"))?;
    if !v.is_object() {
        return Err(format!("{TRANSCODE_CONFIG_HEADER} must be a JSON object"));
    }
    let g = grant_of(&v, "", &[]).map_err(|e| e.replace("the auth webhook's", "its"))?;
    Ok(HeaderConfig {
        stream: (!g.stream.is_empty()).then_some(g.stream),
        ladder: (!g.ladder.is_empty()).then_some(g.ladder),
    })
}

/// Applies a publisher's `Livepeer-Transcode-Configuration` to what its credentials granted,
/// as go-livepeer does, without letting it widen them: the header may name the stream only
/// where the publisher names it anyway (open ingest, `open`), and may choose the ladder only
/// where the grant left the default one (`default_ladder`); a header that disagrees with
/// what a key or the webhook granted is refused.
pub fn apply_header(
    grant: &mut Grant,
    header: &HeaderConfig,
    open: bool,
    default_ladder: &[Profile],
) -> Result<(), String> {
    if let Some(s) = &header.stream {
        if *s != grant.stream {
            if !open {
                return Err(format!(
                    "{TRANSCODE_CONFIG_HEADER} names stream {s}, but this publisher may publish \
                     {} only",
                    grant.stream
                ));
            }
            grant.stream = s.clone();
        }
    }
    if let Some(ladder) = &header.ladder {
        if grant.ladder == default_ladder {
            grant.ladder = ladder.clone();
        } else if *ladder != grant.ladder {
            return Err(format!(
                "{TRANSCODE_CONFIG_HEADER} asks for another ladder than the auth webhook gave"
            ));
        }
    }
    Ok(())
}

/// The grant a webhook's answer gives (see [`authorize`]).
pub fn grant_of(
    answer: &serde_json::Value,
    key: &str,
    default_ladder: &[Profile],
) -> Result<Grant, String> {
    let text_field = |name: &str| -> Result<Option<String>, String> {
        match answer.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(v) => Err(format!(
                "the auth webhook's {name} must be a non-empty string, not {v}"
            )),
        }
    };
    let stream = match text_field("manifestID")? {
        Some(s) => s,
        None => text_field("stream")?.unwrap_or_else(|| key.to_string()),
    };
    let mut ladder = Vec::new();
    match answer.get("presets") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(s)) => ladder
            .extend(parse_profiles(s).map_err(|e| format!("the auth webhook's presets: {e}"))?),
        Some(serde_json::Value::Array(names)) => {
            let names: Option<Vec<&str>> = names.iter().map(|n| n.as_str()).collect();
            let names = names.ok_or("the auth webhook's presets must be preset names")?;
            ladder.extend(
                parse_profiles(&names.join(","))
                    .map_err(|e| format!("the auth webhook's presets: {e}"))?,
            );
        }
        Some(v) => return Err(format!("the auth webhook's presets: unexpected {v}")),
    }
    match answer.get("profiles") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(s)) => ladder
            .extend(parse_profiles(s).map_err(|e| format!("the auth webhook's profiles: {e}"))?),
        Some(v) => ladder.extend(
            parse_transcoding_options(&v.to_string())
                .map_err(|e| format!("the auth webhook's profiles: {e}"))?,
        ),
    }
    if ladder.is_empty() {
        ladder = default_ladder.to_vec();
    }
    Ok(Grant {
        stream,
        ladder,
        push_token: text_field("streamKey")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_transcode_configuration_header_cannot_widen_a_grant() {
        let default = default();
        let h = header_config(
            r#"{"manifestID": "other", "presets": ["P240p30fps16x9"], "sessionID": "s"}"#,
        )
        .unwrap();
        assert_eq!(h.stream.as_deref(), Some("other"));
        // Open ingest: the publisher names the stream anyway, and picks the ladder.
        let mut g = grant_of(&json!({}), "path", &default).unwrap();
        apply_header(&mut g, &h, true, &default).unwrap();
        assert_eq!(
            (g.stream.as_str(), g.ladder[0].name.as_str()),
            ("other", "P240p30fps16x9")
        );
        // A key or the webhook granted "path": the header cannot publish another stream.
        let mut g = grant_of(&json!({}), "path", &default).unwrap();
        let e = apply_header(&mut g, &h, false, &default).unwrap_err();
        assert!(e.contains("names stream other"), "{e}");
        // The same stream, and the ladder the webhook left at the default: taken.
        let same = header_config(r#"{"manifestID": "path", "presets": "P240p30fps16x9"}"#).unwrap();
        apply_header(&mut g, &same, false, &default).unwrap();
        assert_eq!(g.ladder[0].name, "P240p30fps16x9");
        // A ladder the webhook chose is not replaced by another.
        let mut g = grant_of(&json!({"presets": "P144p30fps16x9"}), "path", &default).unwrap();
        assert!(apply_header(&mut g, &same, false, &default).is_err());
        assert!(header_config("[1]").is_err());
        assert!(header_config(&"x".repeat(70_000)).is_err());
    }

    fn default() -> Vec<Profile> {
        parse_profiles("P360p30fps16x9").unwrap()
    }

    #[test]
    fn go_livepeer_answer_fields_are_honoured() {
        let g = grant_of(
            &json!({"manifestID": "m1", "streamKey": "sk", "presets": ["P240p30fps16x9"],
                    "profiles": [{"name": "x", "width": 320, "height": 180, "bitrate": 200000, "fps": 30}]}),
            "key",
            &default(),
        )
        .unwrap();
        assert_eq!(g.stream, "m1");
        assert_eq!(g.push_token.as_deref(), Some("sk"));
        assert_eq!(g.ladder.len(), 2, "presets and profiles both count");
        assert_eq!(g.ladder[0].name, "P240p30fps16x9");
        assert_eq!(g.ladder[1].name, "x");
    }

    #[test]
    fn an_empty_answer_keeps_the_key_and_the_default_ladder() {
        let g = grant_of(&serde_json::Value::Null, "k", &default()).unwrap();
        assert_eq!(g.stream, "k");
        assert_eq!(g.ladder, default());
        assert_eq!(g.push_token, None);
        let g = grant_of(&json!({"presets": "P240p30fps16x9"}), "k", &default()).unwrap();
        assert_eq!(g.ladder[0].name, "P240p30fps16x9");
    }

    #[test]
    fn bad_answers_are_refused_with_a_reason() {
        assert!(grant_of(&json!({"presets": ["nope"]}), "k", &default()).is_err());
        assert!(grant_of(&json!({"presets": [1]}), "k", &default()).is_err());
        assert!(grant_of(&json!({"manifestID": 7}), "k", &default()).is_err());
        assert!(grant_of(&json!({"streamKey": ""}), "k", &default()).is_err());
    }
}
