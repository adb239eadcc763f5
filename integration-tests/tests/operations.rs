//! Operating a running cluster: `orchestrator status`, queue depths and their metrics.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{bin, clip, free_port, http_get, stream_name, wait_until, Cluster};

const RUNG: &str = "P240p30fps16x9";

fn status(url: &str) -> std::process::Output {
    Command::new(bin("orchestrator"))
        .args(["status", "--url", url])
        .output()
        .expect("orchestrator status runs")
}

#[test]
fn status_prints_streams_workers_and_queue_depths() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    let cluster = Cluster::start(1);
    let stream = stream_name("status");
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Queue depths are read from the broker every 2 s.
    wait_until("queue depths", Duration::from_secs(20), || {
        http_get(&cluster.orchestrator_addr, "/queues").is_some_and(|(code, _)| code == 200)
    });
    let out = status(&format!("http://{}", cluster.orchestrator_addr));
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.starts_with(&stream))
        .unwrap_or_else(|| panic!("no row for {stream}:\n{text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // STREAM MODE STATE TOTAL RECEIVED DONE FAILED SKIPPED PROGRESS
    assert_eq!(
        cells[1..],
        ["vod", "complete", "2", "2", "2", "0", "0", "100%"],
        "{text}"
    );
    assert!(
        text.contains("WORKERS (1 in all, 0 of 1 slots busy)"),
        "{text}"
    );
    // The one worker consumes both of its class's job queues; the orchestrator consumes
    // ingest, results and dead letters. Nothing is left waiting.
    for (queue, consumers) in [
        ("castwork.ingest", 1),
        ("jobs.live.cpu", 1),
        ("jobs.vod.cpu", 1),
        ("castwork.results", 1),
        ("castwork.jobs.dead", 1),
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(queue))
            .unwrap_or_else(|| panic!("no row for {queue}:\n{text}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells[1..],
            ["0".to_string(), consumers.to_string()],
            "{text}"
        );
    }
    let (_, metrics) = http_get(&cluster.orchestrator_addr, "/metrics").unwrap();
    assert!(
        metrics.contains("castwork_orchestrator_queue_consumers{queue=\"jobs.vod.cpu\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("castwork_orchestrator_queue_messages{queue=\"jobs.vod.cpu\"} 0"),
        "{metrics}"
    );
}

#[test]
fn status_of_an_unreachable_orchestrator_says_so() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = status(&url);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot reach the orchestrator at {url}/status")),
        "{err}"
    );
}
