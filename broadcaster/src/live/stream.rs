//! One live stream's task: turns pieces into source segments, announces the stream with
//! its first piece and waits for admission, stores and enqueues every segment at once,
//! answers waiting pushers from the orchestrator's events, and closes the stream.

use castwork_cluster::telemetry::Span;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use castwork_media::{MediaError, RemuxedPiece};
use castwork_protocol::{
    source_key, IngestMessage, ObjectRef, Profile, Rung, SegmentReady, StreamAborted, StreamEnded,
    StreamEvent, StreamMode, StreamStarted,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use uuid::Uuid;

use super::{unix_ms, Cmd, Feed, Live, Piece, SegmentOutcome};
use crate::link::Link;

/// The state of one live stream's task.
pub(super) struct StreamTask {
    live: Arc<Live>,
    name: String,
    pub(super) session: Uuid,
    ladder: Vec<Profile>,
    feed: Feed,
    link: Option<Link>,
    dir: Option<tempfile::TempDir>,
    /// Timestamp shift of the stream (fixed by its first piece).
    offset_us: Option<i64>,
    next_seq: u64,
    /// Highest sequence number sent + 1.
    segments: u64,
    discontinuity: bool,
    waiters: HashMap<u64, Vec<oneshot::Sender<SegmentOutcome>>>,
    /// Why the stream was refused (the orchestrator said no, or nobody answered), in words
    /// for the publisher, once it was.
    refused: Option<String>,
    /// The admitted rungs and the source frame rate (what a segment's tickets pay for).
    rungs: Vec<Rung>,
    fps: f64,
}

impl StreamTask {
    pub(super) fn new(live: &Arc<Live>, name: &str, ladder: Vec<Profile>, feed: Feed) -> Self {
        StreamTask {
            live: live.clone(),
            name: name.to_string(),
            session: Uuid::now_v7(),
            ladder,
            feed,
            link: None,
            dir: None,
            offset_us: None,
            next_seq: 0,
            segments: 0,
            discontinuity: false,
            waiters: HashMap::new(),
            refused: None,
            rungs: Vec::new(),
            fps: 0.0,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) -> anyhow::Result<()> {
        let cfg = self.live.cfg.clone();
        // RTMP: ends when the publisher stays away; HTTP: when pushes stop.
        let mut idle_deadline: Option<tokio::time::Instant> = match self.feed {
            Feed::Rtmp => None,
            Feed::Http => Some(tokio::time::Instant::now() + cfg.http_idle),
        };
        loop {
            let sleep_until = idle_deadline
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
            let cmd = tokio::select! {
                cmd = rx.recv() => cmd,
                ev = next_event(&mut self.link) => {
                    self.on_event(ev?);
                    if let Some(why) = &self.refused {
                        self.live.cut_off(&self.name, self.session, why);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(sleep_until) => {
                    // A pusher still waiting for its renditions keeps the stream open.
                    self.waiters.retain(|_, w| {
                        w.retain(|tx| !tx.is_closed());
                        !w.is_empty()
                    });
                    if self.feed == Feed::Http && !self.waiters.is_empty() {
                        idle_deadline = Some(tokio::time::Instant::now() + cfg.http_idle);
                        continue;
                    }
                    None
                }
            };
            match cmd {
                Some(Cmd::Piece(p)) => {
                    if self.feed == Feed::Http {
                        idle_deadline = Some(tokio::time::Instant::now() + cfg.http_idle);
                    }
                    self.piece(p).await;
                    if let Some(why) = &self.refused {
                        // Tell the RTMP publisher and refuse whatever is queued, then stop:
                        // the publisher is cut off.
                        self.live.cut_off(&self.name, self.session, why);
                        rx.close();
                        while let Some(cmd) = rx.recv().await {
                            let Cmd::Piece(p) = cmd else { continue };
                            if p.format == "flv" {
                                let _ = tokio::fs::remove_file(&p.path).await;
                            }
                            if let Some(r) = p.reply {
                                let _ = r.send(Err(self.refused.clone().unwrap_or_default()));
                            }
                        }
                        break;
                    }
                }
                Some(Cmd::Disconnected { end_ms }) => {
                    if let Some(e) = self.live.streams().get_mut(&self.name) {
                        e.connected = false;
                        e.end_ms = end_ms;
                        e.cut_off = None;
                    }
                    idle_deadline = Some(tokio::time::Instant::now() + cfg.reconnect_window);
                }
                Some(Cmd::Reconnected) => {
                    self.discontinuity = true;
                    idle_deadline = None;
                }
                None => break,
            }
        }
        // Nothing else may join this stream now.
        self.live.forget(&self.name, self.session);
        rx.close();
        self.end().await
    }

    /// Closes the stream with every segment sent, then answers the pushers still waiting.
    async fn end(mut self) -> anyhow::Result<()> {
        let Some(mut link) = self.link.take() else {
            return Ok(());
        };
        if self.refused.is_none() && self.segments == 0 {
            // Opened, but no segment could be stored or sent: nothing to finish.
            warn!(
                stream = self.name,
                "live stream ended before any segment was sent"
            );
            link.publish(&IngestMessage::StreamAborted(StreamAborted {
                stream: self.name.clone(),
                session: self.session,
                reason: "the live stream ended before any segment could be sent".into(),
                secret: String::new(),
            }))
            .await?;
        } else if self.refused.is_none() {
            info!(
                stream = self.name,
                segments = self.segments,
                "live stream ended"
            );
            link.publish(&IngestMessage::StreamEnded(StreamEnded {
                stream: self.name.clone(),
                session: self.session,
                segments: self.segments,
                secret: String::new(),
            }))
            .await?;
        }
        // Pushers still waiting get their answer while the tail is transcoded.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !self.waiters.is_empty() {
            match tokio::time::timeout_at(deadline, link.next_event()).await {
                Ok(Ok(ev)) => self.on_event(ev),
                _ => break,
            }
        }
        link.close().await;
        Ok(())
    }

    fn answer(&mut self, seq: u64, outcome: SegmentOutcome) {
        for w in self.waiters.remove(&seq).unwrap_or_default() {
            let _ = w.send(outcome.clone());
        }
    }

    fn on_event(&mut self, ev: StreamEvent) {
        match ev {
            StreamEvent::SegmentTranscoded {
                seq, renditions, ..
            } => self.answer(seq, Ok(renditions)),
            StreamEvent::SegmentFailed { seq, message, .. } => {
                self.answer(seq, Err(format!("segment {seq} failed: {message}")))
            }
            StreamEvent::SegmentSkipped { seq, reason, .. } => {
                self.answer(seq, Err(format!("segment {seq} was skipped: {reason}")))
            }
            StreamEvent::StreamRejected {
                message, session, ..
            } if session == self.session => {
                warn!(
                    stream = self.name,
                    message, "orchestrator refused the live stream"
                );
                self.refused = Some(refusal_text(&message));
            }
            _ => {}
        }
    }

    /// Handles one piece: remux, start the stream if it is the first, store, enqueue.
    async fn piece(&mut self, p: Piece) {
        let Piece {
            path,
            format,
            seq,
            arrived,
            duration_us,
            reply,
        } = p;
        let seq = seq.unwrap_or(self.next_seq);
        let outcome = self
            .send_piece(&path, format, seq, arrived, duration_us)
            .await;
        if format == "flv" {
            let _ = tokio::fs::remove_file(&path).await;
        }
        crate::metrics::SEGMENTS
            .with_label_values(&[if outcome.is_ok() { "sent" } else { "refused" }])
            .inc();
        match outcome {
            Ok(()) => {
                if let Some(r) = reply {
                    self.waiters.entry(seq).or_default().push(r);
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                warn!(
                    stream = self.name,
                    seq,
                    error = message,
                    "live segment not sent"
                );
                if let Some(r) = reply {
                    let _ = r.send(Err(message));
                }
            }
        }
    }

    async fn send_piece(
        &mut self,
        path: &std::path::Path,
        format: &'static str,
        seq: u64,
        arrived: SystemTime,
        duration_us: Option<i64>,
    ) -> anyhow::Result<()> {
        if let Some(why) = &self.refused {
            anyhow::bail!("{why}");
        }
        let window = self.live.cfg.max_seq_ahead;
        if seq >= self.segments.saturating_add(window) {
            anyhow::bail!(
                "segment {seq} is more than {window} ahead of the highest segment received \
                 ({}): push segments in order",
                self.segments
                    .checked_sub(1)
                    .map_or("none".into(), |h| h.to_string())
            );
        }
        if self.dir.is_none() {
            self.dir = Some(tempfile::tempdir().context("creating a temporary directory")?);
        }
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default();
        // The segment's trace starts when its last byte arrived.
        let span = Span::root(
            "segment",
            Some(arrived),
            &[("stream", self.name.clone()), ("seq", seq.to_string())],
        );
        let (input, offset) = (path.to_path_buf(), self.offset_us);
        let remux = span.child("remux", &[("from", format.to_string())]);
        let piece: RemuxedPiece = tokio::task::spawn_blocking(move || {
            castwork_media::remux_piece(&input, format, &dir, seq, offset)
        })
        .await?
        .map_err(|e: MediaError| {
            remux.fail(e.to_string());
            anyhow::anyhow!("unreadable segment: {e}")
        })?;
        drop(remux);
        self.offset_us = Some(piece.offset_us);
        if self.link.is_none() {
            self.open(&piece).await?;
        }
        let seg = &piece.segment;
        let payment = match &self.live.cfg.payer {
            Some(p) => p
                .pay(&self.rungs, seg.frames, self.fps)
                .await
                .context("signing the segment's tickets")?,
            None => None,
        };
        let upload = span.child("upload source", &[]);
        let data = Bytes::from(tokio::fs::read(&seg.path).await?);
        let _ = tokio::fs::remove_file(&seg.path).await;
        let key = source_key(&self.name, seq, piece.probed.container.extension());
        let object = ObjectRef::of(key.clone(), &data);
        let size = object.size;
        self.live
            .cfg
            .storage
            .put(&key, data)
            .await
            .with_context(|| format!("storing {key}"))?;
        crate::metrics::BYTES
            .with_label_values(&["in"])
            .inc_by(size);
        drop(upload);
        let msg = IngestMessage::SegmentReady(SegmentReady {
            stream: self.name.clone(),
            session: self.session,
            seq,
            start_us: seg.start_us,
            duration_us: duration_us.filter(|d| *d > 0).unwrap_or(seg.duration_us),
            last_pts_us: seg.last_pts_us,
            frames: seg.frames,
            has_audio: seg.audio_packets > 0,
            object,
            arrived_unix_ms: Some(unix_ms(arrived)),
            discontinuity: std::mem::take(&mut self.discontinuity),
            payment,
            secret: String::new(),
        });
        if let Some(link) = self.link.as_mut() {
            let publish = span.child("publish segment", &[]);
            link.publish_in(&msg, &publish).await?;
        }
        self.next_seq = self.next_seq.max(seq + 1);
        self.segments = self.segments.max(seq + 1);
        Ok(())
    }

    /// Announces the stream with its first piece's metadata and waits for admission.
    async fn open(&mut self, first: &RemuxedPiece) -> anyhow::Result<()> {
        let cfg = &self.live.cfg;
        let mut link = Link::open(&cfg.amqp_url, &self.name, self.session).await?;
        link.publish(&IngestMessage::StreamStarted(StreamStarted {
            stream: self.name.clone(),
            session: self.session,
            mode: StreamMode::Live,
            ladder: self.ladder.clone(),
            source: first.probed.metadata.clone(),
            broadcaster: match &cfg.payer {
                Some(p) => Some(p.address().to_string()),
                None => cfg.broadcaster.clone(),
            },
            target_duration_secs: Some(cfg.target_duration_secs),
            secret: String::new(),
        }))
        .await?;
        let session = self.session;
        let admitted = tokio::time::timeout(cfg.admit_timeout, async {
            loop {
                match link.next_event().await? {
                    StreamEvent::StreamAdmitted {
                        session: s, rungs, ..
                    } if s == session => return Ok(rungs),
                    StreamEvent::StreamRejected {
                        message,
                        session: s,
                        ..
                    } if s == session => return Err(anyhow::anyhow!(message)),
                    _ => {}
                }
            }
        })
        .await;
        match admitted {
            Ok(Ok(rungs)) => {
                info!(
                    stream = self.name,
                    rungs = rungs.len(),
                    "live stream admitted"
                );
                self.rungs = rungs;
                self.fps = first.probed.metadata.frame_rate.as_f64();
                self.link = Some(link);
                Ok(())
            }
            Ok(Err(e)) => {
                link.close().await;
                let why = refusal_text(&format!("{e:#}"));
                self.refused = Some(why.clone());
                anyhow::bail!(why)
            }
            Err(_) => {
                link.close().await;
                let why = format!(
                    "no orchestrator answered within {} s: is one running on this broker?",
                    cfg.admit_timeout.as_secs()
                );
                self.refused = Some(why.clone());
                anyhow::bail!(why)
            }
        }
    }
}

/// The orchestrator's refusal of a live stream, in words for its publisher. Its advice for
/// an account names `broadcaster push`'s flag; a live stream's account is
/// `serve --live-broadcaster-id`'s.
fn refusal_text(message: &str) -> String {
    let message = message.replace(
        "push with --broadcaster-id ACCOUNT",
        "start `broadcaster serve` with --live-broadcaster-id ACCOUNT",
    );
    format!("the orchestrator refused the stream: {message}")
}

/// The next event of an open link; pending forever without one.
async fn next_event(link: &mut Option<Link>) -> anyhow::Result<StreamEvent> {
    match link.as_mut() {
        Some(l) => l.next_event().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pricing_refusal_names_the_live_flag() {
        let m = refusal_text(
            "this orchestrator charges 1 wei per 1 pixels: push with --broadcaster-id \
             ACCOUNT, an account credited with `orchestrator ledger credit ACCOUNT AMOUNT`",
        );
        assert!(
            m.contains("start `broadcaster serve` with --live-broadcaster-id ACCOUNT"),
            "{m}"
        );
        assert!(!m.contains("push with"), "{m}");
        assert!(m.starts_with("the orchestrator refused the stream: this orchestrator"));
        let other = refusal_text("insufficient balance: account a has 0 wei");
        assert_eq!(
            other,
            "the orchestrator refused the stream: insufficient balance: account a has 0 wei"
        );
    }
}
