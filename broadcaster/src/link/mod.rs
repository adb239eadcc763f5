//! The broadcaster's link to an orchestrator for one push: over RabbitMQ (with the broker's
//! and the object store's credentials) or over the orchestrator's HTTP ingest API (with its
//! URL and a broadcaster key, [`http`]).
//!
//! Over RabbitMQ: publishes that survive a broker restart (reconnect with backoff, then
//! publish again; every ingest message is idempotent) and a durable per-push event queue
//! that keeps the orchestrator's events while we are away.

mod http;
pub use http::RETRY_FOR as HTTP_RETRY_FOR;

use castwork_cluster::telemetry::Span;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use castwork_cluster::{broker::INGEST_KEY, Backoff, Broker};
use castwork_protocol::{decode, encode, IngestMessage, StreamEvent, INGEST_EXCHANGE};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::Consumer;
use uuid::Uuid;

/// How long a push keeps trying to reach a broker that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(300);

/// Where a push sends its messages and source segments, and reads its events.
pub enum Link {
    Amqp(Box<AmqpLink>),
    Http(http::HttpLink),
}

/// The body of `resp`, refused (`Err`, with what to say) once it passes `cap` bytes: what
/// another party answers costs at most that much memory.
pub async fn read_capped(resp: &mut reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) if bytes.len() + c.len() <= cap => bytes.extend_from_slice(&c),
            Ok(Some(_)) => return Err(format!("its answer is over {} KiB", cap / 1024)),
            Ok(None) => return Ok(bytes),
            Err(e) => return Err(format!("its answer could not be read: {e}")),
        }
    }
}

impl Link {
    /// Over RabbitMQ: see [`AmqpLink::open`].
    pub async fn open(url: &str, stream: &str, session: Uuid) -> anyhow::Result<Link> {
        Ok(Link::Amqp(Box::new(
            AmqpLink::open(url, stream, session).await?,
        )))
    }

    /// Over the HTTP ingest API of the orchestrator at `base`, with broadcaster key `key`;
    /// a request that finds it unreachable is retried for `retry_for`.
    pub fn open_http(
        base: &str,
        key: &str,
        session: Uuid,
        retry_for: Duration,
    ) -> anyhow::Result<Link> {
        Ok(Link::Http(http::HttpLink::new(
            base, key, session, retry_for,
        )?))
    }

    /// One output of the push's stream (a key its events name), from the orchestrator over
    /// HTTP; over RabbitMQ the outputs are in the store the push shares.
    pub async fn fetch_output(&self, key: &str) -> anyhow::Result<bytes::Bytes> {
        match self {
            Link::Http(l) => l.fetch_output(key).await,
            Link::Amqp(_) => anyhow::bail!("outputs are copied only over HTTP"),
        }
    }

    /// Where the link goes: the orchestrator's address over HTTP.
    pub fn orchestrator(&self) -> Option<&str> {
        match self {
            Link::Http(l) => Some(l.base()),
            Link::Amqp(_) => None,
        }
    }

    pub fn is_http(&self) -> bool {
        matches!(self, Link::Http(_))
    }

    pub async fn publish(&mut self, msg: &IngestMessage) -> anyhow::Result<()> {
        self.publish_in(msg, &Span::none()).await
    }

    /// Publishes within a trace (over RabbitMQ the message carries `span`'s context).
    pub async fn publish_in(&mut self, msg: &IngestMessage, span: &Span) -> anyhow::Result<()> {
        match self {
            Link::Amqp(l) => l.publish_in(msg, span).await,
            Link::Http(l) => l.publish(msg).await,
        }
    }

    /// Stores source segment `seq` of `stream` (`data`, a file of extension `ext`): into
    /// `storage` over RabbitMQ (which needs one), at the orchestrator over HTTP. Answers
    /// its object.
    pub async fn store_source(
        &mut self,
        storage: Option<&castwork_cluster::Storage>,
        stream: &str,
        (seq, ext): (u64, &str),
        data: bytes::Bytes,
    ) -> anyhow::Result<castwork_protocol::ObjectRef> {
        match self {
            Link::Amqp(_) => {
                let object = castwork_protocol::ObjectRef::of(
                    castwork_protocol::source_key(stream, seq, ext),
                    &data,
                );
                storage
                    .context("no object store for the source segments")?
                    .put(&object.key, data)
                    .await
                    .with_context(|| format!("storing {}", object.key))?;
                Ok(object)
            }
            Link::Http(l) => l.store_source(seq, ext, data).await,
        }
    }

    pub async fn next_event(&mut self) -> anyhow::Result<StreamEvent> {
        match self {
            Link::Amqp(l) => l.next_event().await,
            Link::Http(l) => l.next_event().await,
        }
    }

    pub async fn try_event(&mut self) -> Option<StreamEvent> {
        match self {
            Link::Amqp(l) => l.try_event().await,
            Link::Http(l) => l.try_event().await,
        }
    }

    pub async fn close(self) {
        match self {
            Link::Amqp(l) => l.close().await,
            Link::Http(l) => l.close().await,
        }
    }
}

pub struct AmqpLink {
    url: String,
    /// The push's publisher secret, put on every ingest message it sends.
    secret: String,
    stream: String,
    queue: String,
    broker: Option<Broker>,
    events: Option<Consumer>,
    events_channel: Option<lapin::Channel>,
}

impl AmqpLink {
    /// Connects once (a broker that is not there at the start is an error for the user) and
    /// subscribes to the stream's events before anything is published.
    pub async fn open(url: &str, stream: &str, session: Uuid) -> anyhow::Result<AmqpLink> {
        let mut link = AmqpLink {
            url: url.to_string(),
            secret: crate::live::auth::random_hex(16)
                .context("making the stream's publisher secret")?,
            stream: stream.to_string(),
            queue: format!("castwork.push.{session}"),
            broker: None,
            events: None,
            events_channel: None,
        };
        link.connect().await.with_context(|| {
            format!(
                "cannot reach RabbitMQ at {}",
                castwork_cluster::redact_url(url)
            )
        })?;
        Ok(link)
    }

    async fn connect(&mut self) -> anyhow::Result<()> {
        let broker = Broker::connect(
            &self.url,
            "castwork-broadcaster",
            castwork_cluster::broker::Role::Broadcaster,
        )
        .await?;
        let ch = broker.channel().await?;
        castwork_cluster::broker::declare_event_queue(&ch, &self.queue, &self.stream).await?;
        let consumer = ch
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                // Acked once taken: an event in flight when the broker goes away is delivered
                // again after the reconnect, never lost.
                BasicConsumeOptions {
                    no_ack: false,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        self.broker = Some(broker);
        self.events = Some(consumer);
        self.events_channel = Some(ch);
        Ok(())
    }

    /// Reconnects with backoff for up to [`RECONNECT_FOR`].
    async fn reconnect(&mut self, why: &anyhow::Error) -> anyhow::Result<()> {
        tracing::warn!(error = format!("{why:#}"), "lost RabbitMQ, reconnecting");
        self.broker = None;
        self.events = None;
        self.events_channel = None;
        let deadline = Instant::now() + RECONNECT_FOR;
        let mut backoff = Backoff::default();
        loop {
            match self.connect().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e).context("RabbitMQ stayed unreachable")
                }
                Err(_) => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
    }

    /// Publishes an ingest message with confirms, reconnecting and publishing again after
    /// a broker failure; the message carries `span`'s context.
    pub async fn publish_in(&mut self, msg: &IngestMessage, span: &Span) -> anyhow::Result<()> {
        let body = encode(&msg.clone().with_secret(&self.secret));
        loop {
            let r = match &self.broker {
                Some(b) => b
                    .publish(INGEST_EXCHANGE, INGEST_KEY, &body, span.headers())
                    .await
                    .map_err(anyhow::Error::new),
                None => Err(anyhow::anyhow!("not connected")),
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) => self.reconnect(&e).await?,
            }
        }
    }

    /// The next event of the stream, reconnecting when the broker goes away.
    pub async fn next_event(&mut self) -> anyhow::Result<StreamEvent> {
        loop {
            let next = match self.events.as_mut() {
                Some(c) => c.next().await,
                None => None,
            };
            match next {
                Some(Ok(d)) => {
                    // A failed ack leaves the event to come again, which every handler takes.
                    let _ = d.acker.ack(BasicAckOptions::default()).await;
                    match decode::<StreamEvent>(&d.data) {
                        Ok(e) => return Ok(e),
                        Err(e) => tracing::warn!(error = %e, "unreadable event ignored"),
                    }
                }
                Some(Err(e)) => self.reconnect(&anyhow::Error::new(e)).await?,
                None => {
                    self.reconnect(&anyhow::anyhow!("event consumer closed"))
                        .await?
                }
            }
        }
    }

    /// An event if one is waiting, without blocking.
    pub async fn try_event(&mut self) -> Option<StreamEvent> {
        let c = self.events.as_mut()?;
        match tokio::time::timeout(Duration::ZERO, c.next()).await {
            Ok(Some(Ok(d))) => {
                let _ = d.acker.ack(BasicAckOptions::default()).await;
                decode::<StreamEvent>(&d.data).ok()
            }
            _ => None,
        }
    }

    /// Deletes the event queue and closes the connection (a queue left behind by a crash
    /// expires on its own).
    pub async fn close(self) {
        if let (Some(ch), Some(consumer)) = (&self.events_channel, &self.events) {
            // Cancel our consumer before the queue goes, so nothing is cut off mid-way.
            let _ = ch.basic_cancel(consumer.tag(), Default::default()).await;
            let _ = ch
                .queue_delete(self.queue.as_str().into(), Default::default())
                .await;
            let _ = ch.close(200, "bye".into()).await;
        }
        if let Some(b) = self.broker {
            b.close().await;
        }
    }
}
