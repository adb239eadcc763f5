//! The auth webhook asked about every RTMP publish, as go-livepeer's `-authWebhookUrl`.

use std::time::Duration;

use castwork_protocol::{
    profile::{parse_profiles, parse_transcoding_options},
    Profile,
};

use crate::rtmp::PublishRequest;

/// Asks the webhook at `url` about an RTMP publish, as go-livepeer's `-authWebhookUrl`
/// does: it POSTs `{"url": "rtmp://HOST/APP/KEY", "app": ..., "stream_key": ..., "peer": ...}`.
/// A 2xx answer allows the publish; its JSON body may name the stream (`"stream"` or
/// `"manifestID"`) and the ladder (`"profiles"`: a comma-separated preset list or Livepeer
/// `transcodingOptions` profiles). Any other answer, or no answer, refuses it.
pub async fn authorize(
    http: &reqwest::Client,
    url: &str,
    req: &PublishRequest,
    default_ladder: &[Profile],
) -> Result<(String, Vec<Profile>), String> {
    let body = serde_json::json!({
        "url": format!("rtmp://castwork/{}/{}", req.app, req.key),
        "app": req.app,
        "stream_key": req.key,
        "peer": req.peer.to_string(),
    });
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("the auth webhook is unreachable: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
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
    let name = answer
        .get("stream")
        .or_else(|| answer.get("manifestID"))
        .and_then(|v| v.as_str())
        .unwrap_or(&req.key)
        .to_string();
    let ladder = match answer.get("profiles") {
        None | Some(serde_json::Value::Null) => default_ladder.to_vec(),
        Some(serde_json::Value::String(s)) => {
            parse_profiles(s).map_err(|e| format!("the auth webhook's profiles: {e}"))?
        }
        Some(v) => parse_transcoding_options(&v.to_string())
            .map_err(|e| format!("the auth webhook's profiles: {e}"))?,
    };
    Ok((name, ladder))
}
