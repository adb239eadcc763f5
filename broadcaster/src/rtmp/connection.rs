//! One RTMP connection: the handshake, `rml_rtmp`'s session, the publish decision, the
//! stream's segments, and telling the client why when it is refused or cut off.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use rml_rtmp::handshake::{Handshake, HandshakeError, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionError, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::refusal::{self, Refusal};
use super::{redact, PublishRequest, Publishers, RtmpEvent, RtmpOptions};
use crate::flv::{FlvError, FlvSegmenter};

/// Most bytes a client may send before its publish is accepted: a handshake, connect,
/// createStream and publish take a few KiB.
const MAX_BYTES_BEFORE_PUBLISH: usize = 256 * 1024;

/// Longest wait, after telling a client why, for it to read that and close.
const GRACE: Duration = Duration::from_secs(2);

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
    /// The stream was refused after it started; the reason is the publisher's to read.
    #[error("{0}")]
    CutOff(String),
}

impl ConnError {
    /// What the publisher is told of this error, when it is its business and the
    /// connection can still carry a message.
    fn for_publisher(&self) -> Option<String> {
        match self {
            ConnError::Flv(e) => Some(e.to_string()),
            ConnError::CutOff(why) => Some(why.clone()),
            ConnError::Idle(d) => Some(format!("no data from the publisher for {} s", d.as_secs())),
            ConnError::NoPublish(d) => {
                Some(format!("no publish within {} s of connecting", d.as_secs()))
            }
            ConnError::Shutdown => Some("the server is shutting down: publish again later".into()),
            ConnError::SinkClosed => {
                Some("the live stream stopped on the server: publish again".into())
            }
            ConnError::Io(_)
            | ConnError::Handshake(_)
            | ConnError::Session(_)
            | ConnError::Malformed
            | ConnError::TooMuchBeforePublish => None,
        }
    }
}

/// An accepted stream on this connection.
struct Publishing {
    app: String,
    key: String,
    sink: mpsc::Sender<RtmpEvent>,
    segmenter: FlvSegmenter,
    /// Why the stream was refused after it started, once it is (`None` once the sender
    /// is gone without a word).
    cut_off: Option<oneshot::Receiver<String>>,
}

pub(super) struct Connection<P> {
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
    /// Past the connection cap: every publish gets this refusal.
    refuse_all: Option<Refusal>,
}

impl<P: Publishers> Connection<P> {
    /// A connection from `peer` whose publish must be accepted by `publish_by`; with
    /// `refuse_all`, every publish is refused so.
    pub(super) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        publishers: Arc<P>,
        opts: Arc<RtmpOptions>,
        shutdown: CancellationToken,
        publish_by: tokio::time::Instant,
        refuse_all: Option<Refusal>,
    ) -> Self {
        Connection {
            stream,
            peer,
            publishers,
            opts,
            shutdown,
            session: None,
            out: Vec::new(),
            publishing: None,
            close_after_flush: false,
            publish_by,
            before_publish: 0,
            refuse_all,
        }
    }

    pub(super) async fn run(mut self) {
        let result = match self.serve().await {
            // The stream's consumer went away: say why, when it left a reason.
            Err(ConnError::SinkClosed) => Err(self
                .cut_off_reason()
                .map_or(ConnError::SinkClosed, ConnError::CutOff)),
            r => r,
        };
        if let Err(e) = &result {
            debug!(error = %e, "rtmp connection closed");
            let can_tell = self.session.is_some() && !self.close_after_flush;
            if let Some(why) = e.for_publisher().filter(|_| can_tell) {
                // Past the cap, the cap is the reason whatever else happened.
                let refusal = self
                    .refuse_all
                    .clone()
                    .unwrap_or_else(|| Refusal::rejected(why));
                self.tell(&refusal);
            }
        }
        // Best effort: tell the client why before closing.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        if self.close_after_flush {
            self.linger().await;
        }
        self.end_publish(result.err().map(|e| e.to_string())).await;
    }

    /// A reason the stream's consumer left for cutting the publisher off, if it left one.
    fn cut_off_reason(&mut self) -> Option<String> {
        self.publishing.as_mut()?.cut_off.as_mut()?.try_recv().ok()
    }

    /// Queues an `onStatus` error telling the client why, and closes once it is written:
    /// nothing may be sent after it.
    fn tell(&mut self, refusal: &Refusal) {
        match refusal::error_status(refusal, self.chunk_size()) {
            Ok(bytes) => self.out.extend_from_slice(&bytes),
            Err(e) => debug!(error = %e, "cannot serialize an rtmp status"),
        }
        self.close_after_flush = true;
    }

    /// The chunk size the session announced to the client.
    fn chunk_size(&self) -> u32 {
        ServerSessionConfig::new().chunk_size
    }

    /// Closes our side and waits briefly for the client to close, reading what it still
    /// sends, so that it reads a refusal instead of losing it to a reset (closing a socket
    /// with unread input resets the connection).
    async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        let mut scratch = [0u8; 4096];
        let drain =
            async { while matches!(self.stream.read(&mut scratch).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(GRACE, drain).await;
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
        let n = loop {
            let cut_off = async {
                match self.publishing.as_mut().and_then(|p| p.cut_off.as_mut()) {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(ConnError::Shutdown),
                why = cut_off => match why {
                    Some(why) => return Err(ConnError::CutOff(why)),
                    // Gone without a word: nothing to wait for.
                    None => {
                        if let Some(p) = self.publishing.as_mut() {
                            p.cut_off = None;
                        }
                    }
                },
                read = tokio::time::timeout_at(deadline, self.stream.read(buf)) => break match read {
                    Ok(r) => r.map_err(ConnError::Io)?,
                    Err(_) if !publishing && tokio::time::Instant::now() >= self.publish_by => {
                        return Err(ConnError::NoPublish(self.opts.publish_timeout))
                    }
                    Err(_) => return Err(ConnError::Idle(idle)),
                },
            }
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
        let decision = if let Some(refusal) = &self.refuse_all {
            Err(refusal.clone())
        } else if self.publishing.is_some() {
            Err(Refusal::rejected(
                "this connection is already publishing a stream",
            ))
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
                    cut_off: Some(accepted.cut_off),
                });
            }
            Err(refusal) => {
                info!(app = %app, key = %redact(&key), code = refusal.code, reason = %refusal, "rtmp publish refused");
                self.tell(&refusal);
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
