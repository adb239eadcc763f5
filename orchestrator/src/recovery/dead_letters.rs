//! Dead letters: every message that no handler could take ends here, from any queue, with
//! its reason: the consumers' own (a refusal, an unreadable message, retries used up) or
//! the broker's (a job past its delivery limit or deadline). Each becomes a visible
//! failure: recorded for `/status` and the dashboard, counted, and where the message was
//! its stream's own (its publisher's secret) or a job, the stream or segment fails with it.

use castwork_cluster::consume::{amqp_u64, header_str};
use castwork_protocol::{
    decode, Disposition, IngestMessage, SegmentFailed, SegmentJob, StreamEvent, WorkerReport,
    DEAD_DELIVERIES_HEADER, DEAD_QUEUE_HEADER, DEAD_REASON_HEADER, INGEST_QUEUE, RESULTS_QUEUE,
};
use lapin::message::Delivery;
use lapin::types::AMQPValue;
use tracing::warn;

use crate::ingest::carries_secret;
use crate::metrics;
use crate::service::{HandleError, Orchestrator};
use crate::state::{now_unix_ms, DeadLetterRecord};

/// A dead-lettered message and what its headers say about it.
#[derive(Debug, Clone, Default)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    /// The queue it was taken from.
    pub queue: Option<String>,
    /// A consumer's reason.
    pub reason: Option<String>,
    /// The broker's reason (`expired`, `delivery_limit`, `rejected`, `maxlen`).
    pub broker_reason: Option<String>,
    pub deliveries: Option<u64>,
    /// Who published it: the broker keeps a message's `user-id` when it dead-letters it,
    /// so a job the broker gave up on carries the orchestrator's own user, while one a
    /// consumer dead-lettered carries that consumer's.
    pub sender: Option<String>,
}

impl DeadLetter {
    pub fn of(d: &Delivery) -> DeadLetter {
        // The broker's latest death of the message (x-death is newest first).
        let death = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| match h.inner().get("x-death") {
                Some(AMQPValue::FieldArray(deaths)) => match deaths.as_slice().first() {
                    Some(AMQPValue::FieldTable(t)) => Some(t.clone()),
                    _ => None,
                },
                _ => None,
            });
        let death_str = |name: &str| match death.as_ref()?.inner().get(name)? {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            _ => None,
        };
        let ours = header_str(d, DEAD_REASON_HEADER);
        let deliveries = if ours.is_some() {
            d.properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(DEAD_DELIVERIES_HEADER).and_then(amqp_u64))
        } else {
            death
                .as_ref()
                .and_then(|t| t.inner().get("count").and_then(amqp_u64))
        };
        DeadLetter {
            body: d.data.clone(),
            queue: header_str(d, DEAD_QUEUE_HEADER).or_else(|| death_str("queue")),
            broker_reason: if ours.is_some() {
                None
            } else {
                death_str("reason")
            },
            reason: ours,
            deliveries,
            sender: castwork_cluster::broker::sender(&d.properties),
        }
    }

    /// Why it died, as a metric label: `refused` (a consumer's refusal or an unreadable
    /// message), `retries_exhausted` (a consumer's transient failures past the bound), or
    /// the broker's reason.
    pub fn cause(&self) -> &'static str {
        if self.reason.is_some() {
            return match self.deliveries {
                Some(n) if n >= u64::from(castwork_cluster::consume::MAX_DELIVERIES) => {
                    "retries_exhausted"
                }
                _ => "refused",
            };
        }
        match self.broker_reason.as_deref() {
            Some("expired") => "expired",
            Some("delivery_limit") => "delivery_limit",
            Some("rejected") => "rejected",
            _ => "other",
        }
    }

    /// Why it died, in words.
    pub fn why(&self) -> String {
        if let Some(r) = &self.reason {
            return r.clone();
        }
        match self.broker_reason.as_deref() {
            Some("expired") => "no worker took it before its deadline".into(),
            Some("delivery_limit") => match self.deliveries {
                Some(n) => format!(
                    "dead-lettered after {n} deliveries: its consumers kept failing to finish it"
                ),
                None => "dead-lettered at the delivery limit: its consumers kept failing to \
                         finish it"
                    .into(),
            },
            Some("rejected") => "refused by its consumer as unreadable".into(),
            Some(other) => format!("dead-lettered by the broker ({other})"),
            None => "dead-lettered by the broker".into(),
        }
    }
}

/// The `stream` and `seq` fields of a message that does not decode, for the record; from
/// text that is not even JSON (a number out of range, say), the stream's name alone.
fn named_in(body: &[u8]) -> (Option<String>, Option<u64>) {
    let valid = |s: &str| castwork_protocol::validate_stream_name(s).is_ok();
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => (
            v.get("stream")
                .and_then(|s| s.as_str())
                .filter(|s| valid(s))
                .map(str::to_string),
            v.get("seq").and_then(serde_json::Value::as_u64),
        ),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let name = text.split_once("\"stream\"").and_then(|(_, rest)| {
                let rest = rest.trim_start().strip_prefix(':')?.trim_start();
                rest.strip_prefix('"')?.split('"').next()
            });
            (name.filter(|s| valid(s)).map(str::to_string), None)
        }
    }
}

impl Orchestrator {
    /// Turns a dead letter into a visible failure (see the module's notes). A refusal on
    /// the way (its segment or stream is gone) is noted in the record, never retried.
    pub async fn dead_letter(&self, d: &DeadLetter) -> Result<(), HandleError> {
        let queue = d.queue.clone().unwrap_or_else(|| "unknown".into());
        // A queue an older Castwork named like its exchange counts as the one replacing it.
        let queue = castwork_protocol::LEGACY_QUEUES
            .iter()
            .find(|(legacy, _)| *legacy == queue)
            .map_or(queue, |(_, current)| (*current).to_string());
        let (stream, seq) = named_in(&d.body);
        let mut record = DeadLetterRecord {
            at_unix_ms: now_unix_ms(),
            queue: queue.clone(),
            kind: "unreadable".into(),
            reason: d.why(),
            stream,
            seq,
            deliveries: d.deliveries,
            stream_failed: false,
        };
        let handled = if queue.starts_with("jobs.") {
            self.dead_job(d, &mut record).await
        } else if queue == INGEST_QUEUE {
            self.dead_ingest(d, &mut record).await
        } else if queue == RESULTS_QUEUE {
            dead_report(d, &mut record);
            Ok(())
        } else {
            Ok(())
        };
        match handled {
            Err(HandleError::Retry(m)) => return Err(HandleError::Retry(m)),
            Err(HandleError::Refused(m)) => record.reason = format!("{} ({m})", record.reason),
            Ok(()) => {}
        }
        warn!(
            queue = record.queue,
            kind = record.kind,
            stream = record.stream,
            reason = record.reason,
            stream_failed = record.stream_failed,
            "dead letter"
        );
        self.state.record_dead_letter(&record).await?;
        metrics::DEAD_LETTERS
            .with_label_values(&[metrics::dead_letter_queue(&record.queue), d.cause()])
            .inc();
        Ok(())
    }

    /// A job: a live one no worker took in time is skipped, any other fails its segment.
    async fn dead_job(
        &self,
        d: &DeadLetter,
        record: &mut DeadLetterRecord,
    ) -> Result<(), HandleError> {
        let Ok(job) = decode::<SegmentJob>(&d.body) else {
            return Ok(());
        };
        record.kind = "job".into();
        // A dead letter that did not come from the broker came from a consumer, who may be
        // a worker on a credential of its own: it counts only for a job that was really
        // issued (keyed id), and what it says the broker did is not believed.
        let from_broker = d.sender.as_deref() == Some(self.broker.user());
        if !from_broker {
            let who = d.sender.as_deref().unwrap_or("an unnamed sender");
            let issued = self
                .job_ids
                .check(job.job_id, &job.stream, job.seq, job.attempt, who);
            if let Err(refused) = issued {
                // A job an older orchestrator issued (see `handle_report`).
                if job.job_id.get_version() == Some(uuid::Version::SortRand) {
                    self.reissue(&job.stream, job.seq, job.attempt).await?;
                }
                return Err(refused);
            }
        }
        if from_broker && d.broker_reason.as_deref() == Some("expired") {
            return self
                .skip_segment(&job.stream, job.seq, &record.reason)
                .await;
        }
        self.segment_failed(SegmentFailed {
            job_id: job.job_id,
            stream: job.stream,
            seq: job.seq,
            attempt: job.attempt,
            worker_id: "broker".into(),
            disposition: Disposition::Permanent,
            message: record.reason.clone(),
        })
        .await
    }

    /// An ingest message. Only the stream's own publisher's message (its secret) fails an
    /// active stream; a start that died is refused to its push, which is waiting for an
    /// answer. Anyone else's message is only recorded.
    async fn dead_ingest(
        &self,
        d: &DeadLetter,
        record: &mut DeadLetterRecord,
    ) -> Result<(), HandleError> {
        let Ok(msg) = decode::<IngestMessage>(&d.body) else {
            return Ok(());
        };
        let (kind, stream, session, secret) = msg.about();
        record.kind = kind.into();
        let rec = self.state.stream(stream).await?;
        let own = rec.as_ref().is_some_and(|r| {
            r.session == session.to_string() && r.state == "active" && carries_secret(r, secret)
        });
        if own {
            record.stream_failed = true;
            return self
                .fail_stream(stream, &session.to_string(), &record.reason)
                .await;
        }
        if let IngestMessage::StreamStarted(m) = &msg {
            if rec.is_none() {
                return self
                    .event(
                        stream,
                        &StreamEvent::StreamRejected {
                            stream: stream.to_string(),
                            session: m.session,
                            message: record.reason.clone(),
                        },
                    )
                    .await;
            }
        }
        Ok(())
    }
}

/// A worker's report: recorded with its stream (a report cannot fail a stream; the
/// attempt it was about is retried when its result is overdue).
fn dead_report(d: &DeadLetter, record: &mut DeadLetterRecord) {
    if let Ok(report) = decode::<WorkerReport>(&d.body) {
        let (kind, worker) = match &report {
            WorkerReport::SegmentStarted(r) => ("segment_started", &r.worker_id),
            WorkerReport::SegmentResult(r) => ("segment_result", &r.worker_id),
            WorkerReport::SegmentFailed(r) => ("segment_failed", &r.worker_id),
            WorkerReport::SegmentBounced(r) => ("segment_bounced", &r.worker_id),
        };
        record.kind = kind.into();
        if !record.reason.contains(&format!("worker {worker}")) {
            record.reason = format!("{} (worker {worker})", record.reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_words() {
        let mut d = DeadLetter {
            broker_reason: Some("delivery_limit".into()),
            deliveries: Some(50),
            ..Default::default()
        };
        assert!(d.why().contains("after 50 deliveries"), "{}", d.why());
        d.reason = Some("unreadable message: malformed".into());
        assert_eq!(d.why(), "unreadable message: malformed");
    }

    #[test]
    fn a_bad_body_still_names_a_valid_stream_only() {
        assert_eq!(
            named_in(br#"{"stream":"cam-1","seq":3,"version":9}"#),
            (Some("cam-1".into()), Some(3))
        );
        assert_eq!(named_in(br#"{"stream":"../etc"}"#), (None, None));
        assert_eq!(named_in(b"\xff\x00"), (None, None));
        // Not JSON at all (a number out of range): the name alone.
        assert_eq!(
            named_in(br#"{"stream" : "cam-2","seq":1e400}"#),
            (Some("cam-2".into()), None)
        );
        assert_eq!(named_in(br#"{"stream":"a/b","seq":1e400}"#), (None, None));
    }

    #[test]
    fn causes_are_a_few_labels() {
        let mut d = DeadLetter {
            reason: Some("refused".into()),
            deliveries: Some(1),
            ..Default::default()
        };
        assert_eq!(d.cause(), "refused");
        d.deliveries = Some(u64::from(castwork_cluster::consume::MAX_DELIVERIES));
        assert_eq!(d.cause(), "retries_exhausted");
        let d = DeadLetter {
            broker_reason: Some("expired".into()),
            ..Default::default()
        };
        assert_eq!(d.cause(), "expired");
        let d = DeadLetter {
            broker_reason: Some("anything else".into()),
            ..Default::default()
        };
        assert_eq!(d.cause(), "other");
        assert_eq!(crate::metrics::dead_letter_queue("jobs.vod.gpu"), "jobs");
        assert_eq!(crate::metrics::dead_letter_queue("forged"), "other");
    }
}
