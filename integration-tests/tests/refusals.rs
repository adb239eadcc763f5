//! Refusals reach whoever can fix them: an RTMP publisher refused before or after it
//! started publishing reads the reason in its own client (the real `ffmpeg` CLI against a
//! real `broadcaster serve`: ffmpeg prints the server's `onStatus` error as
//! "Server error: REASON"), and every HTTP error of `broadcaster serve` and of the
//! orchestrator is JSON, `{"error": "..."}`.
//!
//! The tests of this file run one at a time: a live publisher needs the machine's cores to
//! keep up with real time.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `ffmpeg -re` publishing `secs` of the live test source to `url`, with a keyframe every
/// `gop` frames (30 fps).
fn publisher_with_gop(url: &str, secs: u32, gop: u32) -> Child {
    let mut args = live_source_args(secs);
    for flag in ["-g", "-keyint_min"] {
        let i = args.iter().position(|a| a == flag).expect("a GOP flag");
        args[i + 1] = gop.to_string();
    }
    Command::new("ffmpeg")
        .args(["-v", "error", "-re"])
        .args(&args)
        .args(["-f", "flv", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg runs")
}

/// Waits for a publisher that must be refused: its stderr, which must carry the server's
/// error line and no bare "Broken pipe".
fn refused(publisher: Child, within: Duration) -> String {
    let started = Instant::now();
    let (ok, err) = finish(publisher, within + Duration::from_secs(30));
    assert!(!ok, "the publisher must be refused: {err}");
    assert!(
        err.contains("Server error: "),
        "ffmpeg shows our reason: {err}"
    );
    assert!(!err.contains("Broken pipe"), "{err}");
    assert!(
        started.elapsed() < within,
        "refused after {:?}: {err}",
        started.elapsed()
    );
    err
}

#[test]
fn a_bad_stream_key_is_told_to_the_publisher() {
    let _serial = serial();
    let mut cluster = Cluster::start(0);
    let live = cluster.serve_live_checked(&[]);
    let err = refused(
        rtmp_publisher(&live.rtmp_url("guessed-key"), 6),
        Duration::from_secs(5),
    );
    assert!(
        err.contains(
            "Server error: unknown stream key: publish with a key from `broadcaster keys add NAME`"
        ),
        "{err}"
    );
}

#[test]
fn keyframes_too_far_apart_are_told_to_the_publisher() {
    let _serial = serial();
    let mut cluster = Cluster::start(0);
    let live = cluster.serve_live(&["--live-max-segment-secs", "3"]);
    // A keyframe every 10 s: cut off once 3.5 s pass without one.
    let err = refused(
        publisher_with_gop(&live.rtmp_url("sparse"), 10, 300),
        Duration::from_secs(8),
    );
    assert!(
        err.contains("Server error: keyframe interval too long: no video keyframe for 3.5 s"),
        "{err}"
    );
    assert!(err.contains("Keyframe Interval = 2"), "{err}");
}

#[test]
fn a_server_at_capacity_is_told_to_the_publisher() {
    let _serial = serial();
    let mut cluster = Cluster::start(0);
    let live = cluster.serve_live(&["--rtmp-max-connections", "1"]);
    let held = TcpStream::connect(&live.rtmp).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let err = refused(
        rtmp_publisher(&live.rtmp_url("late"), 6),
        Duration::from_secs(5),
    );
    assert!(
        err.contains("Server error: the server is at capacity (1 RTMP connections at once"),
        "{err}"
    );
    drop(held);
}

/// A priced orchestrator refuses a live stream without an account, naming the live flag,
/// and one whose account cannot pay; the RTMP publisher reads each reason (after its first
/// segment, which the orchestrator needs to price the stream), and so does an HTTP pusher.
#[test]
fn no_funds_are_told_to_the_publisher() {
    let _serial = serial();
    let mut cluster = Cluster::start_with(0, &["--price-per-unit", "1"], Vec::new());

    let anonymous = cluster.serve_live(&[]);
    let err = refused(
        rtmp_publisher(&anonymous.rtmp_url("unpaid"), 10),
        Duration::from_secs(8),
    );
    assert!(
        err.contains(
            "Server error: the orchestrator refused the stream: this orchestrator charges 1 wei \
             per 1 pixels: start `broadcaster serve` with --live-broadcaster-id ACCOUNT"
        ),
        "{err}"
    );
    let segs = pre_cut_segments(cluster.dir.path(), 2);
    let a = Pusher::new(&anonymous, "unpaid-http").put(0, &segs[0]);
    assert_eq!(a.status, 422, "{}", a.text());
    let v: Value = serde_json::from_slice(&a.body).expect("a JSON error");
    let why = v["error"].as_str().unwrap_or_default();
    assert!(why.contains("--live-broadcaster-id ACCOUNT"), "{v}");
    assert!(!why.contains("push with"), "{v}");

    let broke = cluster.serve_live(&["--live-broadcaster-id", "alice"]);
    let err = refused(
        rtmp_publisher(&broke.rtmp_url("broke"), 10),
        Duration::from_secs(8),
    );
    assert!(
        err.contains(
            "Server error: the orchestrator refused the stream: insufficient balance: account \
             alice has 0 wei"
        ),
        "{err}"
    );
}

/// An HTTP answer that must be a JSON error: its message.
fn json_error(a: &HttpAnswer, status: u16) -> String {
    assert_eq!(a.status, status, "{}", a.text());
    assert_eq!(
        a.header("content-type"),
        Some("application/json"),
        "{}",
        a.text()
    );
    let v: Value = serde_json::from_slice(&a.body).expect("a JSON body");
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {v}"))
        .to_string()
}

fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> HttpAnswer {
    http_request(addr, method, path, &[], body, Duration::from_secs(30)).expect("an answer")
}

#[test]
fn http_errors_are_json() {
    let _serial = serial();
    let mut cluster = Cluster::start(0);
    let live = cluster.serve_live(&["--http-push-max-mb", "1"]);
    let big = vec![0x47u8; 2 << 20];

    // broadcaster serve
    let mut pusher = Pusher::new(&live, "too-big");
    let m = json_error(&pusher.send("PUT", "0.ts", &[], &big), 413);
    assert!(m.contains("at most 1 MiB"), "{m}");
    let m = json_error(&request(&live.http, "GET", "/nothing/here", b""), 404);
    assert_eq!(m, "no such resource: GET /nothing/here");
    let m = json_error(&request(&live.http, "POST", "/healthz", b""), 405);
    assert!(m.contains("method not allowed"), "{m}");
    json_error(
        &request(&live.http, "GET", "/streams/none/index.m3u8", b""),
        404,
    );
    json_error(
        &request(&live.http, "GET", "/streams/none/source/0.ts", b""),
        404,
    );
    // A path segment that is not UTF-8: axum's own rejection.
    let m = json_error(&request(&live.http, "PUT", "/live/%FF/0.ts", b"x"), 400);
    assert!(!m.is_empty());

    // orchestrator
    let orch = cluster.orchestrator_addr.clone();
    let m = json_error(&request(&orch, "GET", "/nothing/here", b""), 404);
    assert_eq!(m, "no such resource: GET /nothing/here");
    let m = json_error(&request(&orch, "POST", "/streams", b"{}"), 405);
    assert!(m.contains("method not allowed"), "{m}");
    let m = json_error(&request(&orch, "GET", "/streams?page=first", b""), 400);
    assert!(m.contains("page"), "{m}");
    json_error(&request(&orch, "GET", "/hls/streams/x/clip.mp4", b""), 404);
    json_error(
        &request(&orch, "GET", "/hls/streams/x/index.m3u8", b""),
        404,
    );
    json_error(&request(&orch, "GET", "/streams/no-such-stream", b""), 404);
    json_error(
        &request(&orch, "DELETE", "/streams/no-such-stream", b""),
        403,
    );

    // broadcaster serve --no-live: a push is told live input is off, whatever its size.
    let http = format!("127.0.0.1:{}", free_port());
    cluster.add("broadcaster", &["serve", "--no-live", "--http-addr", &http]);
    wait_until(
        "broadcaster serve --no-live",
        Duration::from_secs(30),
        || http_get(&http, "/healthz").is_some_and(|(c, _)| c == 200),
    );
    for (path, body) in [("/live/cam/0.ts", &big[..]), ("/live/cam", &b"x"[..])] {
        let m = json_error(&request(&http, "PUT", path, body), 404);
        assert!(m.starts_with("live input is off"), "{m}");
        assert!(m.contains("--no-live"), "{m}");
    }
}

/// `--max-sessions` (by default the transcode slots the live workers advertise): a live
/// stream past it is refused "at capacity" with the reason, and nothing of it is kept;
/// on-demand streams are never refused for capacity.
#[test]
fn live_streams_past_the_orchestrators_capacity_are_refused_at_capacity() {
    use castwork_protocol::*;
    let _one = serial();
    let cluster = Cluster::start(1);
    wait_until("the worker's heartbeat", Duration::from_secs(30), || {
        cluster.workers().len() == 1
    });
    let inj = Injector::new(&cluster.amqp_url);
    let start = |stream: &str, mode: StreamMode| {
        inj.ingest(&IngestMessage::StreamStarted(StreamStarted {
            stream: stream.to_string(),
            session: uuid::Uuid::now_v7(),
            mode,
            ladder: profile::parse_profiles("P144p30fps16x9").unwrap(),
            source: SourceMetadata::upright(640, 360, 30),
            broadcaster: None,
            target_duration_secs: None,
            secret: "capacity-test-publisher-secret".into(),
        }));
    };
    let known = |stream: &str| {
        http_get(&cluster.orchestrator_addr, &format!("/streams/{stream}"))
            .is_some_and(|(c, _)| c == 200)
    };
    let first = stream_name("live-one");
    start(&first, StreamMode::Live);
    wait_until("the first live stream", Duration::from_secs(20), || {
        known(&first)
    });
    let second = stream_name("live-two");
    start(&second, StreamMode::Live);
    wait_until("the refusal", Duration::from_secs(20), || {
        cluster
            .logs_of("orchestrator")
            .contains("at capacity: this orchestrator admits 1 live stream(s) at once")
    });
    assert!(!known(&second));
    let vod = stream_name("vod");
    start(&vod, StreamMode::Vod);
    wait_until("the on-demand stream", Duration::from_secs(20), || {
        known(&vod)
    });
}
