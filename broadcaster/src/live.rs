//! Live streams: one task per live stream turns pieces (an RTMP segment's FLV, or a
//! segment pushed over HTTP) into source segments, stores and enqueues each one the moment
//! it is complete, and answers whoever waits for a segment's renditions.
//!
//! A stream starts with its first piece (whose probe gives the source metadata the
//! orchestrator needs to fit the ladder) and ends when its publisher has been gone for the
//! reconnect window (RTMP) or has sent nothing for the idle time (HTTP push). A publisher
//! that reconnects with the same key within the window continues the same stream, with a
//! discontinuity.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use castwork_cluster::Storage;
use castwork_media::{MediaError, RemuxedPiece};
use castwork_protocol::{
    profile::{parse_profiles, parse_transcoding_options},
    source_key, validate_stream_name, IngestMessage, ObjectRef, Profile, RenditionRef,
    SegmentReady, StreamEnded, StreamEvent, StreamMode, StreamStarted,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use uuid::Uuid;

use crate::link::Link;
use crate::rtmp::{Accepted, PublishRequest, Publishers, RtmpEvent};

/// How live ingest behaves.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub amqp_url: String,
    pub storage: Storage,
    /// The ladder of a stream whose auth webhook does not name one.
    pub ladder: Vec<Profile>,
    /// The live playlists' fixed `EXT-X-TARGETDURATION` (the longest segment let through).
    pub target_duration_secs: u32,
    /// Optional webhook asked about every RTMP publish (see [`authorize`]).
    pub auth_webhook: Option<String>,
    /// How long to wait for an orchestrator to admit a stream.
    pub admit_timeout: Duration,
    /// How long a disconnected RTMP publisher may take to come back to the same stream.
    pub reconnect_window: Duration,
    /// An HTTP-pushed stream ends after this long without a segment.
    pub http_idle: Duration,
}

/// What a waiting pusher gets back for its segment.
pub type SegmentOutcome = Result<Vec<RenditionRef>, String>;

/// One piece of a live stream on disk.
struct Piece {
    path: PathBuf,
    /// `flv` (RTMP) or `mpegts` (HTTP push): the only demuxer allowed to open it.
    format: &'static str,
    /// The sender's sequence number (HTTP push); RTMP pieces are numbered by the stream.
    seq: Option<u64>,
    arrived: SystemTime,
    duration_us: Option<i64>,
    reply: Option<oneshot::Sender<SegmentOutcome>>,
}

enum Cmd {
    Piece(Piece),
    /// The RTMP connection ended at `end_ms` of the stream's timeline.
    Disconnected {
        end_ms: i64,
    },
    /// The publisher came back: its next piece starts after a discontinuity.
    Reconnected,
}

/// How a stream is being fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    Rtmp,
    Http,
}

struct Entry {
    /// The stream task's session (a later stream under the same name has another).
    session: Uuid,
    feed: Feed,
    tx: mpsc::Sender<Cmd>,
    /// RTMP: a publisher is connected now.
    connected: bool,
    /// RTMP: where the timeline ended when the publisher left.
    end_ms: i64,
}

/// The live streams of this broadcaster.
pub struct Live {
    cfg: LiveConfig,
    streams: Mutex<HashMap<String, Entry>>,
    http: reqwest::Client,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The first timestamp of a live stream's timeline: room for B-frame decode delay, as the
/// on-demand cutter leaves.
const TIMELINE_START_MS: i64 = castwork_media::segment::MIN_START_US / 1000;

impl Live {
    pub fn new(cfg: LiveConfig) -> Arc<Live> {
        Arc::new(Live {
            cfg,
            streams: Mutex::new(HashMap::new()),
            http: reqwest::Client::new(),
        })
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a stream's entry unless a newer stream took the name.
    fn forget(&self, name: &str, session: Uuid) {
        let mut streams = self.streams();
        if streams.get(name).is_some_and(|e| e.session == session) {
            streams.remove(name);
        }
    }

    /// Starts the task of a new stream and registers it.
    fn start_stream(
        self: &Arc<Self>,
        name: &str,
        ladder: Vec<Profile>,
        feed: Feed,
    ) -> mpsc::Sender<Cmd> {
        let (tx, rx) = mpsc::channel(16);
        let task = StreamTask::new(self, name, ladder, feed);
        let session = task.session;
        self.streams().insert(
            name.to_string(),
            Entry {
                session,
                feed,
                tx: tx.clone(),
                connected: feed == Feed::Rtmp,
                end_ms: TIMELINE_START_MS,
            },
        );
        let live = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            if let Err(e) = task.run(rx).await {
                warn!(
                    stream = name,
                    error = format!("{e:#}"),
                    "live stream stopped"
                );
            }
            live.forget(&name, session);
        });
        tx
    }

    /// Takes one HTTP-pushed segment and waits until its renditions are done.
    pub async fn push_segment(
        self: &Arc<Self>,
        stream: &str,
        seq: u64,
        body: Bytes,
        duration_us: Option<i64>,
        wait: Duration,
    ) -> Result<Vec<RenditionRef>, PushError> {
        validate_stream_name(stream).map_err(PushError::BadRequest)?;
        let arrived = SystemTime::now();
        let dir = tempfile::tempdir().map_err(|e| PushError::Unavailable(e.to_string()))?;
        let path = dir.path().join("pushed.ts");
        tokio::fs::write(&path, &body)
            .await
            .map_err(|e| PushError::Unavailable(e.to_string()))?;
        let tx = {
            let existing = self.streams().get(stream).map(|e| (e.feed, e.tx.clone()));
            match existing {
                Some((Feed::Http, tx)) => tx,
                Some((Feed::Rtmp, _)) => {
                    return Err(PushError::Conflict(format!(
                        "stream {stream} is being published over RTMP"
                    )))
                }
                None => self.start_stream(stream, self.cfg.ladder.clone(), Feed::Http),
            }
        };
        let (reply, answer) = oneshot::channel();
        let piece = Piece {
            path,
            format: "mpegts",
            seq: Some(seq),
            arrived,
            duration_us,
            reply: Some(reply),
        };
        tx.send(Cmd::Piece(piece))
            .await
            .map_err(|_| PushError::Unavailable("the stream has ended".into()))?;
        let outcome = tokio::time::timeout(wait, answer).await.map_err(|_| {
            PushError::Timeout(format!(
                "segment {seq} was not transcoded within {} s",
                wait.as_secs()
            ))
        })?;
        drop(dir);
        match outcome {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(m)) => Err(PushError::Failed(m)),
            Err(_) => Err(PushError::Unavailable(
                "the stream stopped before the segment was done".into(),
            )),
        }
    }

    /// Asks the auth webhook about a publish: `Ok((stream name, ladder))` or why not.
    async fn authorize(&self, req: &PublishRequest) -> Result<(String, Vec<Profile>), String> {
        let Some(url) = &self.cfg.auth_webhook else {
            return Ok((req.key.clone(), self.cfg.ladder.clone()));
        };
        authorize(&self.http, url, req, &self.cfg.ladder).await
    }
}

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

/// The RTMP server's view of the live streams.
pub struct RtmpIngest(pub Arc<Live>);

impl Publishers for RtmpIngest {
    async fn publish(&self, req: PublishRequest) -> Result<Accepted, String> {
        self.0.publish_rtmp(req).await
    }
}

impl Live {
    /// Decides on an RTMP publish: a new stream, or the same stream continued by a
    /// publisher that reconnected within the window.
    async fn publish_rtmp(self: &Arc<Self>, req: PublishRequest) -> Result<Accepted, String> {
        if req.app != "live" {
            return Err(format!(
                "unknown application {:?}: publish to rtmp://HOST/live/STREAM_KEY",
                req.app
            ));
        }
        if req.key.is_empty()
            || req.key.len() > 256
            || req.key.chars().any(|c| c.is_control() || c == '/')
        {
            return Err("bad stream key: publish to rtmp://HOST/live/STREAM_KEY".into());
        }
        let (name, ladder) = self.authorize(&req).await?;
        validate_stream_name(&name).map_err(|e| format!("bad stream name: {e}"))?;
        let (sink, mut events) = mpsc::channel::<RtmpEvent>(8);
        let (tx, base_ms) = {
            let mut streams = self.streams();
            match streams.get_mut(&name) {
                Some(e) if e.feed == Feed::Http || e.connected => {
                    return Err(format!("stream {name} is already publishing"));
                }
                Some(e) => {
                    e.connected = true;
                    (Some(e.tx.clone()), e.end_ms)
                }
                None => (None, TIMELINE_START_MS),
            }
        };
        let tx = match tx {
            Some(tx) => {
                info!(stream = name, peer = %req.peer, "publisher reconnected: the stream continues");
                if tx.send(Cmd::Reconnected).await.is_err() {
                    return Err(format!("stream {name} has just ended: publish again"));
                }
                tx
            }
            None => {
                info!(stream = name, peer = %req.peer, "live stream starting");
                self.start_stream(&name, ladder, Feed::Rtmp)
            }
        };
        // Forward the connection's segments to the stream's task.
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let cmd = match ev {
                    RtmpEvent::Segment(seg) => {
                        let dir =
                            std::env::temp_dir().join(format!("castwork-live-{}", Uuid::now_v7()));
                        let path = dir.with_extension("flv");
                        if let Err(e) = tokio::fs::write(&path, &seg.bytes).await {
                            warn!(error = %e, "cannot store a live segment: the stream ends");
                            break;
                        }
                        Cmd::Piece(Piece {
                            path,
                            format: "flv",
                            seq: None,
                            arrived: seg.arrived,
                            duration_us: seg.duration_ms.map(|d| d * 1000),
                            reply: None,
                        })
                    }
                    RtmpEvent::Ended { end_ms, error } => {
                        if let Some(e) = error {
                            warn!(error = e, "publisher dropped");
                        }
                        let _ = tx.send(Cmd::Disconnected { end_ms }).await;
                        break;
                    }
                };
                if tx.send(cmd).await.is_err() {
                    // The stream was refused or stopped: dropping `events` closes the
                    // connection.
                    break;
                }
            }
        });
        Ok(Accepted { sink, base_ms })
    }
}

/// Why an HTTP push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// The segment or stream was refused or failed.
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
}

/// The state of one live stream's task.
struct StreamTask {
    live: Arc<Live>,
    name: String,
    session: Uuid,
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
    /// Why the orchestrator refused the stream, once it did.
    refused: Option<String>,
}

impl StreamTask {
    fn new(live: &Arc<Live>, name: &str, ladder: Vec<Profile>, feed: Feed) -> Self {
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
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) -> anyhow::Result<()> {
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
                    if self.refused.is_some() {
                        // Refuse whatever is queued, then stop: the publisher is cut off.
                        rx.close();
                        while let Some(Cmd::Piece(p)) = rx.recv().await {
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
        if self.refused.is_none() {
            info!(
                stream = self.name,
                segments = self.segments,
                "live stream ended"
            );
            link.publish(&IngestMessage::StreamEnded(StreamEnded {
                stream: self.name.clone(),
                session: self.session,
                segments: self.segments,
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
                self.refused = Some(message);
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
            anyhow::bail!("the orchestrator refused the stream: {why}");
        }
        if self.dir.is_none() {
            self.dir = Some(tempfile::tempdir().context("creating a temporary directory")?);
        }
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default();
        let (input, offset) = (path.to_path_buf(), self.offset_us);
        let piece: RemuxedPiece = tokio::task::spawn_blocking(move || {
            castwork_media::remux_piece(&input, format, &dir, seq, offset)
        })
        .await?
        .map_err(|e: MediaError| anyhow::anyhow!("unreadable segment: {e}"))?;
        self.offset_us = Some(piece.offset_us);
        if self.link.is_none() {
            self.open(&piece).await?;
        }
        let seg = &piece.segment;
        let data = Bytes::from(tokio::fs::read(&seg.path).await?);
        let _ = tokio::fs::remove_file(&seg.path).await;
        let key = source_key(&self.name, seq, piece.probed.container.extension());
        let object = ObjectRef {
            key: key.clone(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(&data)),
        };
        self.live
            .cfg
            .storage
            .put(&key, data)
            .await
            .with_context(|| format!("storing {key}"))?;
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
        });
        if let Some(link) = self.link.as_mut() {
            link.publish(&msg).await?;
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
            broadcaster: None,
            target_duration_secs: Some(cfg.target_duration_secs),
        }))
        .await?;
        let session = self.session;
        let admitted = tokio::time::timeout(cfg.admit_timeout, async {
            loop {
                match link.next_event().await? {
                    StreamEvent::StreamAdmitted {
                        session: s, rungs, ..
                    } if s == session => return Ok(rungs.len()),
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
                info!(stream = self.name, rungs, "live stream admitted");
                self.link = Some(link);
                Ok(())
            }
            Ok(Err(e)) => {
                link.close().await;
                self.refused = Some(format!("{e:#}"));
                anyhow::bail!("the orchestrator refused the stream: {e:#}")
            }
            Err(_) => {
                link.close().await;
                self.refused = Some("no orchestrator answered".into());
                anyhow::bail!(
                    "no orchestrator answered within {} s",
                    cfg.admit_timeout.as_secs()
                )
            }
        }
    }
}

/// The next event of an open link; pending forever without one.
async fn next_event(link: &mut Option<Link>) -> anyhow::Result<StreamEvent> {
    match link.as_mut() {
        Some(l) => l.next_event().await,
        None => std::future::pending().await,
    }
}
