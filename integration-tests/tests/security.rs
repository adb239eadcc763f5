//! Attacks on the cluster's public surfaces, performed for real against the real services:
//! each test is an attack that took the cluster down (or let a stranger in) before it was
//! hardened, and checks that it is refused with a clear message while everything else goes
//! on.
//!
//! The tests of this file run one at a time: several need the machine's cores to keep up
//! with a live stream.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use castwork_protocol::{
    encode, IngestMessage, ObjectRef, SegmentReady, StreamEnded, INGEST_EXCHANGE,
};
use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `redis-cli -u URL ARGS...`, trimmed.
fn redis_cli(url: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-u")
        .arg(url)
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The slowest of `n` PINGs sent over one connection to the Redis at `url`
/// (`redis://HOST:PORT/`).
fn slowest_ping(url: &str, n: usize) -> Duration {
    let addr = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    let mut s = TcpStream::connect(&addr).expect("redis reachable");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut worst = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(b"PING\r\n").unwrap();
        let mut buf = [0u8; 64];
        let got = s.read(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"+PONG\r\n", "redis answered PING");
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    worst
}

fn metric(addr: &str, line_start: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics").expect("metrics answer");
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The attack of issue 14: a pushed segment numbered 999999999 after segment 0 (over HTTP),
/// then a `SegmentReady` numbered 2^60 and a `StreamEnded` claiming 2^60 segments (over
/// AMQP). Each made one Lua call loop once per number up to it, so Redis answered BUSY to
/// everyone and then ran out of memory. Now each is refused with a message, Redis keeps
/// answering, a gap of segments that never arrived is skipped as one, and other streams
/// complete.
#[test]
fn far_future_sequence_numbers_are_refused_and_make_no_work() {
    let _serial = serial();
    let mut cluster = Cluster::start_with(1, &["--live-deadline-secs", "3"], Vec::new());
    let live = cluster.serve_live(&[]);
    let segs = pre_cut_segments(cluster.dir.path(), 4);
    let stream = "attacked";
    let wait = Duration::from_secs(90);
    let push = |seq: u64, body: &[u8]| {
        http_request(
            &live.http,
            "PUT",
            &format!("/live/{stream}/{seq}.ts"),
            &[("Content-Duration", "2000")],
            body,
            wait,
        )
        .unwrap()
    };
    let first = push(0, &std::fs::read(&segs[0]).unwrap());
    assert_eq!(first.status, 200, "{}\n{}", first.text(), cluster.logs());

    // Over HTTP: refused before anything is stored or sent.
    let t = Instant::now();
    let far = push(999_999_999, &std::fs::read(&segs[1]).unwrap());
    assert_eq!(far.status, 422, "{}", far.text());
    assert!(
        far.text().contains("ahead of the highest segment"),
        "{}",
        far.text()
    );
    assert!(t.elapsed() < Duration::from_secs(10), "refused at once");

    // Over AMQP, as a broadcaster with broker access (or a forged message) would send it.
    let url = cluster.redis_url().to_string();
    let session = redis_cli(&url, &["HGET", &format!("cw:stream:{stream}"), "session"]);
    let session: uuid::Uuid = session.parse().expect("the stream is registered");
    let huge = 1u64 << 60;
    let injector = Injector::new(&cluster.amqp_url);
    let ready = IngestMessage::SegmentReady(SegmentReady {
        stream: stream.into(),
        session,
        seq: huge,
        start_us: 1_000_000,
        duration_us: 2_000_000,
        last_pts_us: 2_966_666,
        frames: 60,
        has_audio: true,
        object: ObjectRef {
            key: format!("streams/{stream}/source/{huge}.ts"),
            size: 1,
            sha256: "00".repeat(32),
        },
        arrived_unix_ms: Some(castwork_protocol::time::now_unix_ms()),
        discontinuity: false,
        payment: None,
    });
    injector.publish(INGEST_EXCHANGE, "ingest", &encode(&ready));
    let ended = IngestMessage::StreamEnded(StreamEnded {
        stream: stream.into(),
        session,
        segments: huge,
    });
    injector.publish(INGEST_EXCHANGE, "ingest", &encode(&ended));
    let rejected = "castwork_orchestrator_rejected_messages_total{queue=\"castwork.ingest\",reason=\"seq_window\"}";
    wait_until(
        "both forged messages refused",
        Duration::from_secs(20),
        || metric(&cluster.orchestrator_addr, rejected) >= 2.0,
    );

    // A real gap (segments 1-4 never arrive) within the window.
    let fifth = push(5, &std::fs::read(&segs[1]).unwrap());
    assert_eq!(fifth.status, 200, "{}\n{}", fifth.text(), cluster.logs());

    // Redis kept answering everyone, and holds only what exists.
    let worst = slowest_ping(&url, 20);
    assert!(worst < Duration::from_millis(100), "slowest PING {worst:?}");
    let keys: u64 = redis_cli(&url, &["DBSIZE"]).parse().unwrap();
    assert!(keys < 100, "{keys} keys in Redis");

    // The stream ends (pushes stopped): the gap is skipped as one, the rest is listed.
    let done = cluster.wait_complete(stream, Duration::from_secs(60));
    assert_eq!(done["segments"]["total"], 6, "{done}");
    assert_eq!(done["segments"]["done"], 2, "{done}");
    assert_eq!(done["segments"]["skipped"], 4, "{done}");
    let recording = cluster
        .storage_dir()
        .join(format!("streams/{stream}/P240p30fps16x9/recording.m3u8"));
    let text = std::fs::read_to_string(&recording).unwrap();
    let media = m3u8_rs::parse_media_playlist_res(text.as_bytes()).unwrap();
    let seqs: Vec<&str> = media
        .segments
        .iter()
        .map(|s| s.uri.split('.').next().unwrap())
        .collect();
    assert_eq!(seqs, ["0", "5"], "{text}");
    assert!(media.segments[1].discontinuity, "{text}");
    let logs = cluster.logs();
    assert!(
        logs.contains("more than 1000 ahead of the highest segment received"),
        "{logs}"
    );

    // Another stream completes.
    let out = cluster.push(&clip(cluster.dir.path(), 4), "bystander", &[]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
}
