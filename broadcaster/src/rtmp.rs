//! RTMP publish server for live ingest: accepts publishers (OBS, ffmpeg), asks a
//! [`Publishers`] implementation whether each stream key may publish, and cuts the accepted
//! streams into self-contained FLV segments with [`FlvSegmenter`].
//!
//! The protocol work is `rml_rtmp`'s sans-I/O handshake and `ServerSession`; this module does
//! the socket I/O, one task per connection. Playback is over HLS, so play requests are refused.
//!
//! A publisher refused or cut off for a reason of its own (a bad key, keyframes too far
//! apart, the orchestrator's refusal, the server at capacity) is told why in an `onStatus`
//! error (see [`refusal`]) before the connection closes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::flv::FlvSegment;

mod connection;
pub mod refusal;

use connection::Connection;
pub use refusal::Refusal;

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
    /// Receives why the stream was refused after it started (the orchestrator said no):
    /// the publisher is told and cut off. Dropping the sender cuts nothing off.
    pub cut_off: oneshot::Receiver<String>,
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
    /// Decides on a publish request: `Ok` to accept, `Err` to refuse (the refusal is sent to
    /// the client).
    fn publish(
        &self,
        req: PublishRequest,
    ) -> impl Future<Output = Result<Accepted, Refusal>> + Send;
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
    /// Connections at once; up to [`REFUSAL_SLOTS`] past it are told the server is at
    /// capacity when they publish, any more are closed at once.
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

/// Connections past `max_connections` that are still served far enough to be told the
/// server is at capacity (one past these is closed at once).
pub const REFUSAL_SLOTS: usize = 32;

/// Longest a connection past `max_connections` is kept to tell it so.
const REFUSAL_TIME: Duration = Duration::from_secs(3);

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
    let max = opts.max_connections.max(1);
    // The gate bounds every connection, those kept only to be refused included.
    let gate = castwork_cluster::net::Gate::new(listener, max + REFUSAL_SLOTS, "rtmp");
    let slots = Arc::new(Semaphore::new(max));
    let at_capacity = format!(
        "the server is at capacity ({max} RTMP connections at once, --rtmp-max-connections): \
         try again later"
    );
    while let Some(arrival) = gate.next(&shutdown).await {
        let (stream, peer, permit) = match arrival {
            castwork_cluster::net::Arrival::Admitted(s, p, permit) => (s, p, permit),
            castwork_cluster::net::Arrival::Refused(_) => {
                crate::metrics::RTMP_REFUSED.inc();
                continue;
            }
        };
        let slot = slots.clone().try_acquire_owned().ok();
        let (refuse_all, publish_by) = match slot {
            Some(_) => (None, tokio::time::Instant::now() + opts.publish_timeout),
            None => {
                crate::metrics::RTMP_REFUSED.inc();
                let by = opts.publish_timeout.min(REFUSAL_TIME);
                (
                    Some(Refusal::rejected(at_capacity.clone())),
                    tokio::time::Instant::now() + by,
                )
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection::new(
            stream,
            peer,
            publishers.clone(),
            opts.clone(),
            shutdown.clone(),
            publish_by,
            refuse_all,
        );
        let span = tracing::info_span!("rtmp", %peer);
        tracker.spawn(
            async move {
                conn.run().await;
                drop((slot, permit));
            }
            .instrument(span),
        );
    }
    tracker.close();
    tracker.wait().await;
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
