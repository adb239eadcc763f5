//! How a stream ends: its publisher says how many segments it sent, or gives up (then the
//! stream fails with the reason and what it stored goes).

use castwork_protocol::{StreamAborted, StreamEnded, StreamEvent};
use tracing::{info, warn};

use super::{from_publisher, refused};
use crate::metrics;
use crate::service::{HandleError, Orchestrator};

impl Orchestrator {
    pub(super) async fn stream_ended(&self, s: StreamEnded) -> Result<(), HandleError> {
        match self.state.stream(&s.stream).await? {
            Some(rec) if rec.session == s.session.to_string() => from_publisher(&rec, &s.secret)?,
            _ => {
                return refused(format!(
                    "end of stream {}, which does not exist (or not for this push)",
                    s.stream
                ))
            }
        }
        if s.segments == 0 {
            return refused(format!(
                "stream {} ended with no segments: nothing of its source could be sent",
                s.stream
            ));
        }
        if let Err(max_seq) = self
            .state
            .set_total(&s.stream, s.segments, self.max_seq_ahead)
            .await?
        {
            warn!(
                stream = s.stream,
                segments = s.segments,
                highest_received = max_seq,
                window = self.max_seq_ahead,
                "end of stream refused: its segment count is below the segments received or \
                 too far beyond them"
            );
            metrics::REJECTED_MESSAGES
                .with_label_values(&[castwork_protocol::INGEST_QUEUE, "seq_window"])
                .inc();
            return refused(format!(
                "end of stream {} with {} segments refused: {max_seq} is the highest segment \
                 received, and the count may be at most {} beyond it",
                s.stream, s.segments, self.max_seq_ahead
            ));
        }
        self.after_change(&s.stream).await
    }

    /// The publisher gave up: the stream fails with its reason and what it stored goes.
    pub(super) async fn stream_aborted(&self, s: StreamAborted) -> Result<(), HandleError> {
        match self.state.stream(&s.stream).await? {
            Some(rec) if rec.session == s.session.to_string() => from_publisher(&rec, &s.secret)?,
            _ => {
                return refused(format!(
                    "abort of stream {}, which does not exist (or not for this push)",
                    s.stream
                ))
            }
        }
        let reason = format!("the publisher gave up: {}", s.reason);
        self.fail_stream(&s.stream, &s.session.to_string(), &reason)
            .await
    }

    /// Fails an active stream of `session` for good: its state says why, its objects
    /// (source segments, renditions so far) are deleted, and its publisher is told. A
    /// result that comes later is dropped with its objects.
    pub(crate) async fn fail_stream(
        &self,
        stream: &str,
        session: &str,
        reason: &str,
    ) -> Result<(), HandleError> {
        if self.state.fail_stream(stream, session, reason).await? {
            warn!(stream, reason, "stream failed");
            metrics::STREAMS.with_label_values(&["failed"]).inc();
        } else {
            // A redelivery finishes what the first delivery began; any other stream is
            // left alone.
            match self.state.stream(stream).await? {
                Some(r) if r.state == "failed" && r.session == session => {}
                Some(r) => {
                    return refused(format!(
                        "stream {stream} cannot fail now: it is {}",
                        r.state
                    ))
                }
                None => return refused(format!("stream {stream} does not exist")),
            }
        }
        let objects = self
            .storage
            .delete_prefix(&format!("streams/{stream}/"))
            .await?;
        info!(stream, objects, "a failed stream's objects deleted");
        self.event(
            stream,
            &StreamEvent::StreamFailed {
                stream: stream.to_string(),
                reason: reason.to_string(),
            },
        )
        .await
    }
}
