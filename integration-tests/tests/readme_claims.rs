//! The README's claims about operating a cluster, checked against real processes: every
//! metric it lists is there at zero from the start, `/queues` tells unacknowledged messages
//! from ready ones, the dashboard draws every stream's bars a page at a time, `--help` and
//! `ledger` flags, the playback URL comes from the cluster, and a push into another object
//! store is told so.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::browser::Browser;
use common::{
    bin, clip, free_port, http_get, stream_name, wait_until, workspace, Cluster, RedisNode,
};
use serde_json::Value;

const RUNG: &str = "P240p30fps16x9";

/// One row of README's metric table: the metric and, per label, the values it starts with
/// (`each queue` stands for every queue the orchestrator lists at `/queues`).
#[derive(Debug)]
struct ListedMetric {
    name: String,
    labels: BTreeMap<String, Vec<String>>,
}

/// README's metric table (the first table under `### Metrics`).
fn readme_metrics() -> Vec<ListedMetric> {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let section = readme
        .split_once("### Metrics")
        .expect("README has a Metrics section")
        .1;
    let rows: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .collect();
    assert!(rows.len() > 10, "README's metric table: {rows:?}");
    rows.iter()
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            let name = cells[0].trim_matches('`').to_string();
            assert!(
                name.starts_with("castwork_") && !name.contains('`'),
                "one metric per row, in backticks: {row}"
            );
            let mut labels = BTreeMap::new();
            for part in cells[1].split(';').map(str::trim) {
                if part.is_empty() || part == "-" {
                    continue;
                }
                let (label, values) = part
                    .split_once(':')
                    .unwrap_or_else(|| panic!("`label`: values in {row}"));
                let values = values
                    .split(',')
                    .map(|v| {
                        // "not_publisher (ingest)": the note is not part of the value.
                        v.split(" (").next().unwrap().trim().to_string()
                    })
                    .collect();
                labels.insert(label.trim().trim_matches('`').to_string(), values);
            }
            ListedMetric { name, labels }
        })
        .collect()
}

/// One sample of Prometheus text: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples and the `# TYPE` of every family in a Prometheus text exposition.
fn parse_metrics(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").unwrap();
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        samples.push((name, labels, value.parse().unwrap()));
    }
    (samples, types)
}

fn scrape(addr: &str) -> String {
    let (code, body) = http_get(addr, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200, "{body}");
    body
}

#[test]
fn every_metric_the_readme_lists_is_there_at_zero_before_anything_happens() {
    let mut cluster = Cluster::start(0);
    let worker_addr = format!("127.0.0.1:{}", free_port());
    cluster.add(
        "worker",
        &["--worker-id", "metrics-w", "--http-addr", &worker_addr],
    );
    wait_until("the worker's /metrics", Duration::from_secs(30), || {
        http_get(&worker_addr, "/healthz").is_some_and(|(c, _)| c == 200)
    });
    let live = cluster.serve_live(&[]);
    wait_until("the queue depths", Duration::from_secs(20), || {
        http_get(&cluster.orchestrator_addr, "/queues").is_some_and(|(c, _)| c == 200)
    });
    let (_, queues) = http_get(&cluster.orchestrator_addr, "/queues").unwrap();
    let queues: Value = serde_json::from_str(&queues).unwrap();
    let every_queue: Vec<String> = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap().to_string())
        .collect();
    assert!(every_queue.contains(&"jobs.vod.cpu".to_string()));

    let mut scraped = Vec::new();
    for (component, addr) in [
        ("orchestrator", cluster.orchestrator_addr.as_str()),
        ("worker", worker_addr.as_str()),
        ("broadcaster", live.http.as_str()),
    ] {
        scraped.push((component, parse_metrics(&scrape(addr))));
    }
    let listed = readme_metrics();
    let mut problems = Vec::new();
    // README -> processes: every metric, every label value, at zero (gauges: present).
    for m in &listed {
        let component = m.name.split('_').nth(1).unwrap();
        let Some((_, (samples, types))) = scraped.iter().find(|(c, _)| *c == component) else {
            problems.push(format!("{}: no process of component {component}", m.name));
            continue;
        };
        let Some(kind) = types.get(&m.name) else {
            problems.push(format!("{}: not in the {component}'s /metrics", m.name));
            continue;
        };
        // A histogram's series are its `_count` (and buckets); a counter or gauge is itself.
        let series_name = if kind == "histogram" {
            format!("{}_count", m.name)
        } else {
            m.name.clone()
        };
        let series: Vec<&Sample> = samples.iter().filter(|s| s.0 == series_name).collect();
        if series.is_empty() {
            problems.push(format!("{}: registered but no series at start", m.name));
        }
        for (label, values) in &m.labels {
            let values: Vec<String> = if values == &["each queue"] {
                every_queue.clone()
            } else {
                values.clone()
            };
            for v in values {
                match series
                    .iter()
                    .find(|s| s.1.get(label).map(String::as_str) == Some(v.as_str()))
                {
                    None => problems.push(format!("{}{{{label}=\"{v}\"}}: missing", m.name)),
                    Some(s) if kind != "gauge" && s.2 != 0.0 => {
                        problems.push(format!("{}{{{label}=\"{v}\"}}: {} at start", m.name, s.2))
                    }
                    Some(_) => {}
                }
            }
        }
        if m.labels.is_empty() && kind != "gauge" && series.iter().any(|s| s.2 != 0.0) {
            problems.push(format!("{}: not 0 at start", m.name));
        }
    }
    // Processes -> README: no castwork metric, label or label value it does not list.
    for (component, (samples, types)) in &scraped {
        let prefix = format!("castwork_{component}_");
        for (family, kind) in types.iter().filter(|(n, _)| n.starts_with(&prefix)) {
            let Some(m) = listed.iter().find(|m| &m.name == family) else {
                problems.push(format!("{family} ({kind}) is not in README's table"));
                continue;
            };
            for s in samples.iter().filter(|s| {
                s.0 == *family || (kind == "histogram" && s.0 == format!("{family}_count"))
            }) {
                for (label, value) in &s.1 {
                    let known = m.labels.get(label).is_some_and(|vs| {
                        vs.contains(value) || (vs == &["each queue"] && every_queue.contains(value))
                    });
                    if !known {
                        problems.push(format!("{family}{{{label}=\"{value}\"}} is not in README"));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "README's metric table and /metrics disagree:\n{}",
        problems.join("\n")
    );
}

/// The orchestrator's `/queues` row of `queue`.
fn queue_row(cluster: &Cluster, queue: &str) -> Value {
    let (code, body) = http_get(&cluster.orchestrator_addr, "/queues").expect("/queues answers");
    if code != 200 {
        return Value::Null;
    }
    let v: Value = serde_json::from_str(&body).unwrap();
    v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == queue)
        .cloned()
        .unwrap_or(Value::Null)
}

fn status_text(cluster: &Cluster) -> String {
    let out = Command::new(bin("orchestrator"))
        .args([
            "status",
            "--url",
            &format!("http://{}", cluster.orchestrator_addr),
        ])
        .output()
        .expect("orchestrator status runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn queues_show_unacknowledged_messages_apart_from_ready_ones() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 6);
    // No worker: the stream's three jobs wait in jobs.vod.cpu.
    let cluster = Cluster::start(0);
    let stream = stream_name("unacked");
    let out = cluster.push_from(dir.path(), &input, &stream, &["--profiles", RUNG], &[]);
    assert!(out.status.success(), "{out:?}");
    wait_until("three ready jobs", Duration::from_secs(30), || {
        queue_row(&cluster, "jobs.vod.cpu")["messages"] == 3
    });
    // A consumer takes two and sits on them, unacknowledged (the broker sends a consumer
    // up to its prefetch whether or not it reads them).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (connection, channel, _consumer) = rt.block_on(async {
        let c = lapin::Connection::connect(&cluster.amqp_url, Default::default())
            .await
            .unwrap();
        let ch = c.create_channel().await.unwrap();
        ch.basic_qos(2, Default::default()).await.unwrap();
        let consumer = ch
            .basic_consume(
                "jobs.vod.cpu".into(),
                "readme-test".into(),
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();
        (c, ch, consumer)
    });
    // The management API samples its statistics every 5 s.
    wait_until(
        "one ready and two unacked jobs",
        Duration::from_secs(30),
        || {
            let q = queue_row(&cluster, "jobs.vod.cpu");
            q["messages"] == 1 && q["unacked"] == 2 && q["consumers"] == 1
        },
    );
    let text = status_text(&cluster);
    let row = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("jobs.vod.cpu"))
        .unwrap_or_else(|| panic!("no jobs.vod.cpu row:\n{text}"));
    // QUEUE READY CONSUMERS UNACKED
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["jobs.vod.cpu", "1", "1", "2"],
        "{text}"
    );
    let metrics = scrape(&cluster.orchestrator_addr);
    assert!(
        metrics.contains("castwork_orchestrator_queue_unacked{queue=\"jobs.vod.cpu\"} 2"),
        "{metrics}"
    );
    // Let go without acking: they are ready again.
    rt.block_on(async {
        let _ = channel.close(200, "bye".into()).await;
        let _ = connection.close(200, "bye".into()).await;
    });
    wait_until("three ready jobs again", Duration::from_secs(30), || {
        let q = queue_row(&cluster, "jobs.vod.cpu");
        q["messages"] == 3 && q["unacked"] == 0
    });
}

#[test]
fn an_unreachable_management_api_shows_unacked_as_unknown_not_zero() {
    let port = free_port().to_string();
    let url = format!("http://127.0.0.1:{port}");
    let cluster = Cluster::start_with(0, &["--rabbitmq-management-url", &url], vec![]);
    wait_until("the queue depths", Duration::from_secs(20), || {
        queue_row(&cluster, "jobs.vod.cpu").is_object()
    });
    let q = queue_row(&cluster, "jobs.vod.cpu");
    assert!(q["unacked"].is_null(), "{q}");
    assert_eq!(q["messages"], 0, "{q}");
    let text = status_text(&cluster);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["jobs.vod.cpu", "0", "0", "-"]),
        "{text}"
    );
    assert!(text.contains("UNACKED -: not known"), "{text}");
    let metrics = scrape(&cluster.orchestrator_addr);
    assert!(
        !metrics.contains("castwork_orchestrator_queue_unacked{queue=\"jobs.vod.cpu\"}"),
        "an unknown count is left out: {metrics}"
    );
    assert!(
        cluster
            .logs_of("orchestrator")
            .contains("cannot read unacknowledged messages"),
        "{}",
        cluster.logs()
    );
}

/// The stream names of the dashboard's streams table, if every row has a progress bar.
const ROWS_WITH_BARS: &str =
    "const rows = [...document.querySelectorAll('#streams tbody tr[data-stream]')]; \
     if (!rows.every((r) => r.querySelector('.rung .bar'))) return null; \
     return rows.map((r) => r.dataset.stream);";

#[test]
fn dashboard_draws_every_streams_bars_a_page_at_a_time_and_failures_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 2);
    // No worker: every stream stays active, its one job queued.
    let cluster = Cluster::start(0);
    let prefix = stream_name("page");
    let names: Vec<String> = (0..22).map(|i| format!("{prefix}-{i:02}")).collect();
    std::thread::scope(|s| {
        for chunk in names.chunks(6) {
            let (cluster, input, dir) = (&cluster, &input, dir.path());
            s.spawn(move || {
                for name in chunk {
                    let out = cluster.push_from(dir, input, name, &["--profiles", RUNG], &[]);
                    assert!(out.status.success(), "{out:?}");
                }
            });
        }
    });
    let base = format!("http://{}", cluster.orchestrator_addr);
    let browser = Browser::start();
    browser.resize(1280, 1400);
    // More than 20 streams on one page: every one has its bar.
    browser.open(&format!("{base}/dashboard?per_page=25"));
    browser.wait_for(
        "22 streams with a bar each",
        Duration::from_secs(60),
        &format!(
            "const n = (function() {{ {ROWS_WITH_BARS} }})(); \
             return !!n && n.filter((s) => s.startsWith('{prefix}')).length === 22;"
        ),
    );
    // Pages of 10: 10, 10 and 2 streams, each with its bar, each stream once.
    browser.open(&format!("{base}/dashboard?per_page=10"));
    let mut seen = BTreeSet::new();
    for (page, expect) in [(1, 10), (2, 10), (3, 2)] {
        browser.wait_for(
            &format!("page {page} of 3 with {expect} streams with bars"),
            Duration::from_secs(30),
            &format!(
                "const n = (function() {{ {ROWS_WITH_BARS} }})(); \
                 return !!n && n.length === {expect} \
                   && document.getElementById('page').innerText === 'page {page} of 3';"
            ),
        );
        let shown = browser.eval(ROWS_WITH_BARS);
        for s in shown.as_array().unwrap() {
            assert!(seen.insert(s.as_str().unwrap().to_string()), "{s} twice");
        }
        if page < 3 {
            browser.eval("document.getElementById('next').click(); return null;");
        }
    }
    assert_eq!(
        seen,
        names.iter().cloned().collect(),
        "every stream on one page"
    );

    // Failed and incomplete streams show their reason, and dead letters get a table: the
    // page's /status answers are rewritten to carry them (the same fields /status sends).
    browser.eval(
        "window.realFetch = window.realFetch || window.fetch; \
         window.fetch = async (url, opts) => { \
           const r = await window.realFetch(url, opts); \
           if (!String(url).startsWith('/status')) return r; \
           const st = await r.json(); \
           st.streams = [ \
             {stream: 'gone-bad', mode: 'vod', state: 'failed', total: 3, received: 3, done: 1, \
              failed: 2, skipped: 0, reason: 'segment 1: <b>no worker</b> took it'}, \
             {stream: 'cut-off', mode: 'live', state: 'incomplete', total: null, received: 4, \
              done: 4, failed: 0, skipped: 0, reason: 'the publisher went away'}]; \
           st.dead_letters = [ \
             {at_unix_ms: Date.now() - 5000, queue: 'jobs.vod.cpu', reason: 'delivery limit', \
              stream: 'gone-bad', deliveries: 50}, \
             {at_unix_ms: Date.now(), queue: 'castwork.ingest', reason: 'unreadable message'}]; \
           return new Response(JSON.stringify(st)); \
         }; return null;",
    );
    browser.wait_for(
        "the failed and incomplete streams with their reasons",
        Duration::from_secs(30),
        "const f = document.querySelector('#streams tr[data-stream=\"gone-bad\"]'); \
         const i = document.querySelector('#streams tr[data-stream=\"cut-off\"]'); \
         return !!f && !!i && f.cells[2].innerText.includes('failed') \
           && f.cells[2].innerText.includes('segment 1: <b>no worker</b> took it') \
           && i.cells[2].innerText.includes('incomplete') \
           && i.cells[2].innerText.includes('the publisher went away');",
    );
    let dead = browser.eval(
        "const s = document.getElementById('dead-letters-section'); \
         return [s.hidden, [...s.querySelectorAll('tbody tr')].map((r) => \
           [...r.cells].slice(1).map((c) => c.innerText))];",
    );
    assert_eq!(
        dead,
        serde_json::json!([
            false,
            [
                ["jobs.vod.cpu", "gone-bad", "50", "delivery limit"],
                ["castwork.ingest", "", "", "unreadable message"]
            ]
        ])
    );
    // An orchestrator that sends no dead letters shows no such table.
    browser.eval(
        "const inner = window.fetch; \
         window.fetch = async (url, opts) => { \
           const r = await inner(url, opts); \
           if (!String(url).startsWith('/status')) return r; \
           const st = await r.json(); delete st.dead_letters; \
           return new Response(JSON.stringify(st)); \
         }; return null;",
    );
    browser.wait_for(
        "the dead letters table to go",
        Duration::from_secs(30),
        "return document.getElementById('dead-letters-section').hidden;",
    );
}

#[test]
fn help_puts_the_in_process_worker_flags_under_their_own_heading() {
    let out = Command::new(bin("orchestrator"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    // Each flag under the heading it is listed after.
    let mut heading = String::new();
    let mut under: BTreeMap<String, String> = BTreeMap::new();
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            heading = line.trim_end_matches(':').to_string();
        } else if let Some(flag) = line.trim_start().strip_prefix("--") {
            let flag = flag.split([' ', ',']).next().unwrap();
            under.insert(flag.to_string(), heading.clone());
        }
    }
    let combined = under["transcode-slots"].clone();
    assert!(combined.starts_with("Combined mode"), "{help}");
    for flag in [
        "preset",
        "threads",
        "live-slots",
        "class",
        "max-segment-mb",
        "job-timeout-secs",
        "worker-id",
        "excluded-retry-secs",
    ] {
        assert_eq!(under[flag], combined, "--{flag}:\n{help}");
    }
    for flag in ["redis-url", "http-addr", "max-attempts", "playback-url"] {
        assert_eq!(under[flag], "Options", "--{flag}:\n{help}");
    }
    // The worker binary has them as plain options.
    let out = Command::new(bin("worker")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(!help.contains("Combined mode"), "{help}");
}

#[test]
fn ledger_takes_redis_url_after_the_command() {
    let redis = RedisNode::start_with(false);
    let url = redis.url();
    let run = |args: &[&str]| {
        let out = Command::new(bin("orchestrator"))
            .env_remove("REDIS_URL")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(
        run(&["ledger", "credit", "alice", "700", "--redis-url", &url]),
        "alice: 700 wei\n"
    );
    assert_eq!(
        run(&["ledger", "show", "alice", "--redis-url", &url]),
        "alice: 700 wei, 0 reserved\n"
    );
    // Before the command, as always.
    assert_eq!(
        run(&["--redis-url", &url, "ledger", "show", "alice"]),
        "alice: 700 wei, 0 reserved\n"
    );
}

/// The `playback: URL` line of a push's output.
fn playback_line(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("playback: "))
        .unwrap_or_else(|| panic!("no playback line: {out:?}"))
        .to_string()
}

fn get_url(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    http_get(addr, path).expect("the playback URL answers")
}

#[test]
fn push_prints_the_orchestrators_own_playback_url_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 2);
    let cluster = Cluster::start(1);
    let stream = stream_name("play");
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    assert!(out.status.success(), "{out:?}");
    let url = playback_line(&out);
    assert_eq!(
        url,
        format!(
            "http://{}/hls/streams/{stream}/index.m3u8",
            cluster.orchestrator_addr
        )
    );
    let (code, body) = get_url(&url);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("#EXTM3U") && body.contains(RUNG), "{body}");
}

#[test]
fn push_prints_the_playback_url_the_orchestrator_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 2);
    let play = format!("127.0.0.1:{}", free_port());
    let mut cluster =
        Cluster::start_with(1, &["--playback-url", &format!("http://{play}/")], vec![]);
    cluster.add("broadcaster", &["serve", "--http-addr", &play, "--no-live"]);
    wait_until("broadcaster serve", Duration::from_secs(30), || {
        http_get(&play, "/healthz").is_some_and(|(c, _)| c == 200)
    });
    let stream = stream_name("served");
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    assert!(out.status.success(), "{out:?}");
    let url = playback_line(&out);
    assert_eq!(url, format!("http://{play}/streams/{stream}/index.m3u8"));
    let (code, body) = get_url(&url);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("#EXTM3U"), "{body}");
    // The playback server, too, says which store it serves, absolute.
    let store = format!("file://{}", cluster.storage_dir().display());
    assert!(
        cluster.logs_of("broadcaster").contains(&store),
        "{}",
        cluster.logs_of("broadcaster")
    );
}

#[test]
fn a_push_into_another_object_store_is_refused_naming_both_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 2);
    let cluster = Cluster::start(1);
    let theirs = format!("file://{}", cluster.storage_dir().display());
    // Every process with a store says where it is, absolute, at start.
    assert!(
        cluster.logs_of("orchestrator").contains(&theirs)
            && cluster.logs_of("orchestrator").contains("store_id"),
        "{}",
        cluster.logs_of("orchestrator")
    );
    // A worker has no store: its jobs carry signed URLs for their objects.
    wait_until("the worker's log", Duration::from_secs(10), || {
        cluster.logs_of("worker").contains("consuming jobs")
    });
    assert!(!cluster.logs_of("worker").contains(&theirs));
    let id = std::fs::read_to_string(cluster.storage_dir().join(".castwork/store-id")).unwrap();
    assert_eq!(id.trim().len(), 32, "{id}");

    // From another directory, README's default `file://./data` is another store.
    let elsewhere = tempfile::tempdir().unwrap();
    let ours = format!(
        "file://{}",
        std::fs::canonicalize(elsewhere.path())
            .unwrap()
            .join("data")
            .display()
    );
    let stream = stream_name("elsewhere");
    let out = cluster.push_from(
        elsewhere.path(),
        &input,
        &stream,
        &["--profiles", RUNG],
        &[("STORAGE_URL", "file://./data")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("object store: {ours}\n")), "{err}");
    for part in [
        format!(
            "this push writes to object store {ours}, which is a store no orchestrator has used"
        ),
        format!("the orchestrator reads from {theirs}"),
        format!("`broadcaster --storage-url {theirs} push ...` (or env STORAGE_URL={theirs})"),
    ] {
        assert!(err.contains(&part), "{part:?} in:\n{err}");
    }
    assert!(
        !Path::new(elsewhere.path()).join("data/streams").exists(),
        "nothing was uploaded"
    );
    // A store another orchestrator used is named by its id.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join(".castwork")).unwrap();
    std::fs::write(other.path().join(".castwork/store-id"), "feedface").unwrap();
    let out = cluster.push_from(
        other.path(),
        &input,
        &stream_name("other"),
        &["--profiles", RUNG],
        &[("STORAGE_URL", "file://.")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "a different store (id feedface, the orchestrator's is {})",
            id.trim()
        )),
        "{err}"
    );

    // With the store the message names, the same push goes through, from anywhere.
    let stream = stream_name("fixed");
    let out = cluster.push_from(
        elsewhere.path(),
        &input,
        &stream,
        &["--profiles", RUNG, "--wait"],
        &[("STORAGE_URL", &theirs)],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "output: {}/streams/{stream}/index.m3u8",
            cluster.storage_dir().display()
        )),
        "{text}"
    );
}
