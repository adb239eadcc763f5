//! Poison messages against the real broker and Redis: each kind is injected into the
//! real queues, and each must end dead-lettered with its reason (or answered to its
//! sender), visible in `/status` and the metrics, with every queue drained, and the next
//! honest push must complete. A failed push must leave its stream failed, with the reason,
//! and its objects gone.

mod common;

use std::time::{Duration, Instant};

use castwork_protocol::*;
use common::*;
use serde_json::{json, Value};
use uuid::Uuid;

const RUNG: &str = "P144p30fps16x9";
const SECRET: &str = "poison-test-publisher-secret";
/// A permanent failure is dead-lettered at once; this is the test's patience, far below
/// the transient bound (12 deliveries with backoff, about 3 minutes).
const BOUND: Duration = Duration::from_secs(30);

impl Injector {
    fn report(&self, msg: &WorkerReport) {
        self.publish(RESULTS_EXCHANGE, "result", &encode(msg));
    }
}

/// Starts a stream as its publisher would, and waits for its admission.
fn admitted(cluster: &Cluster, inj: &Injector, stream: &str) -> Uuid {
    let session = Uuid::now_v7();
    inj.ingest(&IngestMessage::StreamStarted(StreamStarted {
        stream: stream.to_string(),
        session,
        mode: StreamMode::Vod,
        ladder: profile::parse_profiles(RUNG).unwrap(),
        source: SourceMetadata::upright(640, 360, 30),
        broadcaster: None,
        target_duration_secs: None,
        secret: SECRET.into(),
    }));
    wait_until("admission", BOUND, || {
        http_get(&cluster.orchestrator_addr, &format!("/streams/{stream}"))
            .is_some_and(|(c, _)| c == 200)
    });
    session
}

/// Waits for the dead letter naming `stream` (of `queue`), and returns it with the time it
/// took from `since`.
fn dead_letter_of(
    cluster: &Cluster,
    queue: &str,
    stream: &str,
    since: Instant,
) -> (Value, Duration) {
    let deadline = since + BOUND;
    loop {
        if let Some(d) = cluster
            .dead_letters()
            .into_iter()
            .find(|d| d["queue"] == queue && d["stream"] == stream)
        {
            return (d, since.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter for {stream} in {queue} within {BOUND:?}: {}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every queue of the cluster's vhost is empty (ready and unacknowledged:
/// `rabbitmqctl`'s `messages` counts both), and returns how long that took from `since`.
fn drained(cluster: &Cluster, since: Instant) -> Duration {
    loop {
        let depths = cluster.queue_depths();
        if depths.iter().all(|(_, n)| *n == 0) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < BOUND,
            "queues not drained within {BOUND:?}: {depths:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sum of a counter's series whose labels contain every one of `labels`.
fn counter(cluster: &Cluster, name: &str, labels: &[&str]) -> u64 {
    let (_, m) = http_get(&cluster.orchestrator_addr, "/metrics").unwrap();
    metric_total(&m, name, labels)
}

fn stream_state(cluster: &Cluster, stream: &str) -> Value {
    cluster.status(stream)
}

/// One poison, what became of it, for the report.
struct Fate {
    poison: &'static str,
    deliveries: Value,
    reason: String,
    dead_letter_after: Duration,
}

#[test]
fn each_kind_of_poison_ends_dead_lettered_with_its_reason_and_the_cluster_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    let cluster = Cluster::start(1);
    let inj = Injector::new(&cluster.amqp_url);
    let mut fates = Vec::new();
    let mut note = |poison, (d, t): (Value, Duration)| {
        assert!(!d["reason"].as_str().unwrap_or_default().is_empty(), "{d}");
        fates.push(Fate {
            poison,
            deliveries: d["deliveries"].clone(),
            reason: d["reason"].as_str().unwrap_or_default().to_string(),
            dead_letter_after: t,
        });
        d
    };

    // A `StreamEnded` with 0 segments, from the stream's own publisher (what a push of a
    // truncated file used to leave behind): the stream fails with the reason.
    let s1 = stream_name("zero");
    let session = admitted(&cluster, &inj, &s1);
    let t = Instant::now();
    inj.ingest(&IngestMessage::StreamEnded(StreamEnded {
        stream: s1.clone(),
        session,
        segments: 0,
        secret: SECRET.into(),
    }));
    let d = note(
        "StreamEnded with 0 segments",
        dead_letter_of(&cluster, INGEST_QUEUE, &s1, t),
    );
    assert_eq!(d["kind"], "stream_ended", "{d}");
    assert_eq!(d["deliveries"], 1, "refused at once: {d}");
    assert_eq!(d["stream_failed"], true, "{d}");
    assert!(d["reason"].as_str().unwrap().contains("no segments"), "{d}");
    let st = stream_state(&cluster, &s1);
    assert_eq!(st["state"], "failed", "{st}");
    assert!(
        st["reason"].as_str().unwrap().contains("no segments"),
        "{st}"
    );

    // A `SegmentReady` for a stream that was never started.
    let s2 = stream_name("nostream");
    let t = Instant::now();
    let key = source_key(&s2, 0, "ts");
    inj.ingest(&IngestMessage::SegmentReady(SegmentReady {
        stream: s2.clone(),
        session: Uuid::now_v7(),
        seq: 0,
        start_us: 1_000_000,
        duration_us: 2_000_000,
        last_pts_us: 2_966_666,
        frames: 60,
        has_audio: true,
        object: ObjectRef {
            key,
            size: 1000,
            sha256: "0".repeat(64),
        },
        arrived_unix_ms: None,
        discontinuity: false,
        payment: None,
        secret: SECRET.into(),
    }));
    let d = note(
        "SegmentReady for an unknown stream",
        dead_letter_of(&cluster, INGEST_QUEUE, &s2, t),
    );
    assert_eq!(d["kind"], "segment_ready", "{d}");
    assert_eq!(d["deliveries"], 1, "{d}");
    assert!(
        d["reason"].as_str().unwrap().contains("does not exist"),
        "{d}"
    );

    // A result for a job that was never published.
    let s3 = stream_name("nojob");
    let t = Instant::now();
    inj.report(&WorkerReport::SegmentResult(SegmentResult {
        job_id: Uuid::now_v7(),
        stream: s3.clone(),
        seq: 0,
        attempt: 1,
        worker_id: "liar".into(),
        renditions: Vec::new(),
        transcode_ms: 10,
        started_unix_ms: None,
    }));
    let d = note(
        "result for a job never published",
        dead_letter_of(&cluster, RESULTS_QUEUE, &s3, t),
    );
    assert_eq!(d["kind"], "segment_result", "{d}");
    assert_eq!(d["deliveries"], 1, "{d}");
    assert!(d["reason"].as_str().unwrap().contains("worker liar"), "{d}");

    // An unknown message version, on both queues the orchestrator consumes.
    for (queue, exchange, key, kind) in [
        (INGEST_QUEUE, INGEST_EXCHANGE, "ingest", "stream_ended"),
        (RESULTS_QUEUE, RESULTS_EXCHANGE, "result", "segment_result"),
    ] {
        let s = stream_name("future");
        let t = Instant::now();
        let body = json!({
            "version": 99, "type": kind, "stream": s, "seq": 0,
            "session": Uuid::now_v7(), "segments": 1,
        });
        inj.publish(exchange, key, body.to_string().as_bytes());
        let d = note(
            "unknown message version",
            dead_letter_of(&cluster, queue, &s, t),
        );
        assert_eq!(d["kind"], "unreadable", "{d}");
        assert!(d["reason"].as_str().unwrap().contains("version"), "{d}");
    }

    // Valid JSON with absurd fields: an end of stream with u64::MAX segments from its own
    // publisher (the stream fails with the reason), a segment with a negative duration
    // (likewise), a result with absurd numbers, and a number no field can hold.
    let s5 = stream_name("absurd-end");
    let session = admitted(&cluster, &inj, &s5);
    let t = Instant::now();
    inj.ingest(&IngestMessage::StreamEnded(StreamEnded {
        stream: s5.clone(),
        session,
        segments: u64::MAX,
        secret: SECRET.into(),
    }));
    let d = note(
        "absurd: StreamEnded with u64::MAX segments",
        dead_letter_of(&cluster, INGEST_QUEUE, &s5, t),
    );
    assert_eq!(d["stream_failed"], true, "{d}");
    assert_eq!(stream_state(&cluster, &s5)["state"], "failed");

    let s6 = stream_name("absurd-seg");
    let session = admitted(&cluster, &inj, &s6);
    let t = Instant::now();
    inj.ingest(&IngestMessage::SegmentReady(SegmentReady {
        stream: s6.clone(),
        session,
        seq: 0,
        start_us: i64::MIN,
        duration_us: -1,
        last_pts_us: i64::MAX,
        frames: u64::MAX,
        has_audio: true,
        object: ObjectRef {
            key: source_key(&s6, 0, "ts"),
            size: u64::MAX,
            sha256: "not a hash".into(),
        },
        arrived_unix_ms: Some(u64::MAX),
        discontinuity: true,
        payment: None,
        secret: SECRET.into(),
    }));
    let d = note(
        "absurd: SegmentReady with a negative duration",
        dead_letter_of(&cluster, INGEST_QUEUE, &s6, t),
    );
    assert!(d["reason"].as_str().unwrap().contains("no duration"), "{d}");
    assert_eq!(stream_state(&cluster, &s6)["state"], "failed");

    let s7 = stream_name("absurd-result");
    let t = Instant::now();
    inj.report(&WorkerReport::SegmentFailed(SegmentFailed {
        job_id: Uuid::nil(),
        stream: s7.clone(),
        seq: u64::MAX,
        attempt: u32::MAX,
        worker_id: "x".repeat(200),
        disposition: Disposition::Transient,
        message: "y".repeat(10_000),
    }));
    let d = note(
        "absurd: failure report with u64::MAX seq",
        dead_letter_of(&cluster, RESULTS_QUEUE, &s7, t),
    );
    assert_eq!(d["kind"], "segment_failed", "{d}");

    let s8 = stream_name("absurd-number");
    let t = Instant::now();
    let body = format!(
        r#"{{"version":1,"type":"segment_ready","stream":"{s8}","session":"{}","seq":1e400,"start_us":0,"duration_us":1,"last_pts_us":0,"frames":1,"has_audio":false,"object":{{"key":"k","size":1,"sha256":""}}}}"#,
        Uuid::now_v7()
    );
    inj.publish(INGEST_EXCHANGE, "ingest", body.as_bytes());
    let d = note(
        "absurd: a number no field holds",
        dead_letter_of(&cluster, INGEST_QUEUE, &s8, t),
    );
    assert_eq!(d["kind"], "unreadable", "{d}");

    // Every queue drains (nothing is put back), and every dead letter is counted.
    let t = Instant::now();
    let drain = drained(&cluster, t);
    let count = fates.len() as u64;
    assert_eq!(
        counter(&cluster, "castwork_orchestrator_dead_letters_total", &[]),
        count,
        "{}",
        cluster.logs()
    );
    assert_eq!(
        counter(
            &cluster,
            "castwork_orchestrator_dead_letters_total",
            &["cause=\"refused\""]
        ),
        count
    );
    assert_eq!(
        counter(
            &cluster,
            "castwork_orchestrator_streams_total",
            &["event=\"failed\""]
        ),
        3
    );
    // A message put back over and over shows as a redelivery.
    assert_eq!(
        counter(&cluster, "castwork_orchestrator_redeliveries_total", &[]),
        0
    );

    // The next honest push completes.
    let honest = stream_name("honest");
    let out = cluster.push(&input, &honest, &["--profiles", RUNG]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );

    eprintln!("poison | deliveries | dead-lettered after | reason");
    for f in &fates {
        eprintln!(
            "{} | {} | {:.2} s | {}",
            f.poison,
            f.deliveries,
            f.dead_letter_after.as_secs_f64(),
            f.reason.chars().take(160).collect::<String>()
        );
    }
    eprintln!(
        "queues empty {:.2} s after the last dead letter",
        drain.as_secs_f64()
    );
}

/// A small deterministic generator (xorshift), so a failure can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A number that is often at an edge.
    fn wild(&mut self) -> u64 {
        match self.below(5) {
            0 => 0,
            1 => u64::MAX,
            2 => self.below(10),
            3 => 1 << self.below(64),
            _ => self.next(),
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A random well-formed message: any type, about a stream that is active, failed or
/// unknown, from its publisher or not, with any numbers.
fn random_message(rng: &mut Rng, streams: &[(String, Uuid)]) -> (&'static str, Vec<u8>) {
    let (stream, session) = rng.pick(streams).clone();
    let session = if rng.below(2) == 0 {
        session
    } else {
        Uuid::now_v7()
    };
    let secret = if rng.below(3) == 0 {
        "wrong-secret-of-20-chars"
    } else {
        SECRET
    }
    .to_string();
    let seq = rng.wild();
    let ingest = |m: IngestMessage| ("ingest", encode(&m));
    let report = |m: WorkerReport| ("result", encode(&m));
    match rng.below(6) {
        0 => ingest(IngestMessage::StreamEnded(StreamEnded {
            stream,
            session,
            segments: rng.wild(),
            secret,
        })),
        1 => ingest(IngestMessage::SegmentReady(SegmentReady {
            stream: stream.clone(),
            session,
            seq,
            start_us: rng.wild() as i64,
            duration_us: rng.wild() as i64,
            last_pts_us: rng.wild() as i64,
            frames: rng.wild(),
            has_audio: rng.below(2) == 0,
            object: ObjectRef {
                key: source_key(&stream, seq, "ts"),
                size: rng.wild(),
                sha256: "0".repeat(64),
            },
            arrived_unix_ms: Some(rng.wild()),
            discontinuity: rng.below(2) == 0,
            payment: None,
            secret,
        })),
        2 => ingest(IngestMessage::StreamAborted(StreamAborted {
            stream,
            session,
            reason: "random".into(),
            secret,
        })),
        3 => report(WorkerReport::SegmentResult(SegmentResult {
            job_id: Uuid::now_v7(),
            stream,
            seq,
            attempt: rng.wild() as u32,
            worker_id: "random".into(),
            renditions: Vec::new(),
            transcode_ms: rng.wild(),
            started_unix_ms: Some(rng.wild()),
        })),
        4 => report(WorkerReport::SegmentFailed(SegmentFailed {
            job_id: Uuid::now_v7(),
            stream,
            seq,
            attempt: rng.wild() as u32,
            worker_id: "random".into(),
            disposition: if rng.below(2) == 0 {
                Disposition::Transient
            } else {
                Disposition::Permanent
            },
            message: "random".into(),
        })),
        _ => report(WorkerReport::SegmentStarted(SegmentStarted {
            job_id: Uuid::now_v7(),
            stream,
            seq,
            attempt: rng.wild() as u32,
            worker_id: "random".into(),
            timeout_secs: rng.wild(),
        })),
    }
}

#[test]
fn random_well_formed_messages_never_wedge_a_queue() {
    let seed = std::env::var("POISON_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("seed {seed} (POISON_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    let cluster = Cluster::start(1);
    let inj = Injector::new(&cluster.amqp_url);
    let mut streams = Vec::new();
    for i in 0..3 {
        let s = stream_name(&format!("prop{i}"));
        let session = admitted(&cluster, &inj, &s);
        streams.push((s, session));
    }
    streams.push((stream_name("prop-unknown"), Uuid::now_v7()));
    let sent = 60;
    let t = Instant::now();
    for _ in 0..sent {
        let (key, body) = random_message(&mut rng, &streams);
        let exchange = if key == "ingest" {
            INGEST_EXCHANGE
        } else {
            RESULTS_EXCHANGE
        };
        inj.publish(exchange, key, &body);
    }
    let drain = drained(&cluster, t);
    eprintln!(
        "{sent} random messages: queues empty after {:.2} s",
        drain.as_secs_f64()
    );
    // Everything dead-lettered is counted and shown with its reason, once.
    let dead = counter(&cluster, "castwork_orchestrator_dead_letters_total", &[]);
    assert!(dead <= sent, "{dead} dead letters for {sent} messages");
    assert_eq!(
        counter(
            &cluster,
            "castwork_orchestrator_dead_letters_total",
            &["cause=\"retries_exhausted\""]
        ),
        0,
        "nothing here is transient: {}",
        cluster.logs()
    );
    for d in cluster.dead_letters() {
        assert!(!d["reason"].as_str().unwrap_or_default().is_empty(), "{d}");
    }
    // No stream is wedged half-way: each is still active (waiting for its publisher),
    // failed with a reason, or ended.
    for (s, _) in &streams[..3] {
        let st = stream_state(&cluster, s);
        match st["state"].as_str().unwrap() {
            "failed" => assert!(
                !st["reason"].as_str().unwrap_or_default().is_empty(),
                "{st}"
            ),
            "active" | "complete" | "incomplete" => {}
            other => panic!("stream {s} is {other}: {st}"),
        }
    }
    let honest = stream_name("prop-honest");
    let out = cluster.push(&input, &honest, &["--profiles", RUNG]);
    assert!(
        out.status.success(),
        "seed {seed}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
}

/// The first `keep` of a file's bytes, as an interrupted download leaves it.
fn truncated(input: &std::path::Path, out: &std::path::Path, keep: f64) {
    let data = std::fs::read(input).unwrap();
    std::fs::write(out, &data[..(data.len() as f64 * keep) as usize]).unwrap();
}

#[test]
fn a_push_of_a_truncated_file_fails_its_stream_with_the_reason_and_removes_its_objects() {
    let dir = tempfile::tempdir().unwrap();
    // Its index at the front (as for the web), so what was downloaded can be probed.
    let whole = dir.path().join("whole.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440",
        "-t",
        "12",
        "-c:v",
        "libx264",
        "-g",
        "60",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-movflags",
        "+faststart",
        whole.to_str().unwrap(),
    ]);
    let trunc = dir.path().join("trunc.mp4");
    truncated(&whole, &trunc, 0.45);
    let cluster = Cluster::start(1);
    let stream = stream_name("trunc");
    let out = cluster.push(&trunc, &stream, &["--profiles", RUNG]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the file ends early:")
            && stderr.contains("of its 12.0 s could be read (truncated download?)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("stream {stream} was marked failed")),
        "{stderr}"
    );
    // Failed with the reason, never left active; its objects go.
    wait_until("the stream to fail", BOUND, || {
        stream_state(&cluster, &stream)["state"] == "failed"
    });
    let st = stream_state(&cluster, &stream);
    assert!(
        st["reason"]
            .as_str()
            .unwrap()
            .contains("the file ends early"),
        "{st}"
    );
    let objects = cluster.storage_dir().join(format!("streams/{stream}"));
    wait_until("its objects to be deleted", BOUND, || {
        walk(&objects).is_empty()
    });
    let t = Instant::now();
    drained(&cluster, t);
    // `orchestrator status` says why.
    let status = std::process::Command::new(bin("orchestrator"))
        .args([
            "status",
            "--url",
            &format!("http://{}", cluster.orchestrator_addr),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("{stream} failed: the publisher gave up: ")),
        "{text}"
    );
    // An MP4 with its index at the end, cut off: nothing can be read, and it says why.
    let plain = dir.path().join("plain.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=30",
        "-t",
        "4",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        plain.to_str().unwrap(),
    ]);
    let cut = dir.path().join("cut.mp4");
    truncated(&plain, &cut, 0.5);
    let out = cluster.push(&cut, &stream_name("cut"), &["--profiles", RUNG]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the file ends early: ") && stderr.contains("(truncated download?)"),
        "{stderr}"
    );
    // A later honest push of the same name completes.
    let out = cluster.push(
        &dir.path().join("whole.mp4"),
        &stream,
        &["--profiles", RUNG],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir` (none when it does not exist).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// A result is about the objects its attempt made: one that names others (a playlist, a
/// source segment, a rendition it did not make, a path out of the stream) never gets them
/// deleted when it is refused.
#[test]
fn a_lying_result_cannot_get_other_objects_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    let cluster = Cluster::start(1);
    let stream = stream_name("victim");
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = cluster.storage_dir().join(format!("streams/{stream}"));
    let before = walk(&root);
    assert!(before.len() > 4, "{before:?}");
    let keys: Vec<String> = before
        .iter()
        .map(|p| {
            p.strip_prefix(cluster.storage_dir())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    let inj = Injector::new(&cluster.amqp_url);
    let t = Instant::now();
    // A late result for segment 0 (already accepted) naming every object of the stream.
    // Its job id is right: what is tested is what becomes of the keys it names.
    inj.report(&WorkerReport::SegmentResult(SegmentResult {
        job_id: cluster.job_id(&stream, 0, 1),
        stream: stream.clone(),
        seq: 0,
        attempt: 1,
        worker_id: "liar".into(),
        renditions: keys
            .iter()
            .map(|k| RenditionOutput {
                rung: RUNG.into(),
                object: ObjectRef {
                    key: k.clone(),
                    size: 1,
                    sha256: "0".repeat(64),
                },
                width: 256,
                height: 144,
                frames: 1,
                start_us: 0,
                duration_us: 1,
            })
            .collect(),
        transcode_ms: 1,
        started_unix_ms: None,
    }));
    drained(&cluster, t);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(walk(&root), before, "{}", cluster.logs());
}
