//! Control-plane throughput: segment jobs per second through orchestrator -> workers ->
//! results -> playlists, with transcoding replaced by the workers' benchmark-only
//! `--noop-transcode` (renditions are copies of a tiny source) and the orchestrator's
//! benchmark-only `--trust-worker-output`. Ingest messages are published straight to the
//! broker, as a broadcaster would, so the cutter is not part of the figure.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use castwork_cluster::{broker::INGEST_KEY, Broker};
use castwork_protocol::{
    encode, profile::parse_profiles, source_key, IngestMessage, ObjectRef, Rational, SegmentReady,
    SourceMetadata, StreamEnded, StreamMode, StreamStarted, INGEST_EXCHANGE,
};

use crate::e2e::Cluster;

/// One point of the curve.
pub struct Point {
    pub workers: usize,
    pub segments: u64,
    pub secs: f64,
}

impl Point {
    pub fn jobs_per_sec(&self) -> f64 {
        self.segments as f64 / self.secs.max(1e-9)
    }
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

fn state(addr: &str, stream: &str) -> Option<String> {
    let body = http_get(addr, &format!("/streams/{stream}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["state"].as_str().map(str::to_string)
}

/// Runs `segments` jobs of one stream through a fresh cluster of `workers` workers.
pub fn measure(
    workers: usize,
    slots: usize,
    segments: u64,
    profiles: &str,
) -> anyhow::Result<Point> {
    let slots = slots.to_string();
    let cluster = Cluster::start_with(
        workers,
        "veryfast",
        &["--trust-worker-output"],
        &["--noop-transcode", "--slots", &slots],
    )?;
    // Unique per run: the clusters of one benchmark share the machine's Redis.
    let stream = format!("control-{}", uuid::Uuid::now_v7().simple());
    // One tiny source object that every segment refers to.
    let data = vec![0x47u8; 188 * 8];
    let key = source_key(&stream, 0, "ts");
    let path = cluster.dir.path().join("data").join(&key);
    std::fs::create_dir_all(path.parent().context("source path")?)?;
    std::fs::write(&path, &data)?;
    let object = ObjectRef::of(key, &data);
    let session = uuid::Uuid::now_v7();
    let rt = tokio::runtime::Runtime::new()?;
    let started = rt.block_on(async {
        let broker = Broker::connect(
            &cluster.amqp_url,
            "castwork-bench",
            castwork_cluster::broker::Role::All,
        )
        .await?;
        let publish = |m: IngestMessage| {
            let body = encode(&m);
            let broker = &broker;
            async move {
                broker
                    .publish(INGEST_EXCHANGE, INGEST_KEY, &body, None)
                    .await
            }
        };
        publish(IngestMessage::StreamStarted(StreamStarted {
            stream: stream.clone(),
            session,
            mode: StreamMode::Vod,
            ladder: parse_profiles(profiles)?,
            source: SourceMetadata {
                width: 1280,
                height: 720,
                sample_aspect_ratio: Rational::ONE,
                rotation: 0,
                frame_rate: Rational::new(30, 1),
                video_codec: "h264".into(),
                pixel_format: "yuv420p".into(),
                color: Default::default(),
                has_audio: false,
                duration_us: None,
            },
            broadcaster: None,
            target_duration_secs: None,
            secret: "bench-publisher-secret".into(),
        }))
        .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while state(&cluster.http, &stream).is_none() {
            if Instant::now() > deadline {
                bail!("the stream was not admitted");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t0 = Instant::now();
        // Publishes go out in windows of 256, their confirms awaited together.
        let seqs: Vec<u64> = (0..segments).collect();
        for chunk in seqs.chunks(256) {
            futures_util::future::try_join_all(chunk.iter().map(|&seq| {
                publish(IngestMessage::SegmentReady(SegmentReady {
                    stream: stream.clone(),
                    session,
                    seq,
                    start_us: 1_000_000 + seq as i64 * 2_000_000,
                    duration_us: 2_000_000,
                    last_pts_us: 1_000_000 + seq as i64 * 2_000_000 + 1_966_667,
                    frames: 60,
                    has_audio: false,
                    object: object.clone(),
                    arrived_unix_ms: None,
                    discontinuity: false,
                    payment: None,
                    secret: "bench-publisher-secret".into(),
                }))
            }))
            .await?;
        }
        publish(IngestMessage::StreamEnded(StreamEnded {
            stream: stream.clone(),
            session,
            segments,
            secret: "bench-publisher-secret".into(),
        }))
        .await?;
        broker.close().await;
        anyhow::Ok(t0)
    })?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match state(&cluster.http, &stream).as_deref() {
            Some("complete") => break,
            Some(s @ ("incomplete" | "failed")) => {
                bail!("stream {stream} ended {s}: see the orchestrator's /streams/{stream}")
            }
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("{segments} segments did not complete in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Point {
        workers,
        segments,
        secs: started.elapsed().as_secs_f64(),
    })
}
