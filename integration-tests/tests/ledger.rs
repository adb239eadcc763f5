//! Money and trust without a chain: a priced orchestrator with the off-chain ledger (the
//! price it advertises, accounts it charges per output pixel, admission of an on-demand
//! stream only when its account covers all of it, debits that a redelivered result never
//! repeats), and the orchestrator's
//! check of its workers' pictures, which catches and bans a cheating worker.

mod common;

use castwork_protocol::{
    encode, ObjectRef, RenditionOutput, SegmentResult, WorkerReport, RESULTS_EXCHANGE,
};
use common::{clip, http_get, metric_total, stream_name, Cluster};
use serde_json::Value;
use sha2::Digest as _;

const RUNG: &str = "P240p30fps16x9";
/// 1 wei per 1000 output pixels.
const PRICE: [&str; 4] = ["--price-per-unit", "1", "--pixels-per-unit", "1000"];
/// One 2 s segment of the 640x360 30 fps clip at 240p: 426 x 240 x 60 pixels, in wei.
const SEGMENT_FEE: i64 = (426 * 240 * 60 + 999) / 1000;

fn ledger(cluster: &Cluster, args: &[&str]) -> String {
    let args: Vec<&str> = std::iter::once("ledger")
        .chain(args.iter().copied())
        .collect();
    cluster.orchestrator_cli(&args).trim().to_string()
}

#[test]
fn a_priced_orchestrator_admits_what_an_account_can_pay_and_charges_output_pixels_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 6);
    let cluster = Cluster::start_with(2, &PRICE, Vec::new());

    // It advertises its price.
    let (code, price) = http_get(&cluster.orchestrator_addr, "/price").unwrap();
    assert_eq!(code, 200);
    let price: Value = serde_json::from_str(&price).unwrap();
    assert_eq!(
        price,
        serde_json::json!({"price_per_unit": 1, "pixels_per_unit": 1000, "orchestrator": "orchestrator"})
    );

    // Without an account, the stream is refused with what to do.
    let out = cluster.push(&input, &stream_name("anon"), &["--profiles", RUNG]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("push with --broadcaster-id"), "{err}");

    // An account that covers two segments of three: an on-demand stream is refused before
    // anything is sent, with what it needs and what the account has, and nothing is charged.
    assert_eq!(
        ledger(&cluster, &["credit", "alice", "13000"]),
        "alice: 13000 wei"
    );
    let stream = stream_name("paid");
    let out = cluster.push(
        &input,
        &stream,
        &["--profiles", RUNG, "--broadcaster-id", "alice"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "the orchestrator refused the stream: insufficient balance for the whole stream"
        ) && err.contains("account alice has 13000 wei available (13000 wei, 0 of it reserved"),
        "{err}"
    );
    let needed = common::number_after(&err, "it needs about ");
    // Three 2 s segments, each charged on its own, and a few wei for their rounding.
    assert!(
        (3 * SEGMENT_FEE..3 * SEGMENT_FEE + 20).contains(&needed),
        "{needed}: {err}"
    );
    let missing = needed - 13000;
    assert!(
        err.contains(&format!("`orchestrator ledger credit alice {missing}`")),
        "{err}"
    );
    let (code, _) = http_get(&cluster.orchestrator_addr, &format!("/streams/{stream}")).unwrap();
    assert_eq!(code, 404, "never admitted");
    assert!(!cluster
        .storage_dir()
        .join(format!("streams/{stream}"))
        .exists());
    assert_eq!(
        ledger(&cluster, &["show", "alice"]),
        "alice: 13000 wei, 0 reserved"
    );

    // Credited what it was missing, the same push goes through and is charged what its
    // segments produced.
    assert_eq!(
        ledger(&cluster, &["credit", "alice", &missing.to_string()]),
        format!("alice: {needed} wei")
    );
    let out = cluster.push(
        &input,
        &stream,
        &["--profiles", RUNG, "--broadcaster-id", "alice"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let status = cluster.status(&stream);
    assert_eq!(status["state"], "complete", "{status}");
    assert_eq!(status["segments"]["done"], 3, "{status}");
    assert_eq!(status["billing"]["pixels"], 3 * 426 * 240 * 60, "{status}");
    assert_eq!(status["billing"]["fee_wei"], 3 * SEGMENT_FEE, "{status}");
    let left = needed - 3 * SEGMENT_FEE;
    assert_eq!(
        ledger(&cluster, &["show", "alice"]),
        format!("alice: {left} wei, 0 reserved")
    );

    // A redelivered result of an accepted segment changes nothing, the balance included.
    // Any accepted rendition: its name starts with its segment's number.
    let file = std::fs::read_dir(
        cluster
            .storage_dir()
            .join(format!("streams/{stream}/{RUNG}")),
    )
    .unwrap()
    .flatten()
    .find(|e| e.path().extension().is_some_and(|x| x == "ts"))
    .unwrap();
    let done: u64 = file
        .file_name()
        .to_string_lossy()
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let data = std::fs::read(file.path()).unwrap();
    let result = WorkerReport::SegmentResult(SegmentResult {
        job_id: cluster.job_id(&stream, done, 1),
        stream: stream.clone(),
        seq: done,
        attempt: 1,
        worker_id: "w0".into(),
        renditions: vec![RenditionOutput {
            rung: RUNG.into(),
            object: ObjectRef {
                key: format!(
                    "streams/{stream}/{RUNG}/{}",
                    file.file_name().to_string_lossy()
                ),
                size: data.len() as u64,
                sha256: hex::encode(sha2::Sha256::digest(&data)),
            },
            width: 426,
            height: 240,
            frames: 60,
            start_us: 0,
            duration_us: 2_000_000,
        }],
        transcode_ms: 1,
        started_unix_ms: None,
    });
    common::Injector::new(&cluster.amqp_url).publish(RESULTS_EXCHANGE, "result", &encode(&result));
    common::wait_until(
        "the duplicate to be handled",
        std::time::Duration::from_secs(20),
        || {
            let (_, m) = http_get(&cluster.orchestrator_addr, "/metrics").unwrap();
            m.contains("castwork_orchestrator_segments_total{event=\"duplicate\"} 1")
        },
    );
    assert_eq!(
        ledger(&cluster, &["show", "alice"]),
        format!("alice: {left} wei, 0 reserved")
    );
    assert_eq!(
        cluster.status(&stream)["billing"]["fee_wei"],
        3 * SEGMENT_FEE
    );
    assert_eq!(
        ledger(&cluster, &["show"]),
        format!("alice: {left} wei, 0 reserved")
    );
}

#[test]
fn a_broadcaster_refuses_an_orchestrator_above_its_maximum_price() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 2);
    let cluster = Cluster::start_with(0, &PRICE, Vec::new());
    let url = format!("http://{}", cluster.orchestrator_addr);
    let stream = stream_name("pricey");
    // At most 999 wei per million pixels: the orchestrator asks 1000.
    let out = cluster.push(
        &input,
        &stream,
        &[
            "--profiles",
            RUNG,
            "--broadcaster-id",
            "bob",
            "--max-price-per-unit",
            "999",
            "--max-price-pixels-per-unit",
            "1000000",
            "--orchestrator-url",
            &url,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the orchestrator charges 1 wei per 1000 pixels, above your maximum of 999 wei per 1000000 pixels"),
        "{err}"
    );
    // Nothing was sent.
    let (code, _) = http_get(&cluster.orchestrator_addr, &format!("/streams/{stream}")).unwrap();
    assert_eq!(code, 404);
}

#[test]
fn a_cheating_worker_is_caught_banned_and_its_segment_redone_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 6);
    // Every result's pictures are checked; one bad result bans a worker.
    let mut cluster = Cluster::start_with(
        0,
        &["--quality-sample-rate", "1", "--max-bad-results", "1"],
        Vec::new(),
    );
    // The cheater encodes the first second of each segment right and the rest black: a
    // check of the first pictures alone would take its results.
    cluster.add(
        "worker",
        &[
            "--worker-id",
            "cheater",
            "--test-only-cheat-black-after",
            "1",
        ],
    );
    let cheater = cluster.pids("worker")[0];
    let stream = stream_name("cheated");
    let mut push = cluster.push_in_background(&input, &stream, &["--profiles", RUNG]);
    // The cheater's black pictures fail the check, and it is banned and stops.
    let mut status = None;
    common::wait_until(
        "the cheater to stop",
        std::time::Duration::from_secs(60),
        || {
            status = cluster.exit_status(cheater);
            status.is_some()
        },
    );
    let logs = cluster.logs();
    // A banned worker's own exit status (README's exit-code table).
    assert_eq!(status.and_then(|s| s.code()), Some(4), "{logs}");
    assert!(
        logs.contains("quality check failed: luma PSNR") && logs.contains("under 20 dB"),
        "{logs}"
    );
    assert!(logs.contains("worker banned for bad output"), "{logs}");
    assert!(logs.contains("banned this worker for bad output"), "{logs}");
    // An honest worker redoes its segment and the rest.
    cluster.add("worker", &["--worker-id", "honest"]);
    let pushed = push.wait().unwrap();
    assert!(pushed.success(), "{}", cluster.logs());
    let s = cluster.status(&stream);
    assert_eq!(s["segments"]["done"], 3, "{s}");
    assert_eq!(s["segments"]["failed"], 0, "{s}");
    let (_, m) = http_get(&cluster.orchestrator_addr, "/metrics").unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("castwork_orchestrator_segments_total{event=\"bad_output\"}")),
        "{m}"
    );
    // Every accepted segment came from the honest worker.
    let logs = cluster.logs();
    let accepted: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("segment accepted") && l.contains(&stream))
        .collect();
    assert_eq!(accepted.len(), 3, "{logs}");
    assert!(accepted.iter().all(|l| l.contains("\"honest\"")), "{logs}");
    // No black picture of the cheater's is in the output.
    common::output_check::assert_output_ok(&cluster.storage_dir(), &stream, &input);
}

#[test]
fn a_retry_waits_for_another_worker_and_is_never_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 2);
    // The cheater is never banned here: it keeps being handed its own segment's retry.
    let mut cluster = Cluster::start_with(
        0,
        &["--quality-sample-rate", "1", "--max-bad-results", "1000"],
        Vec::new(),
    );
    cluster.add(
        "worker",
        &["--worker-id", "cheater", "--test-only-cheat-black"],
    );
    let stream = stream_name("bounced");
    let mut push = cluster.push_in_background(&input, &stream, &["--profiles", RUNG]);
    common::wait_until(
        "the cheater's result to be refused",
        std::time::Duration::from_secs(60),
        || cluster.logs().contains("quality check failed"),
    );
    // Longer than 50 requeues of 250 ms: a plain requeue would have been dead-lettered.
    std::thread::sleep(std::time::Duration::from_secs(16));
    cluster.add("worker", &["--worker-id", "honest"]);
    assert!(push.wait().unwrap().success(), "{}", cluster.logs());
    let (_, m) = http_get(&cluster.orchestrator_addr, "/metrics").unwrap();
    assert_eq!(
        metric_total(&m, "castwork_orchestrator_dead_letters_total", &[]),
        0,
        "{m}"
    );
    assert_eq!(cluster.status(&stream)["segments"]["done"], 1);
    common::output_check::assert_output_ok(&cluster.storage_dir(), &stream, &input);
}

#[test]
fn a_cheating_orchestrator_loses_off_chain_stake_to_the_broadcasters_check() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 2);
    // The orchestrator skips its own checks; its only worker outputs the first second of
    // each segment right and black frames after it: the broadcaster's check looks past the
    // first pictures.
    let mut cluster = Cluster::start_with(
        0,
        &["--test-only-skip-checks", "--orchestrator-id", "orch-a"],
        Vec::new(),
    );
    cluster.add(
        "worker",
        &[
            "--worker-id",
            "cheater",
            "--test-only-cheat-black-after",
            "1",
        ],
    );
    assert_eq!(
        ledger(&cluster, &["stake", "orch-a", "100"]),
        "stake of orchestrator orch-a: 100"
    );
    let redis = cluster.redis_url().to_string();
    let stream = stream_name("cheat");
    let url = format!("http://{}", cluster.orchestrator_addr);
    let out = cluster.push(
        &input,
        &stream,
        &[
            "--profiles",
            RUNG,
            "--orchestrator-url",
            &url,
            "--verify-sample-rate",
            "1",
            "--slash-amount",
            "30",
            "--ledger-redis-url",
            &redis,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("verification FAILED: segment 0 rendition P240p30fps16x9: luma PSNR"),
        "{err}"
    );
    assert!(
        err.contains("slashed orchestrator orch-a in the ledger: 30 taken, stake now 70"),
        "{err}"
    );
    let shown = ledger(&cluster, &["show"]);
    assert!(
        shown.contains("stake of orchestrator orch-a: 70 (1 pieces of evidence)"),
        "{shown}"
    );
    assert!(cluster
        .storage_dir()
        .join(format!("evidence/{stream}/0-{RUNG}.json"))
        .is_file());
}
