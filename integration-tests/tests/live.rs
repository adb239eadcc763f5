//! Live streaming end to end: RTMP publishers (the `ffmpeg` CLI in real time), HTTP push of
//! pre-cut segments, live jobs ahead of an on-demand backlog, and deadlines.
//!
//! The tests of this file run one at a time: each needs the machine's cores to keep up
//! with real time.

mod common;

use std::collections::HashSet;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn status(cluster: &Cluster, stream: &str) -> Value {
    let (code, body) = http_get(&cluster.orchestrator_addr, &format!("/streams/{stream}"))
        .expect("orchestrator answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn media_playlist(path: &Path) -> Option<m3u8_rs::MediaPlaylist> {
    let text = std::fs::read(path).ok()?;
    m3u8_rs::parse_media_playlist_res(&text).ok()
}

fn seq_of(uri: &str) -> u64 {
    uri.split('.').next().unwrap().parse().unwrap()
}

#[test]
fn rtmp_stream_grows_live_ends_and_plays_back() {
    let _serial = serial();
    let mut cluster = Cluster::start_with(2, &["--live-window", "4"], Vec::new());
    // A second orchestrator shares the work: both write the live playlists.
    let second = format!("127.0.0.1:{}", free_port());
    cluster.add(
        "orchestrator",
        &["--http-addr", &second, "--live-window", "4"],
    );
    let live = cluster.serve_live(&[]);
    let stream = "rtmp-live-1";
    let secs = 24;
    let publisher = rtmp_publisher(&live.rtmp_url(stream), secs);
    let playlist = cluster
        .storage_dir()
        .join(format!("streams/{stream}/P240p30fps16x9/index.m3u8"));

    // Read the live playlist while the publisher runs: every version of it keeps RFC 8216
    // (see `check_live_playlist`), it grows, only ever appends, and keeps a window of 4
    // (three target durations of 2 s need only 3) with a consistent media sequence.
    let mut snapshots: Vec<(u64, Vec<String>)> = Vec::new();
    let mut publisher = Some(publisher);
    let started = Instant::now();
    while let Some(p) = publisher.as_mut() {
        if p.try_wait().unwrap().is_some() {
            let (ok, err) = finish(publisher.take().unwrap(), Duration::from_secs(5));
            assert!(ok, "publisher failed: {err}\n{}", cluster.logs());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(u64::from(secs) + 60),
            "publisher ran too long"
        );
        if let Some(m) = media_playlist(&playlist) {
            assert!(!m.end_list, "ENDLIST while the publisher is live");
            check_live_playlist(&m, 2);
            assert!(m.segments.len() <= 4, "window of 4: {}", m.segments.len());
            let uris: Vec<String> = m.segments.iter().map(|s| s.uri.clone()).collect();
            for (i, u) in uris.iter().enumerate() {
                assert_eq!(
                    seq_of(u),
                    m.media_sequence + i as u64,
                    "media sequence matches the listed segments: {uris:?}"
                );
            }
            if snapshots.last().map(|(_, u)| u) != Some(&uris) {
                snapshots.push((m.media_sequence, uris));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let grew: HashSet<u64> = snapshots
        .iter()
        .map(|(ms, u)| ms + u.len() as u64)
        .collect();
    assert!(
        grew.len() >= 5,
        "the live playlist should grow while the stream runs: {snapshots:?}"
    );
    for pair in snapshots.windows(2) {
        let ((ms0, a), (ms1, b)) = (&pair[0], &pair[1]);
        assert!(ms1 >= ms0, "media sequence went back: {pair:?}");
        // What stays of the old playlist is the start of the new one, unchanged.
        let kept = &a[(ms1 - ms0).min(a.len() as u64) as usize..];
        assert_eq!(&b[..kept.len()], kept, "a playlist line changed: {pair:?}");
    }

    let done = cluster.wait_complete(stream, Duration::from_secs(90));
    let total = done["segments"]["total"].as_u64().unwrap();
    assert!(total >= 11, "a {secs} s stream in 2 s segments: {done}");
    assert_eq!(done["segments"]["done"], total, "{done}");
    assert_eq!(done["segments"]["skipped"], 0, "{done}");
    for rung in ["P240p30fps16x9", "P360p30fps16x9"] {
        let dir = cluster
            .storage_dir()
            .join(format!("streams/{stream}/{rung}"));
        let live_end = media_playlist(&dir.join("index.m3u8")).unwrap();
        assert!(live_end.end_list, "the live playlist ends with ENDLIST");
        check_live_playlist(&live_end, 2);
        let recording = media_playlist(&dir.join("recording.m3u8")).unwrap();
        assert!(recording.end_list);
        let seqs: Vec<u64> = recording.segments.iter().map(|s| seq_of(&s.uri)).collect();
        assert_eq!(
            seqs,
            (0..total).collect::<Vec<_>>(),
            "{rung}: every segment"
        );
    }
    // Players start on the first variant: a middle rung (of two, the lower).
    let live_master = std::fs::read(
        cluster
            .storage_dir()
            .join(format!("streams/{stream}/index.m3u8")),
    )
    .unwrap();
    let live_master = m3u8_rs::parse_master_playlist_res(&live_master).unwrap();
    assert_eq!(
        live_master.variants[0].uri, "P240p30fps16x9/index.m3u8",
        "{live_master:?}"
    );
    let master = cluster
        .storage_dir()
        .join(format!("streams/{stream}/recording.m3u8"));
    let errors = decode_errors(&master);
    assert!(
        errors.trim().is_empty(),
        "playback decodes cleanly: {errors}"
    );
    let probe = ffprobe(&master, &["-show_entries", "format=duration"]);
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (duration - f64::from(secs)).abs() < 0.5,
        "the recording lasts as long as the stream: {duration}"
    );

    let latency = &done["latency"];
    assert_eq!(latency["segments"], total, "{latency}");
    println!("live latency over {total} segments: {latency}");
    // Each orchestrator observes the segments it listed: together, every segment once.
    let observed: u64 = [&cluster.orchestrator_addr, &second]
        .iter()
        .map(|addr| {
            let (_, metrics) = http_get(addr, "/metrics").unwrap();
            metrics
                .lines()
                .find_map(|l| {
                    l.strip_prefix(
                        "castwork_orchestrator_live_latency_seconds_count{part=\"total\"} ",
                    )
                })
                .map_or(0, |v| v.trim().parse().unwrap())
        })
        .sum();
    assert_eq!(observed, total, "latency observations");
}

/// RFC 8216's rules for a live media playlist, as players rely on them: the target
/// duration is `target` (a 2 s GOP gives 2), no segment rounds above it, a window that has
/// dropped segments still holds three target durations (players start that far behind the
/// live edge), and every segment says when it was live, in order.
fn check_live_playlist(m: &m3u8_rs::MediaPlaylist, target: u64) {
    assert_eq!(m.target_duration, target, "target duration: {m:?}");
    let mut total = 0.0;
    let mut last_pdt = None;
    for s in &m.segments {
        assert!(
            (s.duration as f64).round() as u64 <= target,
            "EXTINF {} above the target duration {target}",
            s.duration
        );
        total += s.duration as f64;
        let pdt = s
            .program_date_time
            .unwrap_or_else(|| panic!("{} has no EXT-X-PROGRAM-DATE-TIME: {m:?}", s.uri));
        assert!(last_pdt.is_none_or(|l| l < pdt), "dates go back: {m:?}");
        last_pdt = Some(pdt);
    }
    if m.media_sequence > 0 {
        assert!(
            total >= 3.0 * target as f64 - 0.1,
            "a window of {total:.3} s is under three target durations of {target} s: {m:?}"
        );
    }
}

/// A tiny auth webhook: denies keys starting with `denied`, gives the rest a one-rung ladder.
fn auth_webhook() -> String {
    webhook(|req| {
        if req.contains("\"stream_key\":\"denied") {
            (403, "key revoked".into())
        } else {
            (200, r#"{"profiles":"P240p30fps16x9"}"#.into())
        }
    })
}

#[test]
fn concurrent_publishers_duplicate_keys_and_the_auth_hook() {
    let _serial = serial();
    let mut cluster = Cluster::start(2);
    let hook = auth_webhook();
    let live = cluster.serve_live(&["--auth-webhook-url", &hook]);
    let a = rtmp_publisher(&live.rtmp_url("alpha-1"), 8);
    let b = rtmp_publisher(&live.rtmp_url("beta-1"), 8);
    // Once alpha is live, a second publisher on its key is refused.
    wait_until("alpha admitted", Duration::from_secs(30), || {
        http_get(&cluster.orchestrator_addr, "/streams/alpha-1").is_some_and(|(c, _)| c == 200)
    });
    let (ok, err) = finish(
        rtmp_publisher(&live.rtmp_url("alpha-1"), 4),
        Duration::from_secs(30),
    );
    assert!(!ok, "a second publisher on a live key must be refused");
    assert!(err.contains("already publishing"), "ffmpeg says why: {err}");
    let (ok, err) = finish(
        rtmp_publisher(&live.rtmp_url("denied-key"), 4),
        Duration::from_secs(30),
    );
    assert!(!ok, "the auth hook denies the key");
    assert!(err.contains("key revoked"), "ffmpeg says why: {err}");

    for (name, p) in [("alpha-1", a), ("beta-1", b)] {
        let (ok, err) = finish(p, Duration::from_secs(60));
        assert!(ok, "{name}: {err}\n{}", cluster.logs());
    }
    for name in ["alpha-1", "beta-1"] {
        let done = cluster.wait_complete(name, Duration::from_secs(60));
        let total = done["segments"]["total"].as_u64().unwrap();
        assert!(total >= 3, "{done}");
        assert_eq!(done["segments"]["done"], total, "{done}");
        let rungs: Vec<&str> = done["renditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(rungs, ["P240p30fps16x9"], "the ladder the hook chose");
    }
    assert!(
        http_get(&cluster.orchestrator_addr, "/streams/denied-key").is_some_and(|(c, _)| c == 404),
        "a denied key never becomes a stream"
    );
}

/// Splits a `multipart/mixed` body into (headers, body) parts.
fn multipart_parts(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("a boundary")
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(pos) = find(rest, delim.as_bytes()) {
        rest = &rest[pos + delim.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let rest2 = &rest[2..];
        let head_end = find(rest2, b"\r\n\r\n").expect("part head");
        let head = String::from_utf8_lossy(&rest2[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("part length")
            .parse()
            .unwrap();
        let data = rest2[head_end + 4..head_end + 4 + len].to_vec();
        rest = &rest2[head_end + 4 + len..];
        parts.push((head, data));
    }
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn http_push_answers_with_the_renditions() {
    let _serial = serial();
    let mut cluster = Cluster::start(2);
    let live = cluster.serve_live(&["--http-push-max-mb", "2"]);
    let segs = pre_cut_segments(cluster.dir.path(), 6);
    assert_eq!(segs.len(), 3);
    let stream = "pushed-1";
    let wait = Duration::from_secs(90);
    let mut p = Pusher::new(&live, stream);

    // Segment 0, answered with the renditions themselves.
    let body = std::fs::read(&segs[0]).unwrap();
    let a = p.send("PUT", "0.ts", &[("Accept", "multipart/mixed")], &body);
    assert_eq!(a.status, 200, "{}\n{}", a.text(), cluster.logs());
    let parts = multipart_parts(a.header("content-type").unwrap(), &a.body);
    let mut names = Vec::new();
    for (head, data) in &parts {
        let name = head
            .lines()
            .find_map(|l| l.strip_prefix("Rendition-Name: "))
            .unwrap()
            .to_string();
        assert!(head.contains("Content-Type: video/mp2t"), "{head}");
        let f = cluster.dir.path().join(format!("{name}.ts"));
        std::fs::write(&f, data).unwrap();
        let p = ffprobe(
            &f,
            &["-show_entries", "format=duration:stream=codec_name,width"],
        );
        let d: f64 = p["format"]["duration"].as_str().unwrap().parse().unwrap();
        assert!((d - 2.0).abs() < 0.1, "{name}: {d} s");
        names.push(name);
    }
    names.sort();
    assert_eq!(names, ["P240p30fps16x9", "P360p30fps16x9"]);

    // Segment 1 over POST, answered with URLs that play from this server.
    let a = p.send("POST", "1.ts", &[], &std::fs::read(&segs[1]).unwrap());
    assert_eq!(a.status, 200, "{}", a.text());
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    let renditions = v["renditions"].as_array().unwrap();
    assert_eq!(renditions.len(), 2, "{v}");
    for r in renditions {
        let url = r["url"].as_str().unwrap();
        let path = url.split_once(&live.http).unwrap().1;
        let got = http_request(&live.http, "GET", path, &[], &[], wait).unwrap();
        assert_eq!(got.status, 200, "{url}");
        assert_eq!(got.header("content-type"), Some("video/mp2t"));
    }

    // Bad requests get clear errors and lose nothing else.
    let bad = p.send("PUT", "x.ts", &[], b"x");
    assert_eq!(bad.status, 400, "{}", bad.text());
    let junk = p.send("PUT", "7.ts", &[], b"this is not a transport stream");
    assert_eq!(junk.status, 422, "{}", junk.text());
    assert!(
        junk.text().contains("unreadable segment"),
        "{}",
        junk.text()
    );
    let dur = p.send("PUT", "2.ts", &[("Content-Duration", "soon")], b"x");
    assert_eq!(dur.status, 400, "{}", dur.text());
    let huge = p.send("PUT", "2.ts", &[], &vec![0x47u8; 3 * 1024 * 1024]);
    assert_eq!(huge.status, 413, "over --http-push-max-mb");

    let a = p.send("PUT", "2.ts", &[], &std::fs::read(&segs[2]).unwrap());
    assert_eq!(a.status, 200, "{}", a.text());

    // The stream ends once pushes stop; its recording has every pushed segment.
    let done = cluster.wait_complete(stream, Duration::from_secs(60));
    assert_eq!(done["segments"]["total"], 3, "{done}");
    assert_eq!(done["segments"]["done"], 3, "{done}");
    let master = cluster
        .storage_dir()
        .join(format!("streams/{stream}/recording.m3u8"));
    let errors = decode_errors(&master);
    assert!(errors.trim().is_empty(), "{errors}");
}

/// go-livepeer's HTTP push as its clients use it: MP4 segments (`SEQ.mp4`, plain and
/// fragmented) and the stream and ladder in `Livepeer-Transcode-Configuration`.
#[test]
fn go_livepeer_pushes_mp4_segments_with_their_transcode_configuration() {
    let _serial = serial();
    // Formats, not deadlines, are tested here: a busy machine gets time.
    let mut cluster = Cluster::start_with(1, &["--live-deadline-secs", "60"], Vec::new());
    let live = cluster.serve_live(&[]);
    let segs = pre_cut_segments(cluster.dir.path(), 4);
    let mp4 = |i: usize, flags: &str| {
        let out = cluster.dir.path().join(format!("seg{i}.mp4"));
        let src = segs[i].display().to_string();
        ffmpeg(&[
            "-v",
            "error",
            "-y",
            "-i",
            &src,
            // The audio encoded again: an MP4 muxer that writes its header before the first
            // packet (empty_moov) needs the AAC configuration up front.
            "-c:v",
            "copy",
            "-c:a",
            "aac",
            "-movflags",
            flags,
            "-f",
            "mp4",
            out.to_str().unwrap(),
        ]);
        std::fs::read(out).unwrap()
    };
    let config = r#"{"manifestID": "mp4-cfg", "profiles": [{"name": "custom", "width": 320,
        "height": 180, "bitrate": 300000, "fps": 30}]}"#
        .replace('\n', " ");
    let mut p = Pusher::new(&live, "mp4-push");
    let bad = p.send(
        "PUT",
        "0.mp4",
        &[("Livepeer-Transcode-Configuration", "{not json")],
        b"x",
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(
        bad.text()
            .contains("Livepeer-Transcode-Configuration is not JSON"),
        "{}",
        bad.text()
    );

    let header = [("Livepeer-Transcode-Configuration", config.as_str())];
    let a = p.send("PUT", "0.mp4", &header, &mp4(0, "+faststart"));
    assert_eq!(a.status, 200, "{}\n{}", a.text(), cluster.logs());
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["stream"], "mp4-cfg", "the header names the stream: {v}");
    let names: Vec<&str> = v["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["custom"], "the header's ladder: {v}");
    let a = p.send("PUT", "1.mp4", &header, &mp4(1, "frag_keyframe+empty_moov"));
    assert_eq!(
        a.status,
        200,
        "fragmented MP4: {}\n{}",
        a.text(),
        cluster.logs()
    );

    let done = cluster.wait_complete("mp4-cfg", Duration::from_secs(60));
    assert_eq!(done["state"], "complete", "{done}");
    assert_eq!(cluster.playlist_seqs("mp4-cfg", "custom"), [0, 1]);
}

fn redis_get(cluster: &Cluster, key: &str, field: &str) -> Option<u64> {
    let url = cluster.redis_url();
    let out = std::process::Command::new("redis-cli")
        .args(["-u", url, "HGET", key, field])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[test]
fn live_segments_go_ahead_of_an_on_demand_backlog() {
    let _serial = serial();
    // One worker with one slot: live and on-demand work compete for it.
    let mut cluster = Cluster::start(1);
    let live = cluster.serve_live(&[]);
    let dir = cluster.dir.path().to_path_buf();
    let vod_clip = dir.join("backlog.mp4");
    tone_clip(&vod_clip, "1280x720", 30, "aac");
    let segs = pre_cut_segments(&dir, 2);
    let mut push = cluster.push_in_background(&vod_clip, "backlog", &[]);
    // Wait until the worker is busy with the backlog and has finished a segment or two, so
    // its transcode time is known.
    wait_until(
        "on-demand backlog under way",
        Duration::from_secs(120),
        || {
            http_get(&cluster.orchestrator_addr, "/streams/backlog").is_some_and(|(c, b)| {
                c == 200
                    && serde_json::from_str::<Value>(&b).unwrap()["segments"]["done"].as_u64()
                        >= Some(2)
            })
        },
    );
    let pushed = Instant::now();
    let mut p_urgent = Pusher::new(&live, "urgent");
    let a = p_urgent.send("PUT", "0.ts", &[], &std::fs::read(&segs[0]).unwrap());
    let live_secs = pushed.elapsed().as_secs_f64();
    assert_eq!(a.status, 200, "{}", a.text());
    let backlog = status(&cluster, "backlog");
    let done = backlog["segments"]["done"].as_u64().unwrap();
    let received = backlog["segments"]["received"].as_u64().unwrap();
    assert!(
        done + 3 < received,
        "the live segment finished while the backlog was still queued: {backlog}"
    );
    let vod_transcode_ms = (0..done)
        .filter_map(|s| {
            redis_get(
                &cluster,
                &format!("cw:stream:backlog:seg:{s}"),
                "transcode_ms",
            )
        })
        .max()
        .unwrap();
    let urgent = "cw:stream:urgent:seg:0";
    let wait_ms = redis_get(&cluster, urgent, "started_ms").unwrap()
        - redis_get(&cluster, urgent, "arrived_ms").unwrap();
    println!(
        "live segment waited {wait_ms} ms for a worker (answered in {live_secs:.2} s); the \
         longest on-demand segment transcode was {vod_transcode_ms} ms; {} on-demand segments \
         were still queued",
        received - done
    );
    // Bound: no longer than one on-demand transcode, plus admission and remux slack.
    assert!(
        wait_ms <= vod_transcode_ms + 1500,
        "live waited {wait_ms} ms; one on-demand transcode takes up to {vod_transcode_ms} ms"
    );
    let _ = push.kill();
    let _ = push.wait();
}

#[test]
fn a_live_segment_past_its_deadline_is_skipped() {
    let _serial = serial();
    // No worker at first: the first segment's job sits in the queue past its deadline.
    let mut cluster = Cluster::start_with(0, &["--live-deadline-secs", "3"], Vec::new());
    let live = cluster.serve_live(&["--http-push-wait-secs", "60"]);
    let segs = pre_cut_segments(cluster.dir.path(), 6);
    let mut p_late_1 = Pusher::new(&live, "late-1");
    let late = p_late_1.send("PUT", "0.ts", &[], &std::fs::read(&segs[0]).unwrap());
    assert_eq!(late.status, 422, "{}", late.text());
    assert!(late.text().contains("skipped"), "{}", late.text());
    cluster.add("worker", &["--worker-id", "late-worker"]);
    let a = p_late_1.send("PUT", "1.ts", &[], &std::fs::read(&segs[1]).unwrap());
    assert_eq!(a.status, 200, "{}", a.text());
    // Segments 2 and 3 never arrive: once the hold bound passes they are skipped together
    // and segment 4 is listed.
    let a = p_late_1.send("PUT", "4.ts", &[], &std::fs::read(&segs[2]).unwrap());
    assert_eq!(a.status, 200, "{}", a.text());
    let listed = cluster
        .storage_dir()
        .join("streams/late-1/P240p30fps16x9/index.m3u8");
    let held = Instant::now();
    wait_until("segment 4 listed", Duration::from_secs(30), || {
        media_playlist(&listed).is_some_and(|m| m.segments.iter().any(|s| seq_of(&s.uri) == 4))
    });
    let waited = held.elapsed();
    assert!(
        waited < Duration::from_secs(8),
        "two missing segments are waited for once (3 s), not once each: {waited:?}"
    );
    let done = cluster.wait_complete("late-1", Duration::from_secs(60));
    assert_eq!(done["segments"]["total"], 5, "{done}");
    assert_eq!(done["segments"]["skipped"], 3, "{done}");
    assert_eq!(done["segments"]["done"], 2, "{done}");
    let recording = media_playlist(
        &cluster
            .storage_dir()
            .join("streams/late-1/P240p30fps16x9/recording.m3u8"),
    )
    .unwrap();
    let seqs: Vec<u64> = recording.segments.iter().map(|s| seq_of(&s.uri)).collect();
    assert_eq!(seqs, [1, 4], "the skipped segments are left out");
    assert!(
        recording.segments[1].discontinuity,
        "a gap before segment 4"
    );
}

#[test]
fn the_same_key_broadcasts_again_after_its_stream_ended() {
    let _serial = serial();
    let mut cluster = Cluster::start(2);
    let live = cluster.serve_live(&[]);
    let stream = "again-1";
    let (ok, err) = finish(
        rtmp_publisher(&live.rtmp_url(stream), 5),
        Duration::from_secs(60),
    );
    assert!(ok, "{err}");
    let first = cluster.wait_complete(stream, Duration::from_secs(60));
    let old = first["session"].as_str().unwrap().to_string();
    let (ok, err) = finish(
        rtmp_publisher(&live.rtmp_url(stream), 5),
        Duration::from_secs(60),
    );
    assert!(ok, "the key broadcasts again: {err}\n{}", cluster.logs());
    wait_until(
        "the second broadcast completes",
        Duration::from_secs(60),
        || {
            let s = status(&cluster, stream);
            s["session"] != old.as_str() && s["state"] == "complete"
        },
    );
    let base = cluster.storage_dir().join(format!("streams/{stream}"));
    for master in [
        "recording.m3u8".to_string(),
        format!("recording-{old}.m3u8"),
    ] {
        let path = base.join(&master);
        let errors = decode_errors(&path);
        assert!(errors.trim().is_empty(), "{master}: {errors}");
        let probe = ffprobe(&path, &["-show_entries", "format=duration"]);
        let d: f64 = probe["format"]["duration"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (d - 5.0).abs() < 0.6,
            "{master} holds one 5 s broadcast: {d}"
        );
    }
}

#[test]
fn a_reconnecting_publisher_continues_its_stream_after_a_discontinuity() {
    let _serial = serial();
    let mut cluster = Cluster::start(2);
    let live = cluster.serve_live(&["--live-reconnect-secs", "8"]);
    let stream = "comeback-1";
    for round in 0..2 {
        let (ok, err) = finish(
            rtmp_publisher(&live.rtmp_url(stream), 5),
            Duration::from_secs(60),
        );
        assert!(ok, "round {round}: {err}\n{}", cluster.logs());
    }
    let done = cluster.wait_complete(stream, Duration::from_secs(60));
    let total = done["segments"]["total"].as_u64().unwrap();
    assert!(total >= 5, "both connections in one stream: {done}");
    assert_eq!(done["segments"]["done"], total, "{done}");
    let recording = media_playlist(
        &cluster
            .storage_dir()
            .join(format!("streams/{stream}/P360p30fps16x9/recording.m3u8")),
    )
    .unwrap();
    let breaks: Vec<u64> = recording
        .segments
        .iter()
        .filter(|s| s.discontinuity)
        .map(|s| seq_of(&s.uri))
        .collect();
    assert_eq!(
        breaks.len(),
        1,
        "one discontinuity where the publisher came back: {breaks:?}"
    );
    assert!(
        breaks[0] >= 2 && breaks[0] < total - 1,
        "{breaks:?} of {total}"
    );
    let master = cluster
        .storage_dir()
        .join(format!("streams/{stream}/recording.m3u8"));
    let errors = decode_errors(&master);
    assert!(errors.trim().is_empty(), "{errors}");
}

#[test]
fn a_publisher_with_sparse_keyframes_is_cut_off_with_advice() {
    let _serial = serial();
    let mut cluster = Cluster::start(1);
    let live = cluster.serve_live(&["--live-max-segment-secs", "4"]);
    // A keyframe every 10 s: longer than the 4 s the playlists allow.
    let child = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30",
        ])
        .args([
            "-t",
            "12",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "300",
        ])
        .args(["-sc_threshold", "0", "-pix_fmt", "yuv420p", "-f", "flv"])
        .arg(live.rtmp_url("sparse-1"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (ok, _) = finish(child, Duration::from_secs(60));
    assert!(!ok, "the publisher is cut off");
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "cut off before its 12 s ended"
    );
    wait_until("the broadcaster says why", Duration::from_secs(10), || {
        cluster.logs().contains("Keyframe Interval")
    });
    let logs = cluster.logs();
    assert!(logs.contains("keyframe interval too long"), "{logs}");
}
