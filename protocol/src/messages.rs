//! Wire messages exchanged over RabbitMQ, serialised as JSON with a `version` field.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

use crate::ladder::{Rung, SkippedRung};
use crate::profile::Profile;
use crate::time::Rational;

/// Version written into, and required of, every message.
pub const PROTOCOL_VERSION: u32 = 1;

/// Exchange the broadcaster publishes streams and segments to.
pub const INGEST_EXCHANGE: &str = "castwork.ingest";
/// Queue the orchestrators consume ingest messages from. Named apart from its exchange, so
/// a broker permission can let broadcasters publish into the exchange and never read the
/// queue (RabbitMQ matches one name pattern against both).
pub const INGEST_QUEUE: &str = "orchestrator.ingest";
/// Exchange segment jobs are published to, routed by queue name.
pub const JOBS_EXCHANGE: &str = "castwork.jobs";
/// Exchange workers publish results and failures to.
pub const RESULTS_EXCHANGE: &str = "castwork.results";
/// Queue the orchestrators consume worker reports from (named apart from its exchange, as
/// the ingest queue is).
pub const RESULTS_QUEUE: &str = "orchestrator.results";
/// The names the ingest and results queues had before they were named apart from their
/// exchanges, each with the queue that replaces it: an orchestrator unbinds such a queue,
/// drains what it still holds and deletes it once empty.
pub const LEGACY_QUEUES: [(&str, &str); 2] = [
    ("castwork.ingest", INGEST_QUEUE),
    ("castwork.results", RESULTS_QUEUE),
];
/// Topic exchange of per-stream events (`stream.<name>`), for broadcasters and dashboards.
pub const EVENTS_EXCHANGE: &str = "castwork.events";
/// Dead-letter exchange and queue: jobs past the broker's delivery limit or deadline, and
/// any message a consumer could not handle (with its reason in [`DEAD_REASON_HEADER`]).
pub const DEAD_LETTER_EXCHANGE: &str = "castwork.dlx";
pub const DEAD_LETTER_QUEUE: &str = "castwork.jobs.dead";
/// Where a dead letter goes that could not be recorded either (Redis stayed away): kept,
/// bounded, for an operator to read with its reason.
pub const PARKED_QUEUE: &str = "castwork.parked";
/// Exchange workers publish heartbeats to (`beat`), and the queue the orchestrators read
/// them from; each beat expires unread after [`BEAT_TTL_MS`].
pub const WORKERS_EXCHANGE: &str = "castwork.workers";
pub const BEATS_QUEUE: &str = "castwork.beats";
pub const BEAT_KEY: &str = "beat";
/// Seconds between a worker's heartbeats; one silent for three of them is gone.
pub const BEAT_INTERVAL_SECS: u64 = 5;
pub const BEAT_TTL_MS: u64 = 3 * BEAT_INTERVAL_SECS * 1000;
/// Headers a consumer puts on a message it dead-letters: why, from which queue, and after
/// how many deliveries.
pub const DEAD_REASON_HEADER: &str = "castwork-reason";
pub const DEAD_QUEUE_HEADER: &str = "castwork-queue";
pub const DEAD_DELIVERIES_HEADER: &str = "castwork-deliveries";

/// How far ahead of a stream's highest received segment number a new one may be, unless
/// configured otherwise (`--max-seq-ahead`): 1000 segments is over half an hour of 2 s
/// segments, and nothing a client sends makes more work than that.
pub const DEFAULT_MAX_SEQ_AHEAD: u64 = 1000;

/// AMQP header carrying the W3C trace context of the segment.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// On-demand or live work: they use separate queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StreamMode {
    #[default]
    Vod,
    Live,
}

impl StreamMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamMode::Vod => "vod",
            StreamMode::Live => "live",
        }
    }
}

/// The queue that carries jobs of a mode and capability class (`jobs.vod.cpu`).
pub fn job_queue(mode: StreamMode, class: &str) -> String {
    format!("jobs.{}.{class}", mode.as_str())
}

/// Routing key of a stream's events on the events exchange.
pub fn event_routing_key(stream: &str) -> String {
    format!("stream.{stream}")
}

/// Colour description of the source video, as FFmpeg names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ColorInfo {
    pub range: Option<String>,
    pub space: Option<String>,
    pub primaries: Option<String>,
    pub transfer: Option<String>,
}

/// What the broadcaster learned about the source when it probed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceMetadata {
    /// Coded width and height, in stored pixels.
    pub width: u32,
    pub height: u32,
    /// Sample (pixel) aspect ratio; 1/1 for square pixels.
    pub sample_aspect_ratio: Rational,
    /// Clockwise rotation, in degrees, to apply for display: 0, 90, 180 or 270.
    pub rotation: u32,
    /// Average frame rate.
    pub frame_rate: Rational,
    pub video_codec: String,
    pub pixel_format: String,
    pub color: ColorInfo,
    /// Whether the segments carry an (AAC) audio track.
    pub has_audio: bool,
    /// Duration of the whole source, when known (microseconds).
    pub duration_us: Option<i64>,
}

impl SourceMetadata {
    /// An upright source of `width` x `height` square pixels at `fps` frames per second,
    /// H.264 4:2:0 with AAC audio, length unknown: the common case, which tools and tests
    /// start from.
    pub fn upright(width: u32, height: u32, fps: i32) -> Self {
        SourceMetadata {
            width,
            height,
            sample_aspect_ratio: Rational::ONE,
            rotation: 0,
            frame_rate: Rational::new(fps, 1),
            video_codec: "h264".into(),
            pixel_format: "yuv420p".into(),
            color: ColorInfo::default(),
            has_audio: true,
            duration_us: None,
        }
    }
}

/// A reference to an object in the object store, with what its reader must check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

impl ObjectRef {
    /// The reference to `data` stored under `key`.
    pub fn of(key: String, data: &[u8]) -> ObjectRef {
        ObjectRef {
            key,
            size: data.len() as u64,
            sha256: crate::secret::sha256_hex(data),
        }
    }
}

/// Broadcaster -> orchestrator messages (the ingest exchange).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum IngestMessage {
    StreamStarted(StreamStarted),
    SegmentReady(SegmentReady),
    StreamEnded(StreamEnded),
    /// The publisher gave up on the stream (its source could not be read to the end): the
    /// orchestrator fails it with the reason and removes what it stored.
    StreamAborted(StreamAborted),
}

impl IngestMessage {
    /// What the message is (its type's name), which stream and push it is about, and the
    /// publisher secret it carries.
    pub fn about(&self) -> (&'static str, &str, Uuid, &str) {
        match self {
            IngestMessage::StreamStarted(m) => ("stream_started", &m.stream, m.session, &m.secret),
            IngestMessage::SegmentReady(m) => ("segment_ready", &m.stream, m.session, &m.secret),
            IngestMessage::StreamEnded(m) => ("stream_ended", &m.stream, m.session, &m.secret),
            IngestMessage::StreamAborted(m) => ("stream_aborted", &m.stream, m.session, &m.secret),
        }
    }

    /// The message with its stream's publisher secret (see [`StreamStarted::secret`]).
    pub fn with_secret(mut self, secret: &str) -> Self {
        let field = match &mut self {
            IngestMessage::StreamStarted(m) => &mut m.secret,
            IngestMessage::SegmentReady(m) => &mut m.secret,
            IngestMessage::StreamEnded(m) => &mut m.secret,
            IngestMessage::StreamAborted(m) => &mut m.secret,
        };
        *field = secret.to_string();
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamStarted {
    pub stream: String,
    /// Identifies one push: a redelivered `StreamStarted` carries the same session, a second
    /// push under a name already in use does not.
    pub session: Uuid,
    pub mode: StreamMode,
    pub ladder: Vec<Profile>,
    pub source: SourceMetadata,
    /// Who pays for the stream (free mode ignores it).
    #[serde(default)]
    pub broadcaster: Option<String>,
    /// Live only: the fixed `EXT-X-TARGETDURATION` of the live playlists, in seconds (the
    /// longest segment the broadcaster lets through).
    #[serde(default)]
    pub target_duration_secs: Option<u32>,
    /// The publisher's secret for this stream, chosen at random by the broadcaster: its
    /// `SegmentReady` and `StreamEnded` must carry it. The orchestrator keeps only its hash
    /// and never shows it, so knowing a stream's name and session is not enough to add to
    /// it or end it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentReady {
    pub stream: String,
    /// The push this segment belongs to (see [`StreamStarted::session`]).
    pub session: Uuid,
    pub seq: u64,
    /// Presentation time of the first video frame, in microseconds of the source timeline.
    pub start_us: i64,
    pub duration_us: i64,
    /// Presentation time of the segment's last-shown video frame, microseconds.
    pub last_pts_us: i64,
    /// Number of video frames in the segment.
    pub frames: u64,
    /// Whether this segment carries audio (a source's audio may start late or stop early).
    pub has_audio: bool,
    pub object: ObjectRef,
    /// Live only: Unix time (ms) at which the segment's last byte reached the broadcaster.
    #[serde(default)]
    pub arrived_unix_ms: Option<u64>,
    /// Live only: the first segment after the publisher reconnected (timestamps and codec
    /// parameters may change here).
    #[serde(default)]
    pub discontinuity: bool,
    /// On-chain mode: the tickets paying for this segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<crate::payment::Payment>,
    /// The stream's publisher secret (see [`StreamStarted::secret`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamEnded {
    pub stream: String,
    pub session: Uuid,
    /// Number of segments the stream has in all (sequence numbers 0..segments).
    pub segments: u64,
    /// The stream's publisher secret (see [`StreamStarted::secret`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamAborted {
    pub stream: String,
    pub session: Uuid,
    /// Why, in the publisher's user's words.
    pub reason: String,
    /// The stream's publisher secret (see [`StreamStarted::secret`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
}

/// Orchestrator -> worker: transcode one source segment into every rung.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentJob {
    pub job_id: Uuid,
    pub stream: String,
    pub seq: u64,
    /// 1 for the first try; each retry is a new attempt with its own output keys.
    pub attempt: u32,
    pub mode: StreamMode,
    pub source: ObjectRef,
    pub start_us: i64,
    pub duration_us: i64,
    pub frames: u64,
    pub rungs: Vec<Rung>,
    pub metadata: SourceMetadata,
    /// Unix time in milliseconds after which the result is useless (live only).
    pub deadline_unix_ms: Option<u64>,
    /// Workers whose output for this segment failed the orchestrator's check: the retry is
    /// for another worker, and one of these hands the job back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_workers: Vec<String>,
    /// Where the worker reads the source and writes the renditions, signed by the
    /// orchestrator for this attempt alone: a worker needs no object-store credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<JobObjects>,
}

/// The signed, expiring URLs of one job's objects (on the orchestrator's HTTP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobObjects {
    /// `GET` returns the source segment.
    pub source_url: String,
    /// `PUT` with `&rung=NAME` and a rendition as the body stores it under this attempt's
    /// key for that rung and those bytes, and answers the [`ObjectRef`] stored.
    pub upload_url: String,
}

impl SegmentJob {
    /// Object key of one rendition of this attempt with these bytes: unique per attempt and
    /// content, so no other run (a lost attempt, a redelivered job) can overwrite an
    /// accepted rendition.
    pub fn output_key(&self, rung: &str, sha256: &str) -> String {
        rendition_key(&self.stream, rung, self.seq, self.attempt, sha256)
    }
}

/// Object key of a source segment.
pub fn source_key(stream: &str, seq: u64, ext: &str) -> String {
    format!("streams/{stream}/source/{seq}.{ext}")
}

/// The container of a source segment, from its key: (file extension, FFmpeg demuxer).
pub fn source_container(key: &str) -> (&'static str, &'static str) {
    if key.ends_with(".mkv") {
        ("mkv", "matroska")
    } else {
        ("ts", "mpegts")
    }
}

/// Object key of a rendition segment: `SEQ.ATTEMPT.HASH.ts`, where HASH is the first 16 hex
/// digits of the content's SHA-256.
pub fn rendition_key(stream: &str, rung: &str, seq: u64, attempt: u32, sha256: &str) -> String {
    let hash = sha256.get(..16).unwrap_or(sha256);
    format!("streams/{stream}/{rung}/{seq}.{attempt}.{hash}.ts")
}

/// Object key of a rendition's media playlist.
pub fn media_playlist_key(stream: &str, rung: &str) -> String {
    format!("streams/{stream}/{rung}/index.m3u8")
}

/// Object key of a stream's master playlist.
pub fn master_playlist_key(stream: &str) -> String {
    format!("streams/{stream}/index.m3u8")
}

/// One rendition a worker produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenditionOutput {
    pub rung: String,
    pub object: ObjectRef,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub start_us: i64,
    pub duration_us: i64,
}

/// Whether retrying a failed job can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// The worker or a service had trouble: another attempt may succeed.
    Transient,
    /// The input itself is bad: no attempt will succeed.
    Permanent,
    /// A live segment past its deadline: skipped, not retried.
    Expired,
}

/// Worker -> orchestrator (the results exchange).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerReport {
    /// A worker began the job and will finish within `timeout_secs` or stop itself. Sent
    /// only for a job still running after the worker's `--start-notice-ms`: a short job's
    /// result says all the notice would.
    SegmentStarted(SegmentStarted),
    SegmentResult(SegmentResult),
    SegmentFailed(SegmentFailed),
    /// A worker whose output for this segment failed its check was given the retry: it
    /// hands the job back, and the orchestrator publishes it again for another worker
    /// (workers never publish jobs).
    SegmentBounced(SegmentBounced),
}

/// Header on a job counting how often excluded workers handed it back.
pub const BOUNCES_HEADER: &str = "x-castwork-bounces";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentBounced {
    pub job_id: Uuid,
    pub stream: String,
    pub seq: u64,
    pub attempt: u32,
    pub worker_id: String,
    /// How often the job has now been handed back (its [`BOUNCES_HEADER`] plus one).
    pub bounces: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentStarted {
    pub job_id: Uuid,
    pub stream: String,
    pub seq: u64,
    pub attempt: u32,
    pub worker_id: String,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentResult {
    pub job_id: Uuid,
    pub stream: String,
    pub seq: u64,
    pub attempt: u32,
    pub worker_id: String,
    pub renditions: Vec<RenditionOutput>,
    /// Wall time of decode + encode + mux, in milliseconds.
    pub transcode_ms: u64,
    /// When the worker received the job (Unix ms). Short jobs send no start notice, so
    /// this is where the orchestrator learns when the segment started.
    #[serde(default)]
    pub started_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentFailed {
    pub job_id: Uuid,
    pub stream: String,
    pub seq: u64,
    pub attempt: u32,
    pub worker_id: String,
    pub disposition: Disposition,
    pub message: String,
}

/// Worker -> orchestrator (the workers exchange), every [`BEAT_INTERVAL_SECS`] and at once
/// when a job starts or ends. Who sent it is the broker user the message carries, not
/// anything in it: `worker_id` only names the process within that user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerBeat {
    pub worker_id: String,
    pub host: String,
    pub pid: u32,
    pub class: String,
    pub slots: usize,
    pub busy_slots: usize,
    pub capabilities: Vec<String>,
    pub software: String,
    pub started_unix: u64,
    /// The GPUs this worker transcodes on (none for a CPU worker), as its self-test found
    /// them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceBeat>,
}

/// One GPU of a worker, in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceBeat {
    /// The CUDA device index.
    pub index: u32,
    /// Whether jobs still go to it (a device that failed jobs the CPU then did is taken
    /// out of service).
    pub healthy: bool,
    /// Jobs it may run at once (`--gpu-sessions`), and runs now.
    pub sessions: usize,
    pub sessions_used: usize,
    /// What its self-test passed: source codecs NVDEC decodes, whether NVENC encodes, and
    /// the largest picture decoded.
    pub decoders: Vec<String>,
    pub nvenc: bool,
    pub max_width: u32,
    pub max_height: u32,
}

/// Orchestrator -> worker, the answer to a beat (sent to its `reply-to`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BeatReply {
    /// The identity the orchestrator knows the worker by (what bans and metrics key on).
    pub identity: String,
    /// Set when the orchestrator banned this identity for bad output: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banned: Option<String>,
}

/// Where one accepted rendition of a segment is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenditionRef {
    pub rung: String,
    pub key: String,
    pub width: u32,
    pub height: u32,
}

/// A segment that could not be transcoded, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedSegment {
    pub seq: u64,
    pub message: String,
}

/// The object store an orchestrator works in: the id written in it (`.castwork/store-id`)
/// and its URL, absolute, as that orchestrator resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreIdentity {
    pub id: String,
    pub url: String,
}

/// Orchestrator -> anyone interested (the events exchange, `stream.<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The orchestrator admitted the stream with this fitted ladder.
    StreamAdmitted {
        stream: String,
        session: Uuid,
        rungs: Vec<Rung>,
        skipped: Vec<SkippedRung>,
        /// Where viewers will play the stream's master playlist (the orchestrator's
        /// `--playback-url`); absent from older orchestrators.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        playback_url: Option<String>,
        /// The object store the orchestrator reads the sources from, so a publisher can
        /// check it writes them there; absent from older orchestrators.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        store: Option<StoreIdentity>,
    },
    /// The orchestrator refused the stream.
    StreamRejected {
        stream: String,
        session: Uuid,
        message: String,
    },
    SegmentTranscoded {
        stream: String,
        seq: u64,
        /// The accepted renditions (object keys are relative to the object store).
        #[serde(default)]
        renditions: Vec<RenditionRef>,
        /// On-chain mode: the orchestrator's signed claim for the segment, its rendition
        /// hashes in the order of `renditions`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claim: Option<crate::payment::SignedClaim>,
    },
    /// A live segment that missed its deadline (or never arrived) and was left out.
    SegmentSkipped {
        stream: String,
        seq: u64,
        reason: String,
    },
    SegmentFailed {
        stream: String,
        seq: u64,
        message: String,
    },
    /// The stream failed for good (its publisher gave up, or one of its messages could not
    /// be handled), with the reason; nothing more of it is transcoded.
    StreamFailed { stream: String, reason: String },
    /// Every segment is resolved and the playlists are written.
    StreamCompleted {
        stream: String,
        segments: u64,
        master_playlist: String,
        failed: Vec<FailedSegment>,
    },
}

/// Largest message any Castwork process accepts: messages carry references, never media.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {0} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    Version(u32),
}

impl DecodeError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge(_) => "oversized",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::Version(_) => "version",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    version: u32,
    #[serde(flatten)]
    body: T,
}

/// Serialises a message with the protocol version.
pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    // Serialising these plain data types cannot fail.
    serde_json::to_vec(&Envelope {
        version: PROTOCOL_VERSION,
        body,
    })
    .unwrap_or_default()
}

/// Reads a message, checking its protocol version.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let v: VersionOnly = serde_json::from_slice(bytes)?;
    if v.version != PROTOCOL_VERSION {
        return Err(DecodeError::Version(v.version));
    }
    let env: Envelope<T> = serde_json::from_slice(bytes)?;
    Ok(env.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_version() {
        let m = IngestMessage::StreamEnded(StreamEnded {
            stream: "s".into(),
            session: Uuid::nil(),
            segments: 3,
            secret: String::new(),
        });
        let bytes = encode(&m);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""version":1"#), "{text}");
        assert!(text.contains(r#""type":"stream_ended""#), "{text}");
        assert_eq!(decode::<IngestMessage>(&bytes).unwrap(), m);
    }

    #[test]
    fn wrong_version_and_garbage_are_refused() {
        let e = decode::<IngestMessage>(br#"{"version":9,"type":"stream_ended"}"#).unwrap_err();
        assert!(matches!(e, DecodeError::Version(9)));
        assert!(decode::<IngestMessage>(b"\xff\x00").is_err());
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode::<IngestMessage>(&huge),
            Err(DecodeError::TooLarge(_))
        ));
        assert!(decode::<IngestMessage>(br#"{"version":1,"type":"nope"}"#).is_err());
    }

    #[test]
    fn stream_admitted_without_playback_or_store_still_reads() {
        // As an older orchestrator sends it.
        let old = br#"{"version":1,"type":"stream_admitted","stream":"s",
            "session":"00000000-0000-0000-0000-000000000000","rungs":[],"skipped":[]}"#;
        let StreamEvent::StreamAdmitted {
            playback_url,
            store,
            ..
        } = decode::<StreamEvent>(old).unwrap()
        else {
            panic!("not an admission");
        };
        assert_eq!((playback_url, store), (None, None));
        let new = StreamEvent::StreamAdmitted {
            stream: "s".into(),
            session: Uuid::nil(),
            rungs: vec![],
            skipped: vec![],
            playback_url: Some("http://h/streams/s/index.m3u8".into()),
            store: Some(StoreIdentity {
                id: "abc".into(),
                url: "file:///srv/data".into(),
            }),
        };
        assert_eq!(decode::<StreamEvent>(&encode(&new)).unwrap(), new);
    }

    #[test]
    fn keys_are_unique_per_attempt() {
        let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            rendition_key("a", "r", 3, 2, sha),
            "streams/a/r/3.2.0123456789abcdef.ts"
        );
        assert_ne!(
            rendition_key("a", "r", 3, 1, sha),
            rendition_key("a", "r", 3, 2, sha)
        );
        assert_ne!(
            rendition_key("a", "r", 3, 1, sha),
            rendition_key("a", "r", 3, 1, "ff")
        );
        assert_eq!(job_queue(StreamMode::Vod, "cpu"), "jobs.vod.cpu");
    }
}

/// Checks a stream name: it becomes part of object keys and URLs.
/// Whether `name` can name a worker (an identity or a `--worker-id`): 1 to 128 letters,
/// digits and `. _ - @ :`.
pub fn valid_worker_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@:".contains(&b))
}

pub fn validate_stream_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "stream name {name:?} must be 1-128 characters of letters, digits, '_', '-' or '.', not starting with '.' or '-'"
        ))
    }
}

#[cfg(test)]
mod name_tests {
    use super::validate_stream_name;

    #[test]
    fn stream_names_are_path_safe() {
        assert!(validate_stream_name("my-stream_1.0").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "-x", "sp ace", "ünï"] {
            assert!(validate_stream_name(bad).is_err(), "{bad}");
        }
    }
}
