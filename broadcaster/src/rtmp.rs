//! RTMP publish server for live ingest: accepts publishers (OBS, ffmpeg), asks a
//! [`Publishers`] implementation whether each stream key may publish, and cuts the accepted
//! streams into self-contained FLV segments with [`FlvSegmenter`].
//!
//! The protocol work is `rml_rtmp`'s sans-I/O handshake and `ServerSession`; this module does
//! the socket I/O, one task per connection. Playback is over HLS, so play requests are refused.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use rml_rtmp::handshake::{Handshake, HandshakeError, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionError, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::flv::{FlvError, FlvSegment, FlvSegmenter};

/// A client asks to publish a stream.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The RTMP application name from the connect request (`live` in `rtmp://host/live/KEY`).
    pub app: String,
    /// The stream key, as the client sent it.
    pub key: String,
    /// The client's address.
    pub peer: SocketAddr,
}

/// An accepted publish: where its events go and where its timeline starts.
#[derive(Debug)]
pub struct Accepted {
    /// Receives the stream's segments, then exactly one [`RtmpEvent::Ended`].
    pub sink: mpsc::Sender<RtmpEvent>,
    /// Timestamp of the stream's first keyframe on the output timeline (a reconnecting
    /// publisher continues at the previous connection's `end_ms`).
    pub base_ms: i64,
}

/// What an accepted publish produces.
#[derive(Debug)]
pub enum RtmpEvent {
    /// A finished segment.
    Segment(FlvSegment),
    /// The connection ended; `error` is why, when it was not a clean unpublish/disconnect
    /// (idle timeout, a [`FlvError`] such as a too-long keyframe interval, a protocol error).
    Ended {
        /// End of the stream's timeline, for a reconnecting publisher to continue after.
        end_ms: i64,
        /// Why the stream ended, when it was not the publisher's choice.
        error: Option<String>,
    },
}

/// Decides who may publish.
pub trait Publishers: Send + Sync + 'static {
    /// Decides on a publish request: `Ok` to accept, `Err(message)` to refuse (the message
    /// is sent to the client).
    fn publish(&self, req: PublishRequest)
        -> impl Future<Output = Result<Accepted, String>> + Send;
}

/// How the server segments streams and drops dead connections.
#[derive(Debug, Clone)]
pub struct RtmpOptions {
    /// Cut at the first keyframe at least this long after the segment start.
    pub target_ms: i64,
    /// Refuse a stream whose segment grows past this without a keyframe.
    pub max_ms: i64,
    /// Close a connection that sends nothing for this long (drops half-open sockets so the
    /// publisher can reconnect).
    pub idle_timeout: Duration,
    /// Connections at once; one past it is closed at once.
    pub max_connections: usize,
    /// Time from connecting to a publish being accepted (handshake, connect, publish), in
    /// all: a client that dawdles is dropped however it spaces its bytes.
    pub publish_timeout: Duration,
}

impl Default for RtmpOptions {
    fn default() -> Self {
        RtmpOptions {
            target_ms: 2000,
            max_ms: 6499,
            idle_timeout: Duration::from_secs(10),
            max_connections: 1000,
            publish_timeout: Duration::from_secs(10),
        }
    }
}

/// Most bytes a client may send before its publish is accepted: a handshake, connect,
/// createStream and publish take a few KiB.
const MAX_BYTES_BEFORE_PUBLISH: usize = 256 * 1024;

/// Accepts connections until `shutdown`; one task per connection, many publishers at once.
/// On shutdown, open streams end with an error and this returns once they have.
pub async fn serve<P: Publishers>(
    listener: TcpListener,
    publishers: Arc<P>,
    opts: RtmpOptions,
    shutdown: CancellationToken,
) {
    let opts = Arc::new(opts);
    let tracker = TaskTracker::new();
    let gate = castwork_cluster::net::Gate::new(listener, opts.max_connections, "rtmp");
    while let Some(arrival) = gate.next(&shutdown).await {
        let (stream, peer, permit) = match arrival {
            castwork_cluster::net::Arrival::Admitted(s, p, permit) => (s, p, permit),
            castwork_cluster::net::Arrival::Refused(_) => {
                crate::metrics::RTMP_REFUSED.inc();
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            stream,
            peer,
            publishers: publishers.clone(),
            opts: opts.clone(),
            shutdown: shutdown.clone(),
            session: None,
            out: Vec::new(),
            publishing: None,
            close_after_flush: false,
            publish_by: tokio::time::Instant::now() + opts.publish_timeout,
            before_publish: 0,
        };
        let span = tracing::info_span!("rtmp", %peer);
        tracker.spawn(
            async move {
                conn.run().await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    tracker.close();
    tracker.wait().await;
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("rtmp handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("rtmp protocol error: {0}")]
    Session(#[from] ServerSessionError),
    #[error("malformed rtmp input")]
    Malformed,
    #[error(transparent)]
    Flv(#[from] FlvError),
    #[error("no data from the publisher for {0:?}")]
    Idle(Duration),
    #[error("no publish within {0:?} of connecting")]
    NoPublish(Duration),
    #[error("over {MAX_BYTES_BEFORE_PUBLISH} bytes before publishing")]
    TooMuchBeforePublish,
    #[error("server shutting down")]
    Shutdown,
    #[error("stream consumer went away")]
    SinkClosed,
}

/// An accepted stream on this connection.
struct Publishing {
    app: String,
    key: String,
    sink: mpsc::Sender<RtmpEvent>,
    segmenter: FlvSegmenter,
}

struct Connection<P> {
    stream: TcpStream,
    peer: SocketAddr,
    publishers: Arc<P>,
    opts: Arc<RtmpOptions>,
    shutdown: CancellationToken,
    session: Option<ServerSession>,
    /// Packets serialized by the session, in order, not yet written.
    out: Vec<u8>,
    publishing: Option<Publishing>,
    /// Set after refusing a request: close once the refusal is written.
    close_after_flush: bool,
    /// A publish must be accepted by then.
    publish_by: tokio::time::Instant,
    /// Bytes read before a publish was accepted.
    before_publish: usize,
}

impl<P: Publishers> Connection<P> {
    async fn run(mut self) {
        let result = self.serve().await;
        if let Err(e) = &result {
            debug!(error = %e, "rtmp connection closed");
        }
        // Best effort: tell the client why before closing.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        if self.close_after_flush {
            self.linger().await;
        }
        self.end_publish(result.err().map(|e| e.to_string())).await;
    }

    /// Closes our side and waits briefly for the client to close, so that it reads a
    /// refusal instead of losing it to a reset.
    async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        let mut scratch = [0u8; 4096];
        let drain =
            async { while matches!(self.stream.read(&mut scratch).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }

    async fn serve(&mut self) -> Result<(), ConnError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut handshake = Handshake::new(PeerType::Server);
        let leftover = loop {
            let n = self.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            match handshake.process_bytes(&buf[..n])? {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    self.out.extend_from_slice(&response_bytes);
                    self.flush().await?;
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    self.out.extend_from_slice(&response_bytes);
                    break remaining_bytes;
                }
            }
        };
        let (session, initial) = ServerSession::new(ServerSessionConfig::new())?;
        self.session = Some(session);
        self.handle_results(initial).await?;
        self.handle_input(&leftover).await?;
        loop {
            self.flush().await?;
            if self.close_after_flush {
                return Ok(());
            }
            let n = self.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            self.handle_input(&buf[..n]).await?;
        }
    }

    /// Reads some bytes, giving up after the idle timeout, at the publish deadline while
    /// not publishing, or at shutdown.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ConnError> {
        let idle = self.opts.idle_timeout;
        let publishing = self.publishing.is_some();
        let deadline = if publishing {
            tokio::time::Instant::now() + idle
        } else {
            self.publish_by.min(tokio::time::Instant::now() + idle)
        };
        let n = tokio::select! {
            () = self.shutdown.cancelled() => return Err(ConnError::Shutdown),
            read = tokio::time::timeout_at(deadline, self.stream.read(buf)) => match read {
                Ok(r) => r.map_err(ConnError::Io)?,
                Err(_) if !publishing && tokio::time::Instant::now() >= self.publish_by => {
                    return Err(ConnError::NoPublish(self.opts.publish_timeout))
                }
                Err(_) => return Err(ConnError::Idle(idle)),
            },
        };
        if !publishing {
            self.before_publish += n;
            if self.before_publish > MAX_BYTES_BEFORE_PUBLISH {
                return Err(ConnError::TooMuchBeforePublish);
            }
        }
        Ok(n)
    }

    /// Writes the queued packets; a client that stops reading counts as idle.
    async fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let idle = self.opts.idle_timeout;
        tokio::time::timeout(idle, self.stream.write_all(&self.out))
            .await
            .map_err(|_| ConnError::Idle(idle))??;
        self.out.clear();
        Ok(())
    }

    fn session(&mut self) -> &mut ServerSession {
        self.session
            .as_mut()
            .expect("session exists after the handshake")
    }

    async fn handle_input(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let session = self.session();
        // rml_rtmp can panic on some malformed chunk headers (integer overflow in debug
        // builds); treat that like any other protocol error on this connection.
        let results = catch_unwind(AssertUnwindSafe(|| session.handle_input(bytes)))
            .map_err(|_| ConnError::Malformed)??;
        self.handle_results(results).await
    }

    /// Queues the session's outbound packets, then reacts to its events. Packets made while
    /// reacting (accept/reject) must go out after those already serialized, so they are
    /// queued first.
    async fn handle_results(&mut self, results: Vec<ServerSessionResult>) -> Result<(), ConnError> {
        let mut events = Vec::new();
        for result in results {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    self.out.extend_from_slice(&packet.bytes);
                }
                ServerSessionResult::RaisedEvent(event) => events.push(event),
                ServerSessionResult::UnhandleableMessageReceived(payload) => {
                    debug!(type_id = payload.type_id, "unhandled rtmp message");
                }
            }
        }
        for event in events {
            self.handle_event(event).await?;
        }
        Ok(())
    }

    /// Queues the outbound packets of an accept or reject.
    fn queue(&mut self, results: Vec<ServerSessionResult>) {
        for result in results {
            if let ServerSessionResult::OutboundResponse(packet) = result {
                self.out.extend_from_slice(&packet.bytes);
            }
        }
    }

    async fn handle_event(&mut self, event: ServerSessionEvent) -> Result<(), ConnError> {
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                debug!(app = %app_name, "rtmp connect");
                let results = self.session().accept_request(request_id)?;
                self.queue(results);
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => {
                self.publish_requested(request_id, app_name, stream_key)
                    .await?
            }
            ServerSessionEvent::PublishStreamFinished { .. } => self.end_publish(None).await,
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                if let Some(p) = &mut self.publishing {
                    if let Some(segment) = p.segmenter.video(timestamp.value, &data)? {
                        send(&p.sink, RtmpEvent::Segment(segment)).await?;
                    }
                }
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                if let Some(p) = &mut self.publishing {
                    p.segmenter.audio(timestamp.value, &data)?;
                }
            }
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                info!("rtmp play refused");
                let results = self.session().reject_request(
                    request_id,
                    "NetStream.Play.Failed",
                    "playback is over HLS, not RTMP",
                )?;
                self.queue(results);
                self.close_after_flush = true;
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                debug!(?metadata, "rtmp stream metadata");
            }
            other => debug!(event = ?other, "rtmp event ignored"),
        }
        Ok(())
    }

    async fn publish_requested(
        &mut self,
        request_id: u32,
        app: String,
        key: String,
    ) -> Result<(), ConnError> {
        let decision = if self.publishing.is_some() {
            Err("this connection is already publishing a stream".to_string())
        } else {
            let req = PublishRequest {
                app: app.clone(),
                key: key.clone(),
                peer: self.peer,
            };
            self.publishers.publish(req).await
        };
        match decision {
            Ok(accepted) => {
                let results = self.session().accept_request(request_id)?;
                self.queue(results);
                info!(app = %app, key = %redact(&key), base_ms = accepted.base_ms, "rtmp publish started");
                debug!(app = %app, key = %key, "rtmp publish key");
                self.publishing = Some(Publishing {
                    app,
                    key,
                    sink: accepted.sink,
                    segmenter: FlvSegmenter::new(
                        self.opts.target_ms,
                        self.opts.max_ms,
                        accepted.base_ms,
                    ),
                });
            }
            Err(message) => {
                info!(app = %app, key = %redact(&key), reason = %message, "rtmp publish refused");
                let results = self.session().reject_request(
                    request_id,
                    "NetStream.Publish.Denied",
                    &message,
                )?;
                self.queue(results);
                self.close_after_flush = true;
            }
        }
        Ok(())
    }

    /// Ends the accepted stream, if any: its last segment, then `Ended`, exactly once.
    async fn end_publish(&mut self, error: Option<String>) {
        let Some(mut p) = self.publishing.take() else {
            return;
        };
        let key = redact(&p.key);
        match &error {
            None => info!(app = %p.app, key = %key, "rtmp publish stopped"),
            Some(e) => warn!(app = %p.app, key = %key, error = %e, "rtmp publish ended"),
        }
        if let Some(segment) = p.segmenter.finish() {
            let _ = send(&p.sink, RtmpEvent::Segment(segment)).await;
        }
        let end_ms = p.segmenter.end_ms();
        let _ = send(&p.sink, RtmpEvent::Ended { end_ms, error }).await;
    }
}

async fn send(sink: &mpsc::Sender<RtmpEvent>, event: RtmpEvent) -> Result<(), ConnError> {
    sink.send(event).await.map_err(|_| ConnError::SinkClosed)
}

/// The first 4 characters of a stream key, for info-level logs.
fn redact(key: &str) -> String {
    let mut short: String = key.chars().take(4).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_redacted() {
        assert_eq!(redact("good1-secret"), "good…");
        assert_eq!(redact("ab"), "ab…");
        assert_eq!(redact("ключключ"), "ключ…");
    }
}
