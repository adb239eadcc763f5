//! Money is not taken for broken work: a priced orchestrator refuses an on-demand stream
//! whose length it cannot price, a stream with a failed segment ends `incomplete` (never
//! `complete`) and its push exits with its own status, and the ledger takes only positive
//! amounts, in the chain commands' units.

mod common;

use std::process::Command;
use std::time::Duration;

use castwork_protocol::{
    encode, profile, IngestMessage, SourceMetadata, StreamMode, StreamStarted, INGEST_EXCHANGE,
};
use common::{
    bin, ffmpeg, http_get, ledger_command, stream_name, wait_until, Cluster, Injector, RedisNode,
};

const RUNG: &str = "P240p30fps16x9";
/// 1 wei per 1000 output pixels.
const PRICE: [&str; 4] = ["--price-per-unit", "1", "--pixels-per-unit", "1000"];

#[test]
fn a_priced_orchestrator_refuses_an_on_demand_stream_of_unknown_length() {
    let cluster = Cluster::start_with(0, &PRICE, Vec::new());
    let (ok, shown) = ledger_command(cluster.redis_url(), &["credit", "carol", "1eth"]);
    assert!(ok, "{shown}");
    // Plenty of credit, but a source whose duration the broadcaster did not send.
    let stream = stream_name("endless");
    let start = IngestMessage::StreamStarted(StreamStarted {
        stream: stream.clone(),
        session: uuid::Uuid::now_v7(),
        mode: StreamMode::Vod,
        ladder: profile::parse_profiles(RUNG).unwrap(),
        source: SourceMetadata::upright(640, 360, 30),
        broadcaster: Some("carol".into()),
        target_duration_secs: None,
        secret: "money-publisher-secret".into(),
    });
    Injector::new(&cluster.amqp_url).publish(INGEST_EXCHANGE, "ingest", &encode(&start));
    wait_until("the stream to be refused", Duration::from_secs(20), || {
        cluster.logs().contains("stream rejected")
    });
    let logs = cluster.logs();
    assert!(
        logs.contains("the source's duration is unknown, so its fee cannot be estimated"),
        "{logs}"
    );
    let (code, _) = http_get(&cluster.orchestrator_addr, &format!("/streams/{stream}")).unwrap();
    assert_eq!(code, 404, "never admitted");
    let (_, shown) = ledger_command(cluster.redis_url(), &["show", "carol"]);
    assert_eq!(shown, "carol: 1000000000000000000 wei, 0 reserved");
}

#[test]
fn a_stream_with_a_failed_segment_ends_incomplete_and_its_push_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("half-noise.mp4");
    // Two 2 s segments: a test pattern (about 0.7 MB) then noise (about 7 MB), over the
    // 1 MiB limit of this cluster's worker.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=30",
        "-t",
        "4",
        "-vf",
        "noise=alls=100:allf=t+u:enable='gte(t,2)'",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "35",
        "-g",
        "60",
        "-keyint_min",
        "60",
        "-sc_threshold",
        "0",
        input.to_str().unwrap(),
    ]);
    let mut cluster = Cluster::start(0);
    cluster.add("worker", &["--max-segment-mb", "1"]);
    let stream = stream_name("half");
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "stream {stream} is incomplete: 1 of 2 segments failed, so its playlists list \
             only the other 1:"
        )),
        "{err}"
    );
    assert!(
        err.contains("segment 1: source segment is") && err.contains("over this worker's limit"),
        "{err}"
    );
    assert!(!err.contains("done: "), "{err}");

    // The orchestrator's state says so, with why; the playlists list what was done.
    let s = cluster.status(&stream);
    assert_eq!(s["state"], "incomplete", "{s}");
    assert_eq!(s["segments"]["done"], 1, "{s}");
    assert_eq!(s["segments"]["failed"], 1, "{s}");
    assert_eq!(cluster.playlist_seqs(&stream, RUNG), vec![0]);
    assert!(cluster
        .storage_dir()
        .join(format!("streams/{stream}/index.m3u8"))
        .is_file());
    let (_, all) = http_get(&cluster.orchestrator_addr, "/status").unwrap();
    let all: serde_json::Value = serde_json::from_str(&all).unwrap();
    let row = all["streams"]
        .as_array()
        .and_then(|v| v.iter().find(|r| r["stream"] == stream.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["state"], "incomplete", "{all}");
    let out = Command::new(bin("orchestrator"))
        .args(["status", "--url"])
        .arg(format!("http://{}", cluster.orchestrator_addr))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table.lines().find(|l| l.starts_with(&stream)).unwrap_or("");
    assert!(line.contains(" incomplete "), "{table}");
    let (_, m) = http_get(&cluster.orchestrator_addr, "/metrics").unwrap();
    assert!(
        m.contains("castwork_orchestrator_streams_total{event=\"incomplete\"} 1"),
        "{m}"
    );
}

#[test]
fn the_ledger_takes_positive_amounts_in_the_chain_commands_units() {
    let redis = RedisNode::start_with(false);
    let url = redis.url();
    let run = |args: &[&str]| ledger_command(&url, args);

    // Nothing, or less than nothing, is refused, and changes nothing.
    for (amount, why) in [
        ("0", "is zero"),
        ("-5", "is negative"),
        ("-99987797", "is negative"),
        ("0eth", "is zero"),
        ("0.5wei", "finer than a wei"),
        ("10eth", "does not fit the ledger"),
    ] {
        let (ok, err) = run(&["credit", "alice", amount]);
        assert!(!ok && err.contains(why), "credit {amount}: {err}");
    }
    assert_eq!(run(&["show", "alice"]).1, "alice: 0 wei, 0 reserved");

    // Wei, gwei and eth, as `chain` commands take them.
    assert_eq!(
        run(&["credit", "alice", "1eth"]),
        (true, "alice: 1000000000000000000 wei".to_string())
    );
    assert_eq!(
        run(&["credit", "alice", "3gwei"]),
        (true, "alice: 1000000003000000000 wei".to_string())
    );
    assert_eq!(
        run(&["credit", "alice", "2.5gwei"]),
        (true, "alice: 1000000005500000000 wei".to_string())
    );
    assert_eq!(
        run(&["credit", "alice", "7"]),
        (true, "alice: 1000000005500000007 wei".to_string())
    );

    // Taking back is its own command, with the same hole closed: never below zero.
    let (ok, err) = run(&["debit", "alice", "2eth"]);
    assert!(
        !ok && err.contains("cannot take 2000000000000000000 wei from alice: it has 1000000005500000007 wei available"),
        "{err}"
    );
    let (ok, err) = run(&["debit", "alice", "0"]);
    assert!(!ok && err.contains("is zero"), "{err}");
    assert_eq!(
        run(&["debit", "alice", "1eth"]),
        (true, "alice: 5500000007 wei".to_string())
    );
    assert_eq!(
        run(&["show", "alice"]).1,
        "alice: 5500000007 wei, 0 reserved"
    );

    // A stake may be zero, never negative.
    assert_eq!(
        run(&["stake", "orch-a", "0"]),
        (true, "stake of orchestrator orch-a: 0".to_string())
    );
    let (ok, err) = run(&["stake", "orch-a", "-1"]);
    assert!(!ok && err.contains("cannot be negative"), "{err}");
    assert_eq!(
        run(&["stake", "orch-a", "1gwei"]),
        (true, "stake of orchestrator orch-a: 1000000000".to_string())
    );
}
