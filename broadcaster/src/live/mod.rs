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

use castwork_cluster::Storage;
use castwork_protocol::{validate_stream_name, Profile, RenditionRef};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use uuid::Uuid;

use crate::rtmp::{Accepted, PublishRequest, Publishers, Refusal, RtmpEvent};

pub mod auth;
mod stream;

pub use auth::{authorize, Denied, Grant, IngestAuth, KeyStore, Publish};
use stream::StreamTask;

/// How live ingest behaves.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub amqp_url: String,
    pub storage: Storage,
    /// The ladder of a stream whose auth webhook does not name one.
    pub ladder: Vec<Profile>,
    /// The live playlists' fixed `EXT-X-TARGETDURATION` (the longest segment let through).
    pub target_duration_secs: u32,
    /// Who may publish (see [`IngestAuth`]).
    pub auth: IngestAuth,
    /// How long to wait for an orchestrator to admit a stream.
    pub admit_timeout: Duration,
    /// How long a disconnected RTMP publisher may take to come back to the same stream.
    pub reconnect_window: Duration,
    /// An HTTP-pushed stream ends after this long without a segment.
    pub http_idle: Duration,
    /// The account that pays a priced orchestrator for these live streams.
    pub broadcaster: Option<String>,
    /// How far ahead of the highest segment received an HTTP-pushed sequence number may be.
    pub max_seq_ahead: u64,
    /// On-chain mode: signs the tickets attached to every live segment (its account is
    /// then the streams' broadcaster).
    pub payer: Option<Arc<crate::payer::Payer>>,
}

/// The containers a pushed segment may come in, as go-livepeer takes them: MPEG-TS
/// (`SEQ.ts`) or MP4 (`SEQ.mp4`, fragmented or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushFormat {
    Ts,
    Mp4,
}

impl PushFormat {
    /// The format of a pushed file name's extension, and its sequence number part.
    pub fn of(file: &str) -> Option<(&str, PushFormat)> {
        file.strip_suffix(".ts")
            .map(|s| (s, PushFormat::Ts))
            .or_else(|| file.strip_suffix(".mp4").map(|s| (s, PushFormat::Mp4)))
    }

    /// The only demuxer allowed to open it.
    fn demuxer(self) -> &'static str {
        match self {
            PushFormat::Ts => "mpegts",
            PushFormat::Mp4 => "mov",
        }
    }
}

/// What a waiting pusher gets back for its segment.
pub type SegmentOutcome = Result<Vec<RenditionRef>, String>;

/// One piece of a live stream on disk.
pub(crate) struct Piece {
    path: PathBuf,
    /// `flv` (RTMP), `mpegts` or `mov` (HTTP push): the only demuxer allowed to open it.
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
    /// HTTP push: what every segment after the first must carry (none when the push path
    /// is a stream key, which authenticates each segment itself).
    push_token: Option<String>,
    /// RTMP: tells the connected publisher why the stream was refused, cutting it off.
    cut_off: Option<oneshot::Sender<String>>,
}

/// An HTTP push let in, before its body is read.
pub struct Admitted {
    /// The stream the segment goes to.
    pub stream: String,
    tx: mpsc::Sender<Cmd>,
    /// The stream's push token, when this push started the stream: later segments must
    /// carry it.
    pub new_token: Option<String>,
}

/// The header that carries a pushed stream's token.
pub const PUSH_TOKEN_HEADER: &str = "castwork-push-token";
/// Shortest push token a client may choose for its stream.
const MIN_PUSH_TOKEN: usize = 16;

/// The live streams of this broadcaster.
pub struct Live {
    cfg: LiveConfig,
    streams: Mutex<HashMap<String, Entry>>,
    /// HTTP push paths (`/live/PATH/SEQ.ts`) of running streams -> the stream's name (a
    /// webhook may name the stream differently).
    http_paths: Mutex<HashMap<String, String>>,
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
            http_paths: Mutex::new(HashMap::new()),
            http: reqwest::Client::new(),
        })
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn http_paths(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.http_paths.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a stream's entry unless a newer stream took the name.
    fn forget(&self, name: &str, session: Uuid) {
        let mut streams = self.streams();
        if streams.get(name).is_some_and(|e| e.session == session) {
            streams.remove(name);
            self.http_paths().retain(|_, n| n != name);
        }
    }

    /// Tells the RTMP publisher of stream `name` (unless a newer stream took the name) why
    /// the stream stops, which cuts it off.
    fn cut_off(&self, name: &str, session: Uuid, why: &str) {
        let mut streams = self.streams();
        if let Some(e) = streams.get_mut(name).filter(|e| e.session == session) {
            if let Some(tx) = e.cut_off.take() {
                let _ = tx.send(why.to_string());
            }
        }
    }

    /// Starts a stream's task with the streams' lock held, so two publishers cannot both
    /// start one name.
    fn start_locked(
        self: &Arc<Self>,
        streams: &mut HashMap<String, Entry>,
        name: &str,
        ladder: Vec<Profile>,
        feed: Feed,
        push_token: Option<String>,
    ) -> mpsc::Sender<Cmd> {
        let (tx, rx) = mpsc::channel(16);
        let task = StreamTask::new(self, name, ladder, feed);
        let session = task.session;
        streams.insert(
            name.to_string(),
            Entry {
                session,
                feed,
                tx: tx.clone(),
                connected: feed == Feed::Rtmp,
                end_ms: TIMELINE_START_MS,
                push_token,
                cut_off: None,
            },
        );
        let live = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            if let Err(e) = task.run(rx).await {
                let error = format!("{e:#}");
                warn!(stream = name, error, "live stream stopped");
                live.cut_off(&name, session, &format!("the live stream stopped: {error}"));
            }
            live.forget(&name, session);
        });
        tx
    }

    /// The running HTTP-pushed stream `name`'s channel, if `token` is its push token.
    fn joined(
        &self,
        name: &str,
        token: Option<&str>,
    ) -> Result<Option<mpsc::Sender<Cmd>>, PushError> {
        let streams = self.streams();
        let Some(e) = streams.get(name) else {
            return Ok(None);
        };
        if e.feed == Feed::Rtmp {
            return Err(PushError::Conflict(format!(
                "stream {name} is being published over RTMP"
            )));
        }
        match (&e.push_token, token) {
            (None, _) => Ok(Some(e.tx.clone())),
            (Some(want), Some(got)) if castwork_protocol::secret::same_secret(want, got) => {
                Ok(Some(e.tx.clone()))
            }
            _ => Err(PushError::Forbidden(format!(
                "stream {name} is being pushed by another publisher: send the \
                 {PUSH_TOKEN_HEADER} header that the answer to its first segment carried"
            ))),
        }
    }

    /// Admits an HTTP push to `path` (`/live/PATH/SEQ.ts`) before its body is read: the
    /// running stream it continues needs its push token (or, with stream keys, the key as
    /// `path`); a new one needs the ingest check, and gets its push token.
    pub async fn admit_push(
        self: &Arc<Self>,
        path: &str,
        token: Option<&str>,
        peer: Option<std::net::SocketAddr>,
        config: Option<&auth::HeaderConfig>,
    ) -> Result<Admitted, PushError> {
        if path.is_empty() || path.len() > 256 || path.chars().any(|c| c.is_control()) {
            return Err(PushError::BadRequest(
                "push to /live/STREAM/SEQ.ts (or /live/STREAM_KEY/SEQ.ts)".into(),
            ));
        }
        let admitted = |stream, tx, new_token| Admitted {
            stream,
            tx,
            new_token,
        };
        let keyed = self.cfg.auth.keyed();
        if !keyed {
            let running = self.http_paths().get(path).cloned();
            if let Some(name) = running {
                if let Some(tx) = self.joined(&name, token)? {
                    return Ok(admitted(name, tx, None));
                }
            }
        }
        let req = Publish {
            via: "http",
            key: path,
            peer,
        };
        let mut grant = self
            .cfg
            .auth
            .check(&self.http, &req, &self.cfg.ladder)
            .await
            .map_err(|e| PushError::Forbidden(e.to_string()))?;
        if let Some(c) = config {
            auth::apply_header(&mut grant, c, self.cfg.auth.open(), &self.cfg.ladder)
                .map_err(PushError::Forbidden)?;
        }
        validate_stream_name(&grant.stream)
            .map_err(|e| PushError::BadRequest(format!("bad stream name: {e}")))?;
        if let Some(tx) = self.joined(&grant.stream, if keyed { None } else { token })? {
            return Ok(admitted(grant.stream, tx, None));
        }
        // The webhook's token, else the one the client chose for its stream (so it can push
        // its next segments before the first one's answer), else a new one.
        let token = match (keyed, grant.push_token, token) {
            (true, _, _) => None,
            (false, Some(t), _) => Some(t),
            (false, None, Some(t)) if (MIN_PUSH_TOKEN..=256).contains(&t.len()) => {
                Some(t.to_string())
            }
            (false, None, Some(_)) => {
                return Err(PushError::BadRequest(format!(
                    "a push token the client chooses must be {MIN_PUSH_TOKEN}-256 characters"
                )))
            }
            (false, None, None) => {
                Some(auth::random_hex(16).map_err(|e| PushError::Unavailable(e.to_string()))?)
            }
        };
        let tx = {
            let mut streams = self.streams();
            if streams.contains_key(&grant.stream) {
                // Another publisher started it meanwhile.
                drop(streams);
                return match self.joined(&grant.stream, None)? {
                    Some(tx) => Ok(admitted(grant.stream, tx, None)),
                    None => Err(PushError::Unavailable("the stream has just ended".into())),
                };
            }
            self.start_locked(
                &mut streams,
                &grant.stream,
                grant.ladder,
                Feed::Http,
                token.clone(),
            )
        };
        if !keyed {
            self.http_paths()
                .insert(path.to_string(), grant.stream.clone());
        }
        Ok(admitted(grant.stream, tx, token))
    }

    /// Hands a pushed segment (its file in `dir`, which this removes) to its stream's
    /// task and waits up to `wait` for its renditions.
    pub async fn send_pushed(
        &self,
        to: &Admitted,
        seq: u64,
        file: (tempfile::TempDir, std::path::PathBuf, PushFormat),
        duration_us: Option<i64>,
        wait: Duration,
    ) -> Result<Vec<RenditionRef>, PushError> {
        let (dir, path, format) = file;
        let arrived = SystemTime::now();
        let tx = &to.tx;
        let (reply, answer) = oneshot::channel();
        let piece = Piece {
            path,
            format: format.demuxer(),
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
}

/// The RTMP server's view of the live streams.
pub struct RtmpIngest(pub Arc<Live>);

impl Publishers for RtmpIngest {
    async fn publish(&self, req: PublishRequest) -> Result<Accepted, Refusal> {
        self.0.publish_rtmp(req).await
    }
}

impl Live {
    /// Decides on an RTMP publish: a new stream, or the same stream continued by a
    /// publisher that reconnected within the window.
    async fn publish_rtmp(self: &Arc<Self>, req: PublishRequest) -> Result<Accepted, Refusal> {
        if req.app != "live" {
            return Err(Refusal::bad_name(format!(
                "unknown application {:?}: publish to rtmp://HOST/live/STREAM_KEY",
                req.app
            )));
        }
        if req.key.is_empty()
            || req.key.len() > 256
            || req.key.chars().any(|c| c.is_control() || c == '/')
        {
            return Err(Refusal::bad_name(
                "bad stream key: publish to rtmp://HOST/live/STREAM_KEY",
            ));
        }
        let publish = Publish {
            via: "rtmp",
            key: &req.key,
            peer: Some(req.peer),
        };
        let Grant {
            stream: name,
            ladder,
            ..
        } = self
            .cfg
            .auth
            .check(&self.http, &publish, &self.cfg.ladder)
            .await
            .map_err(|e| match e {
                Denied::UnknownKey => Refusal::bad_name(e.to_string()),
                Denied::Refused(why) => Refusal::rejected(why),
            })?;
        validate_stream_name(&name)
            .map_err(|e| Refusal::bad_name(format!("bad stream name: {e}")))?;
        let (sink, mut events) = mpsc::channel::<RtmpEvent>(8);
        let (cut_off, cut_off_rx) = oneshot::channel();
        let (tx, base_ms, reconnected) = {
            let mut streams = self.streams();
            match streams.get_mut(&name) {
                Some(e) if e.feed == Feed::Http || e.connected => {
                    return Err(Refusal::bad_name(format!(
                        "stream {name} is already publishing"
                    )));
                }
                Some(e) => {
                    e.connected = true;
                    e.cut_off = Some(cut_off);
                    (e.tx.clone(), e.end_ms, true)
                }
                None => {
                    info!(stream = name, peer = %req.peer, "live stream starting");
                    let tx = self.start_locked(&mut streams, &name, ladder, Feed::Rtmp, None);
                    if let Some(e) = streams.get_mut(&name) {
                        e.cut_off = Some(cut_off);
                    }
                    (tx, TIMELINE_START_MS, false)
                }
            }
        };
        if reconnected {
            info!(stream = name, peer = %req.peer, "publisher reconnected: the stream continues");
            if tx.send(Cmd::Reconnected).await.is_err() {
                return Err(Refusal::rejected(format!(
                    "stream {name} has just ended: publish again"
                )));
            }
        }
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
                if let Err(mpsc::error::SendError(cmd)) = tx.send(cmd).await {
                    // The stream was refused or stopped: dropping `events` closes the
                    // connection.
                    if let Cmd::Piece(p) = cmd {
                        let _ = tokio::fs::remove_file(&p.path).await;
                    }
                    break;
                }
            }
        });
        Ok(Accepted {
            sink,
            base_ms,
            cut_off: cut_off_rx,
        })
    }
}

/// Why an HTTP push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{0}")]
    BadRequest(String),
    /// Not allowed to publish (no or a wrong key or token, or the webhook said no).
    #[error("{0}")]
    Forbidden(String),
    /// The body is over this many bytes.
    #[error("a pushed segment may be at most {} MiB", .0 >> 20)]
    TooLarge(usize),
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
