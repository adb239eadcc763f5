//! The broadcaster's link to an orchestrator over HTTP (its `/ingest/...` API): what a
//! broadcaster on another machine uses with the orchestrator's URL and a broadcaster key,
//! holding no broker or object-store credentials. Requests that fail for a reason a retry
//! can fix (no answer, 5xx) are sent again with backoff for [`RETRY_FOR`]; every ingest
//! message is idempotent, and a source segment is stored under a key its sequence number
//! gives, so a repeat does no harm.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use castwork_cluster::Backoff;
use castwork_protocol::{encode, IngestMessage, ObjectRef, StreamEvent};
use reqwest::{Method, StatusCode};
use uuid::Uuid;

/// How long a request keeps being retried while the orchestrator does not answer, when the
/// push has nowhere else to go.
pub const RETRY_FOR: Duration = Duration::from_secs(300);
/// How long one poll for events waits at the orchestrator (its most is 20 s).
const POLL_SECS: u64 = 15;
/// The most an orchestrator's answer may be (a page of events is far less).
const MAX_ANSWER: usize = 8 << 20;
/// The most a rendition it serves may be.
const MAX_RENDITION: usize = 256 << 20;
/// The header that carries the push's publisher secret.
const SECRET_HEADER: &str = "x-castwork-secret";

pub struct HttpLink {
    base: String,
    key: String,
    secret: String,
    session: Uuid,
    /// How long a request is retried before the push gives up on this orchestrator.
    retry_for: Duration,
    client: reqwest::Client,
    /// Events received and not yet handed out.
    pending: VecDeque<StreamEvent>,
    /// How many of the session's events were received.
    after: u64,
}

impl HttpLink {
    pub fn new(
        base: &str,
        key: &str,
        session: Uuid,
        retry_for: Duration,
    ) -> anyhow::Result<HttpLink> {
        Ok(HttpLink {
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
            secret: crate::live::auth::random_hex(16)
                .context("making the stream's publisher secret")?,
            session,
            retry_for,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(POLL_SECS + 30))
                .connect_timeout(Duration::from_secs(10))
                .build()?,
            pending: VecDeque::new(),
            after: 0,
        })
    }

    /// Sends one request (again, while a retry can help), and answers its body (at most
    /// `cap` bytes).
    async fn request(
        &self,
        (method, path): (Method, &str),
        body: Option<Bytes>,
        what: &str,
        cap: usize,
    ) -> anyhow::Result<Bytes> {
        let url = format!("{}{path}", self.base);
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Backoff::default();
        loop {
            let mut req = self
                .client
                .request(method.clone(), &url)
                .bearer_auth(&self.key)
                .header(SECRET_HEADER, &self.secret);
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let why = match req.send().await {
                Ok(mut resp) => {
                    let status = resp.status();
                    let text = super::read_capped(&mut resp, cap).await.map_err(|e| {
                        anyhow::anyhow!("{what}: the orchestrator at {}: {e}", self.base)
                    })?;
                    if status.is_success() {
                        return Ok(Bytes::from(text));
                    }
                    let message = serde_json::from_slice::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_string))
                        .unwrap_or_else(|| String::from_utf8_lossy(&text).into_owned());
                    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                        bail!(
                            "{what}: the orchestrator at {} answered {status}: {message}",
                            self.base
                        );
                    }
                    format!("{status}: {message}")
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!(
                    "{what}: the orchestrator at {} stayed unreachable for {} s: {why}",
                    self.base,
                    self.retry_for.as_secs()
                );
            }
            tracing::warn!(
                orchestrator = self.base,
                error = why,
                "{what}: trying again"
            );
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    pub async fn publish(&mut self, msg: &IngestMessage) -> anyhow::Result<()> {
        let body = encode(&msg.clone().with_secret(&self.secret));
        self.request(
            (Method::POST, "/ingest/messages"),
            Some(Bytes::from(body)),
            "sending an ingest message",
            MAX_ANSWER,
        )
        .await
        .map(|_| ())
    }

    /// Stores source segment `seq` at the orchestrator and answers its object, checked
    /// against the bytes sent.
    pub async fn store_source(
        &mut self,
        seq: u64,
        ext: &str,
        data: Bytes,
    ) -> anyhow::Result<ObjectRef> {
        let (size, sha256) = (
            data.len() as u64,
            castwork_protocol::secret::sha256_hex(&data),
        );
        let path = format!("/ingest/source/{}/{seq}.{ext}", self.session);
        let body = self
            .request(
                (Method::PUT, &path),
                Some(data),
                &format!("storing segment {seq}"),
                MAX_ANSWER,
            )
            .await?;
        let object: ObjectRef = serde_json::from_slice(&body).with_context(|| {
            format!("the orchestrator's answer to segment {seq} is not an object")
        })?;
        if object.size != size || object.sha256 != sha256 {
            bail!("the orchestrator stored segment {seq} as something other than what was sent");
        }
        Ok(object)
    }

    async fn poll(&mut self, wait_secs: u64) -> anyhow::Result<()> {
        let path = format!(
            "/ingest/events/{}?after={}&wait={wait_secs}",
            self.session, self.after
        );
        let body = self
            .request(
                (Method::GET, &path),
                None,
                "reading the stream's events",
                MAX_ANSWER,
            )
            .await?;
        #[derive(serde::Deserialize)]
        struct Page {
            events: Vec<serde_json::Value>,
            next: u64,
        }
        let page: Page = serde_json::from_slice(&body)
            .context("the orchestrator's answer is not a page of events")?;
        self.after = page.next.max(self.after);
        for v in page.events {
            match serde_json::from_value::<StreamEvent>(v) {
                Ok(e) => self.pending.push_back(e),
                Err(e) => tracing::warn!(error = %e, "unreadable event ignored"),
            }
        }
        Ok(())
    }

    pub async fn next_event(&mut self) -> anyhow::Result<StreamEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            self.poll(POLL_SECS).await?;
        }
    }

    pub async fn try_event(&mut self) -> Option<StreamEvent> {
        if self.pending.is_empty() {
            if let Err(e) = self.poll(0).await {
                tracing::warn!(error = format!("{e:#}"), "reading the stream's events");
            }
        }
        self.pending.pop_front()
    }

    /// One output of the push's stream (`key`, as its events name it), from the orchestrator.
    pub async fn fetch_output(&self, key: &str) -> anyhow::Result<Bytes> {
        let path = format!("/ingest/output/{}/{key}", self.session);
        self.request(
            (Method::GET, &path),
            None,
            &format!("copying {key}"),
            MAX_RENDITION,
        )
        .await
    }

    /// The orchestrator's address.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Deletes the push's event queue at the orchestrator (one left behind expires).
    pub async fn close(self) {
        let path = format!("/ingest/events/{}", self.session);
        let _ = self
            .client
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .header(SECRET_HEADER, &self.secret)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
    }
}
