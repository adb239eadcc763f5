//! Runs the RTMP server in-process and publishes to it with the `ffmpeg` CLI (and with a
//! small `rml_rtmp` client for what ffmpeg cannot send), checking that the segments decode
//! alone, refusals reach the client, and dead or misbehaving connections end.

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use castwork_broadcaster::rtmp::{
    serve, Accepted, PublishRequest, Publishers, Refusal, RtmpEvent, RtmpOptions,
};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

mod common;
use common::{codecs, decode};

/// Accepts keys starting with "good" (and "cut", which it cuts off with a reason after a
/// second) and hands each stream's events to the test once it ends.
struct TestPublishers {
    done: mpsc::UnboundedSender<(String, Vec<RtmpEvent>)>,
}

impl Publishers for TestPublishers {
    async fn publish(&self, req: PublishRequest) -> Result<Accepted, Refusal> {
        let (cut_tx, cut_off) = oneshot::channel();
        if req.key.starts_with("cut") {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = cut_tx.send("the account cannot pay: top it up".to_string());
            });
        } else if !req.key.starts_with("good") {
            return Err(Refusal::bad_name(format!(
                "stream key {} is not known",
                req.key
            )));
        }
        let (sink, mut events_rx) = mpsc::channel(4);
        let done = self.done.clone();
        tokio::spawn(async move {
            let mut events = Vec::new();
            while let Some(event) = events_rx.recv().await {
                let ended = matches!(event, RtmpEvent::Ended { .. });
                events.push(event);
                if ended {
                    break;
                }
            }
            let _ = done.send((req.key, events));
        });
        Ok(Accepted {
            sink,
            base_ms: 0,
            cut_off,
        })
    }
}

struct Server {
    port: u16,
    done: mpsc::UnboundedReceiver<(String, Vec<RtmpEvent>)>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(idle_timeout: Duration) -> Server {
        Server::start_with(RtmpOptions {
            target_ms: 2000,
            max_ms: 10_000,
            idle_timeout,
            ..Default::default()
        })
        .await
    }

    async fn start_with(opts: RtmpOptions) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (done_tx, done) = mpsc::unbounded_channel();
        let publishers = Arc::new(TestPublishers { done: done_tx });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, publishers, opts, shutdown.clone()));
        Server {
            port,
            done,
            shutdown,
            task,
        }
    }

    /// The events of the next stream that ended.
    async fn next_stream(&mut self) -> (String, Vec<RtmpEvent>) {
        timeout(Duration::from_secs(20), self.done.recv())
            .await
            .expect("a stream ends")
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

/// Publishes `secs` seconds of 30 fps test video with audio, in real time, to `key`.
async fn ffmpeg_publish(port: u16, key: &str, secs: u32) -> Output {
    ffmpeg_publish_gop(port, key, secs, 30).await
}

/// [`ffmpeg_publish`] with a keyframe every `gop` frames.
async fn ffmpeg_publish_gop(port: u16, key: &str, secs: u32, gop: u32) -> Output {
    let url = format!("rtmp://127.0.0.1:{port}/live/{key}");
    let secs = secs.to_string();
    let gop = gop.to_string();
    tokio::task::spawn_blocking(move || {
        Command::new("ffmpeg")
            .args(["-v", "error", "-re", "-f", "lavfi"])
            .args([
                "-i",
                "testsrc=size=320x240:rate=30",
                "-f",
                "lavfi",
                "-i",
                "sine",
            ])
            .args([
                "-t", &secs, "-c:v", "libx264", "-preset", "veryfast", "-g", &gop,
            ])
            .args(["-c:a", "aac", "-f", "flv", &url])
            .output()
            .expect("ffmpeg is installed")
    })
    .await
    .unwrap()
}

/// Checks a cleanly published stream: segments 0.. that each decode alone with H.264 and
/// AAC, holding every frame, then `Ended` without error.
fn check_stream(events: &[RtmpEvent], frames: u64) {
    let (last, segments) = events.split_last().expect("events");
    let RtmpEvent::Ended { end_ms, error } = last else {
        panic!("last event is not Ended: {last:?}");
    };
    assert_eq!(error, &None);
    assert!(segments.len() >= 3, "{} segments", segments.len());
    let dir = tempfile::tempdir().unwrap();
    let mut decoded = 0;
    for (i, event) in segments.iter().enumerate() {
        let RtmpEvent::Segment(seg) = event else {
            panic!("event {i} is not a segment: {event:?}");
        };
        assert_eq!(seg.seq, i as u64);
        assert!(seg.start_ms < *end_ms);
        if i + 1 < segments.len() {
            assert!(seg.duration_ms.unwrap() >= 2000, "{:?}", seg.duration_ms);
        }
        let path = dir.path().join(format!("seg{i}.flv"));
        std::fs::write(&path, &seg.bytes).unwrap();
        assert_eq!(codecs(&path), ["aac", "h264"], "segment {i}");
        decoded += decode(&path);
    }
    assert_eq!(decoded, frames);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publish_is_cut_into_segments() {
    let mut server = Server::start(Duration::from_secs(5)).await;
    let out = ffmpeg_publish(server.port, "good1", 6).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (key, events) = server.next_stream().await;
    assert_eq!(key, "good1");
    check_stream(&events, 180);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_is_refused_with_the_message() {
    let mut server = Server::start(Duration::from_secs(5)).await;
    let out = ffmpeg_publish(server.port, "bad", 2).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("STDERR<<{stderr}>>");
    assert!(
        stderr.contains("Server error: stream key bad is not known"),
        "{stderr}"
    );
    assert!(server.done.try_recv().is_err());
    server.stop().await;
}

/// A publisher whose keyframes are further apart than a segment may last reads why it was
/// cut off, not a broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframes_too_far_apart_are_told_to_the_publisher() {
    let mut server = Server::start_with(RtmpOptions {
        target_ms: 1000,
        max_ms: 2000,
        ..Default::default()
    })
    .await;
    // A keyframe every 10 s.
    let started = Instant::now();
    let out = ffmpeg_publish_gop(server.port, "good-sparse", 8, 300).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("STDERR<<{stderr}>>");
    assert!(
        stderr.contains("Server error: keyframe interval too long"),
        "{stderr}"
    );
    assert!(stderr.contains("Keyframe Interval = 2"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    let (_, events) = server.next_stream().await;
    assert!(
        matches!(events.last(), Some(RtmpEvent::Ended { error: Some(e), .. }) if e.contains("keyframe")),
        "{events:?}"
    );
    server.stop().await;
}

/// A stream refused after it started (the orchestrator said no) tells its publisher why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_off_tells_the_publisher_why() {
    let mut server = Server::start(Duration::from_secs(5)).await;
    let started = Instant::now();
    let out = ffmpeg_publish(server.port, "cut1", 8).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("STDERR<<{stderr}>>");
    assert!(
        stderr.contains("Server error: the account cannot pay: top it up"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let (key, events) = server.next_stream().await;
    assert_eq!(key, "cut1");
    assert!(
        matches!(events.last(), Some(RtmpEvent::Ended { error: Some(e), .. }) if e.contains("cannot pay")),
        "{events:?}"
    );
    server.stop().await;
}

/// Past the connection cap a publisher is told the server is at capacity; once a slot is
/// free it publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_a_publisher_is_told_the_server_is_at_capacity() {
    let mut server = Server::start_with(RtmpOptions {
        max_connections: 1,
        ..Default::default()
    })
    .await;
    let held = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = ffmpeg_publish(server.port, "good-late", 2).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("STDERR<<{stderr}>>");
    assert!(
        stderr.contains("Server error: the server is at capacity (1 RTMP connections"),
        "{stderr}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = ffmpeg_publish(server.port, "good-now", 3).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (key, _) = server.next_stream().await;
    assert_eq!(key, "good-now");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_at_once() {
    let mut server = Server::start(Duration::from_secs(5)).await;
    let (a, b) = tokio::join!(
        ffmpeg_publish(server.port, "good2", 6),
        ffmpeg_publish(server.port, "good3", 6)
    );
    for out in [a, b] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut keys = Vec::new();
    for _ in 0..2 {
        let (key, events) = server.next_stream().await;
        check_stream(&events, 180);
        keys.push(key);
    }
    keys.sort();
    assert_eq!(keys, ["good2", "good3"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_dropped_after_the_idle_timeout() {
    let server = Server::start(Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the server closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    server.stop().await;
}

/// A minimal publishing client on `rml_rtmp`, for input ffmpeg would not send.
struct Client {
    stream: TcpStream,
    session: ClientSession,
}

impl Client {
    /// Connects and completes the handshake: the stream and the bytes after it.
    async fn handshake(port: u16) -> (TcpStream, Vec<u8>) {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut handshake = Handshake::new(PeerType::Client);
        let p0_p1 = handshake.generate_outbound_p0_and_p1().unwrap();
        stream.write_all(&p0_p1).await.unwrap();
        let mut buf = vec![0u8; 8192];
        let leftover = loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "server closed during the handshake");
            match handshake.process_bytes(&buf[..n]).unwrap() {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    stream.write_all(&response_bytes).await.unwrap();
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    stream.write_all(&response_bytes).await.unwrap();
                    break remaining_bytes;
                }
            }
        };
        (stream, leftover)
    }

    async fn publish(port: u16, app: &str, key: &str) -> Client {
        let (stream, leftover) = Client::handshake(port).await;
        let (session, results) = ClientSession::new(ClientSessionConfig::new()).unwrap();
        let mut client = Client { stream, session };
        client.send(results).await;
        let results = client.session.handle_input(&leftover).unwrap();
        client.send(results).await;
        let request = client.session.request_connection(app.to_string()).unwrap();
        client.send(vec![request]).await;
        client
            .wait_for(|e| matches!(e, ClientSessionEvent::ConnectionRequestAccepted))
            .await;
        let request = client
            .session
            .request_publishing(key.to_string(), PublishRequestType::Live)
            .unwrap();
        client.send(vec![request]).await;
        client
            .wait_for(|e| matches!(e, ClientSessionEvent::PublishRequestAccepted))
            .await;
        client
    }

    async fn send(&mut self, results: Vec<ClientSessionResult>) {
        for result in results {
            if let ClientSessionResult::OutboundResponse(packet) = result {
                self.stream.write_all(&packet.bytes).await.unwrap();
            }
        }
    }

    async fn wait_for(&mut self, wanted: impl Fn(&ClientSessionEvent) -> bool) {
        let mut buf = vec![0u8; 8192];
        loop {
            let n = timeout(Duration::from_secs(5), self.stream.read(&mut buf))
                .await
                .expect("server answers")
                .unwrap();
            assert!(n > 0, "server closed the connection");
            let mut found = false;
            let mut outbound = Vec::new();
            for result in self.session.handle_input(&buf[..n]).unwrap() {
                match result {
                    ClientSessionResult::RaisedEvent(e) => found |= wanted(&e),
                    other => outbound.push(other),
                }
            }
            self.send(outbound).await;
            if found {
                return;
            }
        }
    }

    async fn video(&mut self, ts: u32, body: &'static [u8]) {
        let packet = self
            .session
            .publish_video_data(Bytes::from_static(body), RtmpTimestamp::new(ts), false)
            .unwrap();
        self.send(vec![packet]).await;
    }

    /// Reads until the server closes the connection.
    async fn closed_by_server(&mut self) {
        let mut buf = vec![0u8; 8192];
        let closed = timeout(Duration::from_secs(5), async {
            while matches!(self.stream.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        closed.await.expect("the server closes the connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_rtmp_ends_the_stream_with_advice() {
    let mut server = Server::start(Duration::from_secs(5)).await;
    let mut client = Client::publish(server.port, "live", "good-hevc").await;
    // Enhanced RTMP: IsExHeader | keyframe, PacketTypeSequenceStart, FourCC "hvc1".
    client.video(0, b"\x90hvc1\x01\x02\x03").await;
    client.closed_by_server().await;
    let (key, events) = server.next_stream().await;
    assert_eq!(key, "good-hevc");
    let [RtmpEvent::Ended {
        end_ms: 0,
        error: Some(error),
    }] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert!(error.contains("set the encoder to H.264"), "{error}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_ends_the_stream_and_the_server_keeps_serving() {
    let mut server = Server::start(Duration::from_secs(5)).await;
    let mut client = Client::publish(server.port, "live", "good-garbage").await;
    client.video(0, b"\x17\x01\x00\x00\x00\x65").await;
    // A chunk header on a chunk stream never seen before, then junk.
    client.stream.write_all(&[0xC9; 4096]).await.unwrap();
    client.closed_by_server().await;
    let (_, events) = server.next_stream().await;
    let Some(RtmpEvent::Ended {
        error: Some(error), ..
    }) = events.last()
    else {
        panic!("{events:?}");
    };
    assert!(error.contains("rtmp"), "{error}");
    // The keyframe before the junk made a (one-frame) segment.
    assert!(matches!(&events[0], RtmpEvent::Segment(s) if s.seq == 0));

    let out = ffmpeg_publish(server.port, "good4", 3).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (key, events) = server.next_stream().await;
    assert_eq!(key, "good4");
    assert!(matches!(
        events.last(),
        Some(RtmpEvent::Ended { error: None, .. })
    ));
    server.stop().await;
}

/// rml_rtmp 0.8 subtracts without checking when a type 1 chunk header carries an extended
/// timestamp below 0xFFFFFF, which panics where overflow checks are on (debug builds). The
/// server turns that into an error on this connection only.
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_rml_rtmp_ends_only_that_connection() {
    let mut server = Server::start(Duration::from_secs(5)).await;
    let mut client = Client::publish(server.port, "live", "good-panic").await;
    // An AAC frame on chunk stream 10 (type 0 header), then one with a type 1 header whose
    // timestamp delta says "extended" and whose extended timestamp is 0.
    let full = [10, 0, 0, 0, 0, 0, 3, 8, 1, 0, 0, 0, 0xAF, 1, 0];
    let delta = [0x4A, 0xFF, 0xFF, 0xFF, 0, 0, 3, 8, 0, 0, 0, 0, 0xAF, 1, 0];
    client.stream.write_all(&full).await.unwrap();
    client.stream.write_all(&delta).await.unwrap();
    client.closed_by_server().await;
    let (_, events) = server.next_stream().await;
    let [RtmpEvent::Ended {
        error: Some(error), ..
    }] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert_eq!(error, "malformed rtmp input");

    let mut other = Client::publish(server.port, "live", "good-after").await;
    other.video(0, b"\x17\x01\x00\x00\x00\x65").await;
    drop(other);
    let (key, events) = server.next_stream().await;
    assert_eq!(key, "good-after");
    assert!(matches!(
        events.last(),
        Some(RtmpEvent::Ended { error: None, .. })
    ));
    server.stop().await;
}

/// The inputs `scripts/fuzz.sh` found making rml_rtmp panic (fuzz target `rtmp_session`),
/// each sent right after the handshake: an overflow in its chunk deserializer (debug
/// builds) and a slice index on an empty AMF command (every build). Each connection is
/// closed, and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fuzzers_rml_rtmp_crash_inputs_end_only_their_connection() {
    let mut server = Server::start(Duration::from_secs(5)).await;
    let inputs: [&[u8]; 2] = [
        include_bytes!("data/rml_rtmp_overflow.bin"),
        include_bytes!("data/rml_rtmp_amf_slice.bin"),
    ];
    for input in inputs {
        let (mut stream, _) = Client::handshake(server.port).await;
        stream.write_all(input).await.unwrap();
        let mut buf = vec![0u8; 8192];
        let closed = timeout(Duration::from_secs(15), async {
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        closed.await.expect("the server closes the connection");
    }
    let mut other = Client::publish(server.port, "live", "good-after-fuzz").await;
    other.video(0, b"\x17\x01\x00\x00\x00\x65").await;
    drop(other);
    let (key, _) = server.next_stream().await;
    assert_eq!(key, "good-after-fuzz");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_publisher_is_ended_after_the_idle_timeout() {
    let mut server = Server::start(Duration::from_secs(1)).await;
    let mut client = Client::publish(server.port, "live", "good-silent").await;
    client.video(0, b"\x17\x01\x00\x00\x00\x65").await;
    let (_, events) = server.next_stream().await;
    let [RtmpEvent::Segment(seg), RtmpEvent::Ended {
        error: Some(error), ..
    }] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert_eq!((seg.seq, seg.duration_ms), (0, None));
    assert!(error.contains("no data from the publisher"), "{error}");
    client.closed_by_server().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let mut server = Server::start(Duration::from_secs(5)).await;
    let mut client = Client::publish(server.port, "live", "good-open").await;
    client.video(0, b"\x17\x01\x00\x00\x00\x65").await;
    client.video(33, b"\x27\x01\x00\x00\x00\x41").await;
    // Let the server read the frames before it stops.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.shutdown.cancel();
    let (_, events) = server.next_stream().await;
    let [RtmpEvent::Segment(_), RtmpEvent::Ended { end_ms, error }] = &events[..] else {
        panic!("{events:?}");
    };
    assert_eq!(
        (*end_ms, error.as_deref()),
        (66, Some("server shutting down"))
    );
    server.stop().await;
}
