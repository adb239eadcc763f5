//! Queue depths for `/queues` and the queue gauges: ready messages and consumers from the
//! broker itself (a passive declare), unacknowledged messages from RabbitMQ's management
//! HTTP API, since AMQP has no way to ask for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use castwork_cluster::broker::QueueDepth;
use castwork_cluster::Broker;
use tracing::{info, warn};

use crate::{api, metrics, state};

/// The management API's default port for a plain-HTTP listener.
const MANAGEMENT_PORT: u16 = 15672;

/// The value of `--rabbitmq-management-url` that turns the management API off.
pub const OFF: &str = "off";

/// A client of RabbitMQ's management API, for one vhost's queues.
#[derive(Debug)]
pub struct Management {
    api: ManagementApi,
    /// `/api/queues/VHOST`.
    queues_path: String,
    /// Whether the last read failed (so a failure is logged once, not every 2 s).
    failing: AtomicBool,
}

impl Management {
    /// The client for the vhost of `amqp_url`. `management_url` is the API's base URL,
    /// `http://[USER:PASSWORD@]HOST:PORT`; unset, it is `http://HOST:15672` of the AMQP
    /// URL's host (of each node's, for a list of nodes), and missing credentials are the
    /// AMQP URL's. `off` turns it off (`None`).
    pub fn new(amqp_url: &str, management_url: Option<&str>) -> Result<Option<Self>, String> {
        if management_url == Some(OFF) {
            return Ok(None);
        }
        let api = ManagementApi::new(
            amqp_url,
            management_url,
            "--rabbitmq-management-url",
            Duration::from_secs(5),
        )?;
        Ok(Some(Management {
            queues_path: format!("api/queues/{}", api.vhost),
            api,
            failing: AtomicBool::new(false),
        }))
    }

    /// Where it reads from (no credentials), for logs.
    pub fn url(&self) -> String {
        format!(
            "{}/{}?columns=name,messages_unacknowledged",
            self.api.base(),
            self.queues_path
        )
    }

    /// Unacknowledged messages of every queue in the vhost whose statistics the broker has
    /// (they are sampled every 5 s by default: `collect_statistics_interval`).
    pub async fn unacked(&self) -> Result<HashMap<String, u32>, String> {
        let path = format!("{}?columns=name,messages_unacknowledged", self.queues_path);
        parse_unacked(&self.get(&path).await?)
    }

    /// The names of every queue in the vhost; `None` when the API could not tell.
    pub async fn queue_names(&self) -> Option<Vec<String>> {
        let path = format!("{}?columns=name", self.queues_path);
        let v: serde_json::Value = serde_json::from_str(&self.get(&path).await.ok()?).ok()?;
        v.as_array()?
            .iter()
            .map(|q| q["name"].as_str().map(String::from))
            .collect()
    }

    /// The body of a `GET path` on the management API, as this client's user.
    async fn get(&self, path: &str) -> Result<String, String> {
        let (code, body) = self.api.send(reqwest::Method::GET, path, None).await?;
        if !(200..300).contains(&code) {
            let hint = if code == 401 {
                ": the user needs the `monitoring` (or `management`) tag, or give \
                 --rabbitmq-management-url with a user that has it"
            } else {
                ""
            };
            return Err(format!("the management API answered {code}{hint}"));
        }
        Ok(body)
    }
}

/// Where RabbitMQ's management API is for a vhost, and who logs in to it.
#[derive(Debug)]
pub struct ManagementApi {
    /// `http(s)://HOST:PORT` of each node, without credentials or a trailing slash.
    bases: Vec<String>,
    pub user: String,
    pub password: String,
    /// The AMQP URL's vhost, encoded as one path segment.
    pub vhost: String,
    client: reqwest::Client,
    /// The node that answered last: asked first next time.
    answered: AtomicUsize,
}

impl ManagementApi {
    /// `management_url` is the API's base URL, `http://[USER:PASSWORD@]HOST:PORT` (or
    /// several, comma-separated, one per node); unset, it is `http://HOST:15672` of each
    /// AMQP URL's host, and missing credentials are the AMQP URL's. `flag` names the
    /// setting in errors; `timeout` bounds each request.
    pub fn new(
        amqp_url: &str,
        management_url: Option<&str>,
        flag: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        let nodes = castwork_cluster::broker::broker_urls(amqp_url);
        let amqp: Vec<lapin::uri::AMQPUri> = nodes
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot read the AMQP URL: {e}"))?;
        let first = amqp.first().ok_or("no AMQP URL given")?;
        let bases: Vec<String> = match management_url {
            Some(u) => u.split(',').map(|b| b.trim().to_string()).collect(),
            None => amqp
                .iter()
                .map(|a| format!("http://{}:{MANAGEMENT_PORT}", a.authority.host))
                .collect(),
        };
        let mut credentials = None;
        let mut clean = Vec::new();
        for base in bases {
            let mut url =
                reqwest::Url::parse(&base).map_err(|e| format!("{flag} {base:?}: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!(
                    "{flag} {base:?}: expected http://[USER:PASSWORD@]HOST:PORT"
                ));
            }
            if credentials.is_none() && !url.username().is_empty() {
                credentials = Some((
                    decode(url.username()),
                    decode(url.password().unwrap_or_default()),
                ));
            }
            let _ = url.set_username("");
            let _ = url.set_password(None);
            let base = url.as_str().trim_end_matches('/').to_string();
            if !clean.contains(&base) {
                clean.push(base);
            }
        }
        let (user, password) = credentials.unwrap_or_else(|| {
            (
                first.authority.userinfo.username.clone(),
                first.authority.userinfo.password.clone(),
            )
        });
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ManagementApi {
            bases: clean,
            user,
            password,
            vhost: encode_segment(&first.vhost),
            client,
            answered: AtomicUsize::new(0),
        })
    }

    /// The base URL asked first (the one that answered last).
    pub fn base(&self) -> &str {
        &self.bases[self.answered.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// `method BASE/path` as this API's user, on the first node that answers at all:
    /// the status code and body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, String), String> {
        let start = self.answered.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..self.bases.len() {
            let n = (start + i) % self.bases.len();
            let base = &self.bases[n];
            let mut req = self
                .client
                .request(method.clone(), format!("{base}/{path}"))
                .basic_auth(&self.user, Some(&self.password));
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    self.answered.store(n, Ordering::Relaxed);
                    let code = resp.status().as_u16();
                    let text = resp.text().await.map_err(|e| e.to_string())?;
                    return Ok((code, text));
                }
                Err(e) => failures.push(format!("{base}: {e}")),
            }
        }
        Err(format!(
            "cannot reach RabbitMQ's management API: {}",
            failures.join("; ")
        ))
    }
}

/// `{name: messages_unacknowledged}` from the management API's queue list; a queue
/// without statistics yet is left out.
fn parse_unacked(body: &str) -> Result<HashMap<String, u32>, String> {
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| format!("the management API's answer is not JSON: {e}"))?;
    let queues = v
        .as_array()
        .ok_or("the management API's answer is not a list of queues")?;
    Ok(queues
        .iter()
        .filter_map(|q| {
            let n = q["messages_unacknowledged"].as_u64()?;
            Some((q["name"].as_str()?.to_string(), u32::try_from(n).ok()?))
        })
        .collect())
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// A vhost as one URL path segment (`/` is `%2F`).
pub(crate) fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Reads every queue's depth into the API's snapshot and the queue gauges.
pub async fn read(
    broker: &Broker,
    management: Option<&Management>,
    queues: &std::sync::RwLock<Option<api::QueueSnapshot>>,
) {
    let mut depths = match broker.queue_depths().await {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "could not read the queue depths");
            return;
        }
    };
    let mut read_unacked = false;
    if let Some(m) = management {
        match m.unacked().await {
            Ok(unacked) => {
                read_unacked = true;
                if m.failing.swap(false, Ordering::Relaxed) {
                    info!(url = m.url(), "reading unacknowledged messages again");
                }
                for d in &mut depths {
                    d.unacked = unacked.get(&d.queue).copied();
                }
            }
            Err(e) => {
                if !m.failing.swap(true, Ordering::Relaxed) {
                    warn!(
                        url = m.url(),
                        error = e,
                        "cannot read unacknowledged messages: /queues shows them as unknown"
                    );
                }
            }
        }
    }
    set_gauges(&depths, read_unacked);
    if let Ok(mut q) = queues.write() {
        *q = Some(api::QueueSnapshot {
            as_of_unix_ms: state::now_unix_ms(),
            queues: depths,
        });
    }
}

/// Sets the queue gauges; `read_unacked` tells whether the management API answered (a
/// queue it has no statistics for yet, just declared, keeps its gauge).
fn set_gauges(depths: &[QueueDepth], read_unacked: bool) {
    for d in depths {
        let q = [d.queue.as_str()];
        metrics::QUEUE_MESSAGES
            .with_label_values(&q)
            .set(i64::from(d.messages));
        metrics::QUEUE_CONSUMERS
            .with_label_values(&q)
            .set(i64::from(d.consumers));
        // While the management API cannot be read the count is left out, never a
        // made-up 0.
        match d.unacked {
            Some(n) => metrics::QUEUE_UNACKED
                .with_label_values(&q)
                .set(i64::from(n)),
            None if !read_unacked => {
                let _ = metrics::QUEUE_UNACKED.remove_label_values(&q);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_is_the_amqp_host_with_its_credentials_and_vhost() {
        let m = Management::new("amqp://guest:p%40ss@rabbit:5672/%2f", None)
            .unwrap()
            .unwrap();
        assert_eq!(
            m.url(),
            "http://rabbit:15672/api/queues/%2F?columns=name,messages_unacknowledged"
        );
        assert_eq!(
            (m.api.user.as_str(), m.api.password.as_str()),
            ("guest", "p@ss")
        );
        let m = Management::new(
            "amqp://a:b@rabbit/castwork-test-1",
            Some("https://mon:s%3Acret@admin.example:443/"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            m.url(),
            "https://admin.example/api/queues/castwork-test-1?columns=name,messages_unacknowledged"
        );
        assert_eq!(
            (m.api.user.as_str(), m.api.password.as_str()),
            ("mon", "s:cret")
        );
        // A cluster: each node's API, asked in turn.
        let m = Management::new("amqp://a:b@n1/v,amqp://a:b@n2:5673/v", None)
            .unwrap()
            .unwrap();
        assert_eq!(m.api.bases, ["http://n1:15672", "http://n2:15672"]);
        assert!(Management::new("amqp://x/", Some(OFF)).unwrap().is_none());
        assert!(Management::new("amqp://x/", Some("ftp://x")).is_err());
    }

    #[test]
    fn reads_unacked_counts_and_leaves_out_queues_without_statistics() {
        let got = parse_unacked(
            r#"[{"name":"jobs.vod.cpu","messages_unacknowledged":3},
                {"name":"castwork.ingest"}]"#,
        )
        .unwrap();
        assert_eq!(got.get("jobs.vod.cpu"), Some(&3));
        assert_eq!(got.get("castwork.ingest"), None);
        assert!(parse_unacked("{\"error\":\"x\"}").is_err());
    }
}
