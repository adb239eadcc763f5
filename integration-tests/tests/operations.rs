//! Operating a running cluster: `orchestrator status`, queue depths and their metrics, and
//! the dashboard and player pages in headless Chromium.

mod common;

use std::process::Command;
use std::time::Duration;

use common::browser::Browser;
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

#[test]
fn dashboard_shows_a_running_stream_and_a_worker_and_the_player_plays_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 6);
    // No worker yet: the stream is admitted and waits, active, with its jobs queued.
    let mut cluster = Cluster::start(0);
    let stream = stream_name("dash");
    let mut push = cluster.push_in_background(&input, &stream, &["--profiles", RUNG]);
    let base = format!("http://{}", cluster.orchestrator_addr);
    let browser = Browser::start();
    browser.resize(1280, 1400);
    browser.open(&format!("{base}/"));
    let row = format!("document.querySelector('#streams tr[data-stream=\"{stream}\"]')");
    browser.wait_for(
        "the dashboard to list the stream as active",
        Duration::from_secs(30),
        &format!("const r = {row}; return !!r && r.innerText.includes('active');"),
    );
    browser.wait_for(
        "the queued jobs in the queue table",
        Duration::from_secs(30),
        "return [...document.querySelectorAll('#queues tbody tr')].some((r) => \
         r.cells[0].innerText === 'jobs.vod.cpu' && Number(r.cells[1].innerText) > 0);",
    );
    cluster.add("worker", &["--worker-id", "dash-worker"]);
    browser.wait_for(
        "the dashboard to list the worker",
        Duration::from_secs(30),
        "return !!document.querySelector('#workers tr[data-worker=\"dash-worker\"]');",
    );
    assert!(push.wait().unwrap().success(), "{}", cluster.logs());
    browser.wait_for(
        "the stream to show complete with every rendition done",
        Duration::from_secs(30),
        &format!(
            "const r = {row}; return !!r && r.innerText.includes('complete') \
             && r.innerText.includes('{RUNG}') && r.innerText.includes('3/3');"
        ),
    );
    let text = browser.eval("return document.body.innerText;");
    println!("dashboard:\n{}", text.as_str().unwrap_or_default());
    browser.resize(1280, 1400);
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    println!("dashboard screenshot: {}", shot.display());
    // The chart has the accepted segments to draw.
    let (_, status) = http_get(&cluster.orchestrator_addr, "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let recent = status["recent"].as_array().unwrap();
    assert_eq!(
        recent
            .iter()
            .filter(|r| r["stream"] == stream.as_str())
            .count(),
        3,
        "{status}"
    );

    // The stream's player link plays the output.
    let href = browser.eval(&format!("return {row}.querySelector('a').href;"));
    browser.open(href.as_str().unwrap());
    browser.wait_for(
        "playback to advance",
        Duration::from_secs(30),
        "const v = document.getElementById('video'); return v.currentTime > 1.5;",
    );
    let size = browser
        .eval("const v = document.getElementById('video'); return [v.videoWidth, v.videoHeight];");
    assert_eq!(
        size,
        serde_json::json!([426, 240]),
        "the 240p rendition plays"
    );
    // Sources are never served, and nothing outside the streams' outputs.
    for path in [
        format!("/hls/streams/{stream}/source/0.ts"),
        "/hls/streams/../secret.ts".to_string(),
        "/hls/other/x.ts".to_string(),
    ] {
        let (code, _) = http_get(&cluster.orchestrator_addr, &path).unwrap();
        assert_eq!(code, 404, "{path}");
    }
}
