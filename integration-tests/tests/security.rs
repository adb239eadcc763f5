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
    encode, parse_profiles, IngestMessage, ObjectRef, Profile, SegmentReady, SourceMetadata,
    StreamEnded, StreamMode, StreamStarted, INGEST_EXCHANGE,
};
use common::*;
use sha2::Digest;

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
    let mut pusher = Pusher::new(&live, stream);
    let mut push = |seq: u64, body: &[u8]| pusher.send("PUT", &format!("{seq}.ts"), &[], body);
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

    // Over AMQP, by someone who can publish ingest messages: to the HTTP stream, knowing
    // its name and session (GET /streams/NAME shows the session) but not its publisher's
    // secret, an early end and a far segment are refused as not the publisher's.
    let url = cluster.redis_url().to_string();
    let session = redis_cli(&url, &["HGET", &format!("cw:stream:{stream}"), "session"]);
    let session: uuid::Uuid = session.parse().expect("the stream is registered");
    let stored = redis_cli(&url, &["HGET", &format!("cw:stream:{stream}"), "secret"]);
    assert_eq!(
        stored.len(),
        64,
        "only the secret's SHA-256 is kept: {stored}"
    );
    let status = cluster.status(stream).to_string();
    assert!(
        !status.contains(&stored) && !status.contains("secret"),
        "{status}"
    );
    let huge = 1u64 << 60;
    let injector = Injector::new(&cluster.amqp_url);
    let far = |stream: &str, session| {
        encode(&IngestMessage::SegmentReady(SegmentReady {
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
            secret: "attacker-own-secret".into(),
        }))
    };
    let end = |stream: &str, session, segments| {
        encode(&IngestMessage::StreamEnded(StreamEnded {
            stream: stream.into(),
            session,
            segments,
            secret: "attacker-own-secret".into(),
        }))
    };
    injector.publish(INGEST_EXCHANGE, "ingest", &far(stream, session));
    injector.publish(INGEST_EXCHANGE, "ingest", &end(stream, session, 1));
    let not_publisher = "castwork_orchestrator_rejected_messages_total{queue=\"orchestrator.ingest\",reason=\"not_publisher\"}";
    wait_until(
        "both forged messages refused",
        Duration::from_secs(20),
        || metric(&cluster.orchestrator_addr, not_publisher) >= 2.0,
    );

    // The attacker's own stream, with its own secret: the far segment and an end claiming
    // 2^60 segments are refused by the window.
    let own = uuid::Uuid::now_v7();
    injector.publish(
        INGEST_EXCHANGE,
        "ingest",
        &started(
            "own-stream",
            own,
            parse_profiles("P240p30fps16x9").unwrap(),
            source(640, 360),
        ),
    );
    wait_until(
        "the attacker's stream admitted",
        Duration::from_secs(20),
        || {
            http_get(&cluster.orchestrator_addr, "/streams/own-stream")
                .is_some_and(|(c, _)| c == 200)
        },
    );
    injector.publish(INGEST_EXCHANGE, "ingest", &far("own-stream", own));
    injector.publish(INGEST_EXCHANGE, "ingest", &end("own-stream", own, huge));
    let rejected = "castwork_orchestrator_rejected_messages_total{queue=\"orchestrator.ingest\",reason=\"seq_window\"}";
    wait_until("both far messages refused", Duration::from_secs(20), || {
        metric(&cluster.orchestrator_addr, rejected) >= 2.0
    });

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
    let input = clip(cluster.dir.path(), 4);
    let out = cluster.push(&input, "bystander", &[]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
}

/// `broadcaster keys ARGS...` on the cluster's Redis: (success, stdout, stderr).
fn keys(cluster: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin("broadcaster"))
        .env("REDIS_URL", cluster.redis_url())
        .arg("keys")
        .args(args)
        .output()
        .expect("broadcaster runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// With no flag, ingest needs a stream key from `broadcaster keys add NAME`: a guessed RTMP
/// key and an HTTP push without a key are refused with what to do; a key publishes its
/// stream (named by NAME, so the key never shows in playback URLs); keys are stored hashed;
/// a removed key stops working at once.
#[test]
fn ingest_needs_a_stream_key_by_default() {
    let _serial = serial();
    let mut cluster = Cluster::start(2);
    let live = cluster.serve_live_checked(&[]);
    let segs = pre_cut_segments(cluster.dir.path(), 4);

    let (ok, err) = finish(
        rtmp_publisher(&live.rtmp_url("guessed"), 4),
        Duration::from_secs(30),
    );
    assert!(!ok, "an unknown key must be refused");
    assert!(err.contains("unknown stream key"), "ffmpeg says why: {err}");
    let mut stranger = Pusher::new(&live, "intruder");
    let a = stranger.put(0, &segs[0]);
    assert_eq!(a.status, 403, "{}", a.text());
    assert!(a.text().contains("broadcaster keys add"), "{}", a.text());

    let (ok, rtmp_key, err) = keys(&cluster, &["add", "studio"]);
    assert!(ok, "{err}");
    let (ok, push_key, err) = keys(&cluster, &["add", "pushed"]);
    assert!(ok, "{err}");
    assert!(
        push_key.starts_with("cwk_") && push_key.len() > 30,
        "{push_key}"
    );
    let (_, listed, _) = keys(&cluster, &["list"]);
    assert_eq!(listed, "pushed\nstudio");
    let stored = redis_cli(cluster.redis_url(), &["HGETALL", "cw:ingest_keys"]);
    assert!(
        !stored.contains(&push_key) && !stored.contains(&rtmp_key),
        "keys are stored hashed: {stored}"
    );

    // RTMP with the key publishes stream "studio".
    let (ok, err) = finish(
        rtmp_publisher(&live.rtmp_url(&rtmp_key), 4),
        Duration::from_secs(60),
    );
    assert!(ok, "{err}\n{}", cluster.logs());
    let done = cluster.wait_complete("studio", Duration::from_secs(60));
    assert!(done["segments"]["done"].as_u64() >= Some(1), "{done}");
    assert!(!done.to_string().contains(&rtmp_key), "{done}");

    // HTTP push to /live/KEY/SEQ.ts publishes stream "pushed"; the key authenticates
    // every segment, and stops doing so once removed.
    let mut owner = Pusher::new(&live, &push_key);
    let a = owner.put(0, &segs[0]);
    assert_eq!(a.status, 200, "{}\n{}", a.text(), cluster.logs());
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["stream"], "pushed", "{v}");
    let mut intruder = Pusher::new(&live, "pushed");
    let a = intruder.put(1, &segs[1]);
    assert_eq!(a.status, 403, "the stream's name is no key: {}", a.text());
    let (ok, _, err) = keys(&cluster, &["remove", "pushed"]);
    assert!(ok, "{err}");
    let a = owner.put(1, &segs[1]);
    assert_eq!(a.status, 403, "a removed key: {}", a.text());
    let done = cluster.wait_complete("pushed", Duration::from_secs(60));
    assert_eq!(done["segments"]["total"], 1, "{done}");
    assert_eq!(done["segments"]["done"], 1, "{done}");
}

/// A pushed stream's later segments come only from the publisher that started it: it got
/// a push token with its first segment's answer, and nobody else can add to or overwrite
/// the stream. HTTP push goes through the auth webhook, whose go-livepeer answer fields
/// (`manifestID`, `presets`, `streamKey`) are honoured.
#[test]
fn a_pushed_stream_takes_segments_only_from_its_publisher() {
    let _serial = serial();
    let mut cluster = Cluster::start(2);
    let segs = pre_cut_segments(cluster.dir.path(), 6);

    // Open ingest: anyone may start a stream, only its publisher may continue it.
    let live = cluster.serve_live(&[]);
    let mut owner = Pusher::new(&live, "open-1");
    let a = owner.put(0, &segs[0]);
    assert_eq!(a.status, 200, "{}\n{}", a.text(), cluster.logs());
    assert!(
        owner.token.is_some(),
        "the first answer carries a push token"
    );
    let source0 = cluster.storage_dir().join("streams/open-1/source/0.ts");
    let stored0 = std::fs::read(&source0).unwrap();
    let mut intruder = Pusher::new(&live, "open-1");
    for (seq, tok) in [(1, None), (0, Some("forged")), (1, Some(""))] {
        intruder.token = tok.map(String::from);
        let a = intruder.put(seq, &segs[2]);
        assert_eq!(a.status, 403, "segment {seq} with {tok:?}: {}", a.text());
        assert!(a.text().contains("another publisher"), "{}", a.text());
    }
    let a = owner.put(1, &segs[1]);
    assert_eq!(a.status, 200, "{}", a.text());
    let done = cluster.wait_complete("open-1", Duration::from_secs(60));
    assert_eq!(done["segments"]["total"], 2, "{done}");
    assert_eq!(done["segments"]["done"], 2, "{done}");
    assert!(
        std::fs::read(&source0).unwrap() == stored0,
        "segment 0 is still the owner's"
    );

    // A client may choose its stream's token with the first segment (and pipeline).
    let mut chooser = Pusher::new(&live, "chosen-1");
    chooser.token = Some("short".into());
    let a = chooser.put(0, &segs[0]);
    assert_eq!(a.status, 400, "{}", a.text());
    chooser.token = Some("my-own-token-0123456789".into());
    let a = chooser.put(0, &segs[0]);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.header("castwork-push-token"),
        Some("my-own-token-0123456789")
    );
    let mut late = Pusher::new(&live, "chosen-1");
    late.token = Some("another-token-0123456789".into());
    assert_eq!(late.put(1, &segs[1]).status, 403);

    // The auth webhook decides on HTTP push too, and names stream, ladder and token.
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let hook = webhook(move |req| {
        log.lock().unwrap().push(req.to_string());
        if req.contains("\"stream_key\":\"camera-7\"") {
            (
                200,
                r#"{"manifestID":"renamed-7","presets":["P240p30fps16x9"],"streamKey":"hook-secret"}"#.into(),
            )
        } else {
            (403, "not on the list".into())
        }
    });
    let hooked = cluster.serve_live(&["--auth-webhook-url", &hook]);
    let mut refused = Pusher::new(&hooked, "camera-8");
    let a = refused.put(0, &segs[0]);
    assert_eq!(a.status, 403, "{}", a.text());
    assert!(a.text().contains("not on the list"), "{}", a.text());
    let mut cam = Pusher::new(&hooked, "camera-7");
    let a = cam.put(0, &segs[0]);
    assert_eq!(a.status, 200, "{}\n{}", a.text(), cluster.logs());
    assert_eq!(
        cam.token.as_deref(),
        Some("hook-secret"),
        "the webhook's streamKey"
    );
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["stream"], "renamed-7", "{v}");
    assert_eq!(v["renditions"].as_array().unwrap().len(), 1, "{v}");
    let mut other = Pusher::new(&hooked, "camera-7");
    let a = other.put(1, &segs[1]);
    assert_eq!(a.status, 403, "{}", a.text());
    let a = cam.put(1, &segs[1]);
    assert_eq!(a.status, 200, "{}", a.text());
    let asked = seen.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "one question per new stream: {asked:?}");
    assert!(asked[1].contains("\"via\":\"http\""), "{asked:?}");
    let done = cluster.wait_complete("renamed-7", Duration::from_secs(60));
    assert_eq!(done["segments"]["done"], 2, "{done}");
}

fn source(width: u32, height: u32) -> SourceMetadata {
    SourceMetadata::upright(width, height, 30)
}

fn started(
    stream: &str,
    session: uuid::Uuid,
    ladder: Vec<Profile>,
    src: SourceMetadata,
) -> Vec<u8> {
    encode(&IngestMessage::StreamStarted(StreamStarted {
        stream: stream.into(),
        session,
        mode: StreamMode::Vod,
        ladder,
        source: src,
        broadcaster: None,
        target_duration_secs: None,
        secret: "attacker-own-secret".into(),
    }))
}

/// A forged `StreamStarted` with thousands of rungs, or claiming an 8192x8192 source, is
/// refused with a message; one whose claimed size the real segment contradicts fails that
/// segment with a message. No worker dies, and a real stream completes after.
#[test]
fn hostile_ladders_and_source_claims_are_refused() {
    let _serial = serial();
    let cluster = Cluster::start(1);
    let injector = Injector::new(&cluster.amqp_url);
    let one = parse_profiles("P240p30fps16x9").unwrap().remove(0);
    let many: Vec<Profile> = (0..3000)
        .map(|i| Profile {
            name: format!("r{i}"),
            ..one.clone()
        })
        .collect();
    let new = uuid::Uuid::now_v7;
    injector.publish(
        INGEST_EXCHANGE,
        "ingest",
        &started("many-rungs", new(), many, source(640, 360)),
    );
    injector.publish(
        INGEST_EXCHANGE,
        "ingest",
        &started("huge-claim", new(), vec![one.clone()], source(8192, 8192)),
    );
    let rejected = "castwork_orchestrator_streams_total{event=\"rejected\"}";
    wait_until(
        "both forged streams refused",
        Duration::from_secs(20),
        || metric(&cluster.orchestrator_addr, rejected) >= 2.0,
    );
    let logs = cluster.logs();
    assert!(
        logs.contains("3000 rungs: a ladder has at most 8"),
        "{logs}"
    );
    assert!(logs.contains("source picture 8192x8192"), "{logs}");
    for name in ["many-rungs", "huge-claim"] {
        let code = http_get(&cluster.orchestrator_addr, &format!("/streams/{name}")).map(|r| r.0);
        assert_eq!(code, Some(404), "{name} was never admitted");
    }

    // A stream that claims 1280x720 and sends a 640x360 segment.
    let segs = pre_cut_segments(cluster.dir.path(), 2);
    let data = std::fs::read(&segs[0]).unwrap();
    let key = "streams/liar/source/0.ts";
    let path = cluster.storage_dir().join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &data).unwrap();
    let session = new();
    injector.publish(
        INGEST_EXCHANGE,
        "ingest",
        &started("liar", session, vec![one], source(1280, 720)),
    );
    wait_until("the liar admitted", Duration::from_secs(20), || {
        http_get(&cluster.orchestrator_addr, "/streams/liar").is_some_and(|(c, _)| c == 200)
    });
    let ready = IngestMessage::SegmentReady(SegmentReady {
        stream: "liar".into(),
        session,
        seq: 0,
        start_us: 1_400_000,
        duration_us: 2_000_000,
        last_pts_us: 3_366_666,
        frames: 60,
        has_audio: true,
        object: ObjectRef {
            key: key.into(),
            size: data.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&data)),
        },
        arrived_unix_ms: None,
        discontinuity: false,
        payment: None,
        secret: "attacker-own-secret".into(),
    });
    injector.publish(INGEST_EXCHANGE, "ingest", &encode(&ready));
    let ended = IngestMessage::StreamEnded(StreamEnded {
        stream: "liar".into(),
        session,
        segments: 1,
        secret: "attacker-own-secret".into(),
    });
    injector.publish(INGEST_EXCHANGE, "ingest", &encode(&ended));
    let done = cluster.wait_complete("liar", Duration::from_secs(60));
    assert_eq!(done["segments"]["failed"], 1, "{done}");
    let why = done["failures"][0]["message"].to_string();
    assert!(
        why.contains("640x360 but its stream was announced as 1280x720"),
        "{why}"
    );

    // The worker is alive and a real stream completes.
    assert_eq!(cluster.workers().len(), 1);
    let out = cluster.push(
        &clip(cluster.dir.path(), 2),
        "honest",
        &["--profiles", "P240p30fps16x9"],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
}

/// Whether the server closed `conn` (EOF or reset) within `within`.
fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Sends `bytes` one at a time, `gap` apart, until the server closes the connection or
/// `limit` passes; returns how long the server let it go on.
fn trickle(addr: &str, bytes: &[u8], gap: Duration, limit: Duration) -> Duration {
    let mut s = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    for b in bytes.iter().cycle() {
        if s.write_all(&[*b]).is_err() || start.elapsed() > limit {
            break;
        }
        if closed_by_server(&mut s, gap) {
            break;
        }
    }
    start.elapsed()
}

/// 500 idle HTTP and 500 idle RTMP connections do not stop a real publisher on either, and
/// the server drops them; slow-loris clients (a byte every second: in an HTTP head, in a
/// pushed body, before an RTMP publish) are dropped after a bounded time; past the
/// connection cap a client is closed at once, and served again once the idle ones are
/// gone.
#[test]
fn idle_and_slow_clients_do_not_stop_real_publishers() {
    let _serial = serial();
    let mut cluster = Cluster::start(2);
    let live = cluster.serve_live(&[
        "--http-header-secs",
        "3",
        "--rtmp-publish-secs",
        "3",
        "--http-push-body-secs",
        "4",
    ]);
    let segs = pre_cut_segments(cluster.dir.path(), 4);
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..500 {
        idle.push(TcpStream::connect(&live.http).unwrap());
        idle.push(TcpStream::connect(&live.rtmp).unwrap());
    }
    let publisher = rtmp_publisher(&live.rtmp_url("real-rtmp"), 4);
    let mut pusher = Pusher::new(&live, "real-http");
    let a = pusher.put(0, &segs[0]);
    assert_eq!(a.status, 200, "{}\n{}", a.text(), cluster.logs());
    let (ok, err) = finish(publisher, Duration::from_secs(60));
    assert!(ok, "the real RTMP publisher: {err}\n{}", cluster.logs());
    let dropped = idle
        .iter_mut()
        .map(|c| closed_by_server(c, Duration::from_secs(5)))
        .filter(|closed| *closed)
        .count();
    assert_eq!(dropped, 1000, "idle connections are dropped");

    let head = b"PUT /live/loris/0.ts HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n";
    let took = trickle(
        &live.http,
        head,
        Duration::from_secs(1),
        Duration::from_secs(20),
    );
    assert!(
        took < Duration::from_secs(8),
        "a slow HTTP head held on for {took:?}"
    );
    let took = trickle(
        &live.rtmp,
        &[3u8; 1537],
        Duration::from_secs(1),
        Duration::from_secs(20),
    );
    assert!(
        took < Duration::from_secs(8),
        "a slow RTMP client held on for {took:?}"
    );
    // A slow body: the head arrives, the body trickles.
    let mut s = TcpStream::connect(&live.http).unwrap();
    let t = Instant::now();
    write!(
        s,
        "PUT /live/slow-body/0.ts HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nContent-Duration: 2000\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    while t.elapsed() < Duration::from_secs(20) {
        let _ = s.write_all(&[0x47]);
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n")
            && String::from_utf8_lossy(&answer).contains("arrive in time")
        {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive in time"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // The connection cap.
    let capped = cluster.serve_live(&["--http-max-connections", "20", "--http-header-secs", "3"]);
    let mut held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&capped.http).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(&capped.http).unwrap();
    assert!(
        closed_by_server(&mut extra, Duration::from_secs(2)),
        "past the cap a client is closed at once"
    );
    // Once the idle ones are dropped (the head timeout), clients are served again.
    for c in &mut held {
        assert!(closed_by_server(c, Duration::from_secs(5)));
    }
    wait_until("served again", Duration::from_secs(10), || {
        http_get(&capped.http, "/healthz").is_some_and(|(c, _)| c == 200)
    });
    let refused = "castwork_http_connections_refused_total ";
    assert!(metric(&capped.http, refused) >= 1.0);
}

/// Files under `dir`, recursively (a local store may leave empty folders behind).
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    files_under(&p)
                } else {
                    1
                }
            })
            .sum()
    })
}

/// Requests that change state need the orchestrator's API token; an ended stream's state
/// is forgotten after the retention (its playback stays); `streams delete` removes state
/// and objects; `/status` reads a page of streams, not all of them. The broadcaster can
/// take pushes on a private address and lock playback with a token.
#[test]
fn state_changes_need_the_token_and_nothing_grows_forever() {
    let _serial = serial();
    let token = "operator-token-0123456789";
    // A retention of 0.0005 days is about 43 s.
    let mut cluster = Cluster::start_with(
        1,
        &["--api-token", token, "--retain-days", "0.0005"],
        Vec::new(),
    );
    let input = clip(cluster.dir.path(), 2);
    let rung = ["--profiles", "P240p30fps16x9"];
    for name in ["doomed", "retained", "by-cli"] {
        let out = cluster.push(&input, name, &rung);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let orch = cluster.orchestrator_addr.clone();
    let delete = |name: &str, auth: Option<&str>| {
        let bearer = auth.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("Authorization", b.as_str()))
            .collect();
        http_request(
            &orch,
            "DELETE",
            &format!("/streams/{name}"),
            &headers,
            b"",
            Duration::from_secs(20),
        )
        .unwrap()
    };
    for auth in [None, Some("guessed-token-0000000000")] {
        let a = delete("doomed", auth);
        assert_eq!(a.status, 401, "{}", a.text());
    }
    assert_eq!(cluster.status("doomed")["state"], "complete", "still there");
    let a = delete("doomed", Some(token));
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(http_get(&orch, "/streams/doomed").map(|r| r.0), Some(404));
    assert_eq!(
        files_under(&cluster.storage_dir().join("streams/doomed")),
        0,
        "objects deleted"
    );
    assert!(
        files_under(&cluster.storage_dir().join("streams/retained")) > 0,
        "others kept"
    );

    let out = std::process::Command::new(bin("orchestrator"))
        .env("REDIS_URL", cluster.redis_url())
        .env(
            "STORAGE_URL",
            format!("file://{}", cluster.storage_dir().display()),
        )
        .args(["streams", "delete", "by-cli"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted stream by-cli"));
    assert_eq!(http_get(&orch, "/streams/by-cli").map(|r| r.0), Some(404));

    // A page of one stream, with the counts of all.
    let (_, body) = http_get(&orch, "/status?per_page=1").unwrap();
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["streams"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["streams_ended"], 1, "{page}");

    // Retention: the ended stream's state goes, its playback stays.
    wait_until(
        "the retention forgets the stream",
        Duration::from_secs(90),
        || http_get(&orch, "/streams/retained").is_some_and(|(c, _)| c == 404),
    );
    let left = redis_cli(cluster.redis_url(), &["KEYS", "cw:stream:retained*"]);
    assert!(left.is_empty(), "{left}");
    let master = cluster.storage_dir().join("streams/retained/index.m3u8");
    assert!(master.exists(), "playback stays");

    // The broadcaster: push on a private address, playback behind a token.
    let push_addr = format!("127.0.0.1:{}", free_port());
    let live = cluster.serve_live(&[
        "--push-addr",
        &push_addr,
        "--playback-token",
        "viewer-token-42",
    ]);
    let segs = pre_cut_segments(cluster.dir.path(), 2);
    let mut on_playback = Pusher::new(&live, "locked");
    let a = on_playback.put(0, &segs[0]);
    assert_eq!(
        a.status,
        404,
        "no push on the playback address: {}",
        a.text()
    );
    let mut pusher = Pusher {
        addr: push_addr,
        path: "locked".into(),
        token: None,
    };
    let a = pusher.put(0, &segs[0]);
    assert_eq!(a.status, 200, "{}\n{}", a.text(), cluster.logs());
    let path = "/streams/retained/index.m3u8";
    let get = |path: &str, headers: &[(&str, &str)]| {
        http_request(
            &live.http,
            "GET",
            path,
            headers,
            b"",
            Duration::from_secs(10),
        )
        .unwrap()
    };
    assert_eq!(get(path, &[]).status, 401);
    assert_eq!(get(&format!("{path}?token=wrong"), &[]).status, 401);
    let a = get(&format!("{path}?token=viewer-token-42"), &[]);
    assert_eq!(a.status, 200, "{}", a.text());
    let cookie = a
        .header("set-cookie")
        .expect("a cookie for the player")
        .to_string();
    let cookie = cookie.split(';').next().unwrap().to_string();
    assert_eq!(get(path, &[("Cookie", &cookie)]).status, 200);
    assert_eq!(
        get(path, &[("Authorization", "Bearer viewer-token-42")]).status,
        200
    );
}

/// A retry that only excluded workers can see (the one worker's output failed its check)
/// no longer goes round the queue forever: after --excluded-retry-secs the segment fails
/// with a reason the pusher reads.
#[test]
fn a_retry_no_allowed_worker_takes_fails_with_a_reason() {
    let _serial = serial();
    let mut cluster = Cluster::start_with(
        0,
        &["--quality-sample-rate", "1", "--max-bad-results", "100"],
        Vec::new(),
    );
    cluster.add(
        "worker",
        &[
            "--worker-id",
            "cheat",
            "--test-only-cheat-black",
            "--excluded-retry-secs",
            "3",
        ],
    );
    let t = Instant::now();
    let out = cluster.push(
        &clip(cluster.dir.path(), 2),
        "orphaned",
        &["--profiles", "P240p30fps16x9"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("took the retry within 3 s: add a worker"),
        "{err}\n{}",
        cluster.logs()
    );
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    let done = cluster.wait_complete("orphaned", Duration::from_secs(10));
    assert_eq!(done["segments"]["failed"], 1, "{done}");
}

/// `push --wait --timeout N` gives up after N s with a message when nothing transcodes (no
/// worker), instead of waiting forever; the stream goes on.
#[test]
fn push_wait_gives_up_after_its_timeout() {
    let _serial = serial();
    let cluster = Cluster::start(0);
    let t = Instant::now();
    let out = cluster.push(
        &clip(cluster.dir.path(), 2),
        "unserved",
        &["--timeout", "3"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("gave up waiting after 3 s (--timeout)"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert_eq!(
        cluster.status("unserved")["state"],
        "active",
        "the stream goes on"
    );
}

/// A worker that says every segment cannot be transcoded anywhere (a liar, or one whose own
/// limits are lower than the others') fails none of them: its word is put to another
/// worker, which does them. Alone, a worker's word is final (nobody else could try), as
/// faults.rs and money.rs show.
#[test]
fn one_workers_word_does_not_fail_a_segment() {
    let _serial = serial();
    let mut cluster = Cluster::start(0);
    cluster.add(
        "worker",
        &["--worker-id", "liar", "--test-only-lie-permanent"],
    );
    cluster.add("worker", &["--worker-id", "honest"]);
    wait_until("both workers heard from", Duration::from_secs(30), || {
        cluster.workers().len() == 2
    });
    let out = cluster.push(
        &clip(cluster.dir.path(), 10),
        "doubted",
        &["--profiles", "P240p30fps16x9"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", cluster.logs());
    let done = cluster.wait_complete("doubted", Duration::from_secs(10));
    assert_eq!(done["segments"]["failed"], 0, "{done}");
    assert_eq!(done["segments"]["done"], 5, "{done}");
    let logs = cluster.logs();
    // The liar did say so (it took jobs), and was not believed.
    assert!(
        logs.contains("worker liar reported: TEST ONLY: this worker says no worker can transcode it; another worker tries it, to confirm"),
        "{logs}"
    );
    let accepted: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("segment accepted") && l.contains("doubted"))
        .collect();
    assert_eq!(accepted.len(), 5, "{logs}");
    assert!(accepted.iter().all(|l| l.contains("\"honest\"")), "{logs}");
}
