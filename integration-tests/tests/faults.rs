//! Fault injection against a real cluster: workers killed mid-transcode, a worker drained with
//! SIGTERM, the orchestrator killed and restarted, corrupt and malicious input at every
//! boundary, and a chaos soak. Each checks that every segment ends up exactly once.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    clip, ffmpeg, ffprobe, http_get, metric_total, output_check::assert_output_ok, stream_name,
    wait_until, Cluster, Injector,
};

const RUNG: &str = "P240p30fps16x9";

fn assert_exactly_once(cluster: &Cluster, stream: &str, rung: &str, total: u64) {
    let seqs = cluster.playlist_seqs(stream, rung);
    assert_eq!(
        seqs,
        (0..total).collect::<Vec<_>>(),
        "every segment exactly once, in order"
    );
}

#[test]
fn killed_and_drained_workers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 24);
    let mut cluster = Cluster::start(3);
    let stream = stream_name("kill");
    let mut push = cluster.push_in_background(
        &input,
        &stream,
        &["--profiles", "P240p30fps16x9,P360p30fps16x9"],
    );

    // SIGKILL a worker while it is transcoding (Redis is shared with other tests' clusters:
    // only this cluster's workers count).
    let ours = cluster.pids("worker");
    assert_eq!(ours.len(), 3);
    let busy = |c: &Cluster, w: &serde_json::Value| {
        w["busy_slots"].as_u64() > Some(0)
            && w["pid"]
                .as_u64()
                .is_some_and(|p| ours.contains(&(p as u32)))
            && c.status(&stream)["state"] != "complete"
    };
    let mut victim = None;
    wait_until("a busy worker", Duration::from_secs(60), || {
        victim = cluster.workers().into_iter().find(|w| busy(&cluster, w));
        victim.is_some()
    });
    let pid = victim.unwrap()["pid"].as_u64().unwrap() as u32;
    cluster.signal(pid, "KILL");

    // SIGTERM another busy one: it finishes what it holds and exits 0.
    let mut drained = None;
    wait_until("another busy worker", Duration::from_secs(60), || {
        drained = cluster
            .workers()
            .into_iter()
            .find(|w| busy(&cluster, w) && w["pid"].as_u64() != Some(u64::from(pid)));
        drained.is_some() || cluster.status(&stream)["state"] == "complete"
    });
    // (Should the stream have finished first, an idle worker must still exit cleanly.)
    let term = drained.map_or_else(
        || *cluster.pids("worker").iter().find(|p| **p != pid).unwrap(),
        |d| d["pid"].as_u64().unwrap() as u32,
    );
    let status = cluster.signal(term, "TERM").expect("drained worker exits");
    assert!(status.success(), "SIGTERM exits 0: {status:?}");

    let status = push.wait().unwrap();
    assert!(status.success(), "push failed: {}", cluster.logs());
    let s = cluster.status(&stream);
    let total = s["segments"]["total"].as_u64().unwrap();
    assert_eq!(total, 12);
    assert_eq!(s["segments"]["done"], total);
    assert_exactly_once(&cluster, &stream, RUNG, total);
    assert_output_ok(&cluster.storage_dir(), &stream, &input);
    // The killed worker's heartbeat expires and it is forgotten.
    wait_until(
        "the dead worker to be forgotten",
        Duration::from_secs(30),
        || {
            cluster
                .workers()
                .iter()
                .all(|w| w["pid"].as_u64() != Some(u64::from(pid)))
        },
    );
    // SIGTERM on the orchestrator: a clean exit.
    let orch = cluster.pids("orchestrator")[0];
    let status = cluster.signal(orch, "TERM").expect("orchestrator exits");
    assert!(status.success(), "orchestrator SIGTERM exits 0: {status:?}");
}

#[test]
fn orchestrator_killed_and_restarted_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 16);
    let mut cluster = Cluster::start(2);
    let stream = stream_name("orch");
    let mut push = cluster.push_in_background(&input, &stream, &["--profiles", RUNG]);
    wait_until("a first accepted segment", Duration::from_secs(60), || {
        http_get(&cluster.orchestrator_addr, &format!("/streams/{stream}"))
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["segments"]["done"].as_u64() >= Some(1))
    });
    let orch = cluster.pids("orchestrator")[0];
    cluster.signal(orch, "KILL");
    std::thread::sleep(Duration::from_secs(1));
    let addr = cluster.orchestrator_addr.clone();
    cluster.add("orchestrator", &["--http-addr", &addr]);
    let status = push.wait().unwrap();
    assert!(status.success(), "push failed: {}", cluster.logs());
    let s = cluster.wait_complete(&stream, Duration::from_secs(30));
    assert_eq!(s["segments"]["done"], 8);
    assert_exactly_once(&cluster, &stream, RUNG, 8);
    assert_output_ok(&cluster.storage_dir(), &stream, &input);
}

/// First and last video pts (us) and frame count of a segment file.
fn segment_facts(path: &Path) -> (i64, i64, u64) {
    let v = ffprobe(
        path,
        &["-select_streams", "v:0", "-show_entries", "packet=pts_time"],
    );
    let pts: Vec<i64> = v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pts_time"].as_str()?.parse::<f64>().ok())
        .map(|t| (t * 1e6).round() as i64)
        .collect();
    (
        *pts.iter().min().unwrap(),
        *pts.iter().max().unwrap(),
        pts.len() as u64,
    )
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[test]
fn corrupt_and_malicious_input_is_refused_and_the_rest_completes() {
    use castwork_protocol::*;
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 12);
    // Cut with the ffmpeg CLI into 2 s MPEG-TS segments, keeping timestamps.
    let segdir = dir.path().join("segs");
    std::fs::create_dir_all(&segdir).unwrap();
    ffmpeg(&[
        "-i",
        input.to_str().unwrap(),
        "-c",
        "copy",
        "-f",
        "segment",
        "-segment_time",
        "2",
        "-segment_format",
        "mpegts",
        "-output_ts_offset",
        "1",
        &format!("{}/%d.ts", segdir.display()),
    ]);
    let cluster = Cluster::start(2);
    let inj = Injector::new(&cluster.amqp_url);
    let stream = stream_name("evil");
    let session = uuid::Uuid::now_v7();
    let source = SourceMetadata::upright(640, 360, 30);
    inj.ingest(&IngestMessage::StreamStarted(StreamStarted {
        stream: stream.clone(),
        session,
        mode: StreamMode::Vod,
        ladder: profile::parse_profiles(RUNG).unwrap(),
        source,
        broadcaster: None,
        target_duration_secs: None,
        secret: "faults-publisher-secret".into(),
    }));
    // Garbage at the orchestrator's door: not JSON, a future version, an oversized message.
    inj.publish(INGEST_EXCHANGE, "ingest", b"{not json");
    inj.publish(INGEST_EXCHANGE, "ingest", br#"{"version":99,"type":"stream_ended","stream":"x","session":"00000000-0000-0000-0000-000000000000","segments":1}"#);
    inj.publish(
        INGEST_EXCHANGE,
        "ingest",
        &vec![b' '; MAX_MESSAGE_BYTES + 10],
    );
    // And at the workers': a job that is not JSON.
    inj.publish(JOBS_EXCHANGE, "jobs.vod.cpu", b"\x00\x01 not a job");

    let store = cluster
        .storage_dir()
        .join(format!("streams/{stream}/source"));
    wait_until("admission", Duration::from_secs(30), || {
        http_get(&cluster.orchestrator_addr, &format!("/streams/{stream}"))
            .is_some_and(|(c, _)| c == 200)
    });
    std::fs::create_dir_all(&store).unwrap();
    let total = 6u64;
    let bad = [
        (
            1u64,
            b"\x47garbage that only starts like a transport stream".repeat(400),
            "corrupt",
        ),
        (
            2,
            b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nfile:///etc/passwd\n".to_vec(),
            "an HLS playlist",
        ),
        (
            3,
            b"#EXTM3U\n#EXTINF:2,\nhttp://127.0.0.1:1/x.ts\n".to_vec(),
            "a playlist with a URL",
        ),
    ];
    for seq in 0..total {
        let real = segdir.join(format!("{seq}.ts"));
        let (start_us, last_pts_us, frames) = segment_facts(&real);
        let data = match bad.iter().find(|b| b.0 == seq) {
            Some(b) => b.1.clone(),
            None => std::fs::read(&real).unwrap(),
        };
        let key = source_key(&stream, seq, "ts");
        std::fs::write(cluster.storage_dir().join(&key), &data).unwrap();
        let mut sha = sha256(&data);
        if seq == 4 {
            // A segment whose content does not match its hash.
            sha = sha256(b"something else");
        }
        inj.ingest(&IngestMessage::SegmentReady(SegmentReady {
            stream: stream.clone(),
            session,
            seq,
            start_us,
            duration_us: 2_000_000,
            last_pts_us,
            frames,
            has_audio: true,
            object: ObjectRef {
                key,
                size: data.len() as u64,
                sha256: sha,
            },
            arrived_unix_ms: None,
            discontinuity: false,
            payment: None,
            secret: "faults-publisher-secret".into(),
        }));
    }
    inj.ingest(&IngestMessage::StreamEnded(StreamEnded {
        stream: stream.clone(),
        session,
        segments: total,
        secret: "faults-publisher-secret".into(),
    }));

    let s = cluster.wait_complete(&stream, Duration::from_secs(120));
    assert_eq!(s["segments"]["done"], 2, "{s}");
    assert_eq!(s["segments"]["failed"], 4, "{s}");
    let failures = s["failures"].as_array().unwrap();
    let failed: Vec<u64> = failures
        .iter()
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(failed, vec![1, 2, 3, 4]);
    for f in failures {
        assert!(!f["message"].as_str().unwrap().is_empty(), "{f}");
    }
    assert!(
        failures[3]["message"].as_str().unwrap().contains("sha256"),
        "{}",
        failures[3]
    );
    assert_eq!(cluster.playlist_seqs(&stream, RUNG), vec![0, 5]);

    // Counted, and nothing is stuck in a queue.
    let (_, metrics) = http_get(&cluster.orchestrator_addr, "/metrics").unwrap();
    for reason in ["malformed", "version", "oversized"] {
        assert!(metrics.contains(&format!("castwork_orchestrator_rejected_messages_total{{queue=\"orchestrator.ingest\",reason=\"{reason}\"}} 1")), "{reason}: {metrics}");
    }
    // Each unreadable message is dead-lettered with its reason: three refused by the
    // orchestrator, one job refused by its worker.
    wait_until(
        "the dead letters to be recorded",
        Duration::from_secs(20),
        || {
            http_get(&cluster.orchestrator_addr, "/metrics").is_some_and(|(_, m)| {
                metric_total(&m, "castwork_orchestrator_dead_letters_total", &[]) == 4
                    && metric_total(
                        &m,
                        "castwork_orchestrator_dead_letters_total",
                        &["queue=\"orchestrator.ingest\"", "cause=\"refused\""],
                    ) == 3
            })
        },
    );
    wait_until("empty queues", Duration::from_secs(20), || {
        cluster.queue_depths().iter().all(|(_, n)| *n == 0)
    });
    // The cluster still works.
    let out = cluster.push(&input, &stream_name("after-evil"), &["--profiles", RUNG]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn chaos_soak_300_segments_while_workers_are_killed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("long.mp4");
    // 150 s with a keyframe every 0.5 s: 300 segments at a 0.5 s target.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=256x144:rate=30",
        "-t",
        "150",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "15",
        input.to_str().unwrap(),
    ]);
    let env = vec![("X264_PRESET".to_string(), "ultrafast".to_string())];
    let mut cluster = Cluster::start_with(4, &[], env);
    // Two orchestrators share the Redis and the queues.
    let second = format!("127.0.0.1:{}", common::free_port());
    cluster.add("orchestrator", &["--http-addr", &second]);
    let stream = stream_name("soak");
    let mut push = cluster.push_in_background(
        &input,
        &stream,
        &["--profiles", "P144p30fps16x9", "--segment-secs", "0.5"],
    );
    let mut kills = 0;
    let mut n = 0u64;
    let started = Instant::now();
    while push.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "soak did not finish: {}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_secs(2));
        let pids = cluster.pids("worker");
        if pids.is_empty() {
            continue;
        }
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let victim = pids[(n >> 33) as usize % pids.len()];
        cluster.signal(victim, "KILL");
        kills += 1;
        cluster.add("worker", &["--worker-id", &format!("chaos-{kills}")]);
    }
    assert!(
        push.wait().unwrap().success(),
        "push failed: {}",
        cluster.logs()
    );
    let s = cluster.wait_complete(&stream, Duration::from_secs(60));
    assert_eq!(s["segments"]["total"], 300, "{s}");
    assert_eq!(s["segments"]["done"], 300, "{s}");
    assert_eq!(s["segments"]["failed"], 0, "{s}");
    assert_exactly_once(&cluster, &stream, "P144p30fps16x9", 300);
    assert_output_ok(&cluster.storage_dir(), &stream, &input);
    // Metrics of both orchestrators together.
    let m: String = [cluster.orchestrator_addr.as_str(), second.as_str()]
        .iter()
        .map(|a| http_get(a, "/metrics").unwrap().1)
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        metric_total(&m, "castwork_orchestrator_dead_letters_total", &[]),
        0,
        "nothing dead-lettered"
    );
    let dead = cluster
        .queue_depths()
        .into_iter()
        .find(|(q, _)| q == "castwork.jobs.dead")
        .map_or(0, |d| d.1);
    assert_eq!(dead, 0);
    let duplicates = metric_total(
        &m,
        "castwork_orchestrator_segments_total",
        &["event=\"duplicate\""],
    );
    println!(
        "soak: 300 segments, {kills} workers SIGKILLed, {duplicates} duplicate results ignored, 0 lost, 0 duplicated, 0 dead-lettered, {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_hung_worker_stops_itself_and_its_segment_is_done_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("hd.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1920x1080:rate=30",
        "-t",
        "6",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "60",
        input.to_str().unwrap(),
    ]);
    let mut cluster = Cluster::start(0);
    // A worker whose transcodes cannot finish in time: it must stop itself.
    cluster.add(
        "worker",
        &[
            "--worker-id",
            "hangs",
            "--job-timeout-secs",
            "1",
            "--preset",
            "veryslow",
        ],
    );
    let hung = cluster.pids("worker")[0];
    let stream = stream_name("hung");
    let mut push = cluster.push_in_background(&input, &stream, &["--profiles", "P1080p30fps16x9"]);
    let mut status = None;
    wait_until("the hung worker to exit", Duration::from_secs(120), || {
        status = cluster.exit_status(hung);
        status.is_some()
    });
    assert_eq!(
        status.unwrap().code(),
        Some(3),
        "a hung worker exits with status 3"
    );
    assert!(
        cluster.logs().contains("transcode hung"),
        "the hang is reported"
    );
    cluster.add("worker", &["--worker-id", "healthy"]);
    assert!(
        push.wait().unwrap().success(),
        "push failed: {}",
        cluster.logs()
    );
    assert_exactly_once(&cluster, &stream, "P1080p30fps16x9", 3);
    assert_output_ok(&cluster.storage_dir(), &stream, &input);
}

#[test]
fn push_wait_names_each_failed_segment_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.mp4");
    // About 5 MB per 2 s segment, over the 1 MiB limit of this cluster's worker.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=30",
        "-t",
        "4",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-b:v",
        "20M",
        "-g",
        "60",
        input.to_str().unwrap(),
    ]);
    let mut cluster = Cluster::start(0);
    cluster.add("worker", &["--max-segment-mb", "1"]);
    let stream = stream_name("toobig");
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("2 of 2 segments failed"), "{err}");
    for seq in 0..2 {
        assert!(
            err.contains(&format!("segment {seq}: source segment is"))
                && err.contains("over this worker's limit"),
            "{err}"
        );
    }
    // The dashboard's recent failures list both, with the worker's message.
    let (_, status) = http_get(&cluster.orchestrator_addr, "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let mut failed: Vec<u64> = status["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["stream"] == stream.as_str())
        .inspect(|f| {
            assert_eq!(f["final"], true, "{f}");
            assert!(
                f["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("over this worker's limit")),
                "{f}"
            );
        })
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    failed.sort();
    assert_eq!(failed, [0, 1], "{status}");
}

#[test]
fn a_frozen_worker_is_given_up_and_its_late_result_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 6);
    let mut cluster = Cluster::start(0);
    // A worker that will freeze (SIGSTOP: like one cut off from the network) mid-job.
    cluster.add(
        "worker",
        &[
            "--worker-id",
            "frozen",
            "--job-timeout-secs",
            "2",
            "--start-notice-ms",
            "0",
        ],
    );
    let frozen = cluster.pids("worker")[0];
    let ours = [frozen];
    let stream = stream_name("frozen");
    let mut push = cluster.push_in_background(
        &input,
        &stream,
        &["--profiles", "P240p30fps16x9,P360p30fps16x9"],
    );
    wait_until("the worker to start a job", Duration::from_secs(60), || {
        cluster.workers().iter().any(|w| {
            w["busy_slots"].as_u64() > Some(0)
                && w["pid"]
                    .as_u64()
                    .is_some_and(|p| ours.contains(&(p as u32)))
        })
    });
    cluster.signal(frozen, "STOP");
    cluster.add("worker", &["--worker-id", "healthy"]);
    // The orchestrator gives the frozen attempt up (its 2 s timeout + 30 s grace) and the
    // healthy worker does the segment as a new attempt.
    let status = push.wait().unwrap();
    assert!(status.success(), "push failed: {}", cluster.logs());
    assert!(
        cluster.logs().contains("gave no result in time"),
        "the overdue attempt is reported"
    );
    // Thawed, the frozen worker finishes or stops itself; nothing it does changes the stream.
    cluster.signal(frozen, "CONT");
    std::thread::sleep(Duration::from_secs(3));
    assert_exactly_once(&cluster, &stream, RUNG, 3);
    assert_exactly_once(&cluster, &stream, "P360p30fps16x9", 3);
    assert_output_ok(&cluster.storage_dir(), &stream, &input);
}
