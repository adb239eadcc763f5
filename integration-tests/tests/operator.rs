//! What an operator runs the processes by: liveness apart from readiness (the orchestrator's
//! HTTP up before Redis, saying what it waits for; the broadcaster's readiness following its
//! AMQP link), JSON logs that carry each segment's trace id, no colours in log files, the
//! build-info metric, `Range` requests on both playback servers, a banned worker's exit
//! status, and the dashboard's per-rendition bars and busy-slot chart.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::browser::Browser;
use common::{
    bin, clip, free_port, http_get, http_request, stream_name, wait_until, Cluster, HttpAnswer,
    RabbitNode,
};
use serde_json::Value;

const RUNG: &str = "P240p30fps16x9";
const LOW: &str = RUNG;
const HIGH: &str = "P360p30fps16x9";
/// The worker's exit status when the orchestrator banned it (`castwork_worker::EXIT_BANNED`).
const EXIT_BANNED: i32 = 4;

fn json_of(addr: &str, path: &str) -> (u16, Value) {
    let (code, body) = http_get(addr, path).unwrap_or_else(|| panic!("{addr}{path} answers"));
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (code, v)
}

/// A `redis-server` on a chosen port, killed when dropped.
struct Redis(Child);

impl Redis {
    fn on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        Redis(child)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts one more process of the cluster with `env` on top of the cluster's.
fn add_with_env(cluster: &mut Cluster, name: &str, args: &[&str], env: &[(&str, &str)]) {
    let before = cluster.env.len();
    cluster
        .env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    cluster.add(name, args);
    cluster.env.truncate(before);
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect()
}

/// No ANSI escape (ESC, 0x1b) in any process's log file: stderr is a file, not a terminal.
fn assert_no_colours(cluster: &Cluster) {
    for f in log_files(cluster.dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.is_empty(), "{} is empty", f.display());
        assert!(
            !bytes.contains(&0x1b),
            "{} has ANSI escapes:\n{}",
            f.display(),
            String::from_utf8_lossy(&bytes)
        );
    }
}

#[test]
fn the_orchestrator_is_alive_before_redis_and_ready_once_it_answers() {
    let mut cluster = Cluster::start(0);
    let redis_port = free_port();
    let addr = format!("127.0.0.1:{}", free_port());
    let redis_url = format!("redis://127.0.0.1:{redis_port}/");
    add_with_env(
        &mut cluster,
        "orchestrator",
        &["--http-addr", &addr],
        &[("REDIS_URL", &redis_url)],
    );
    // Its HTTP is up although nothing listens on its Redis port.
    wait_until("/livez", Duration::from_secs(30), || {
        http_get(&addr, "/livez").is_some_and(|(c, _)| c == 200)
    });
    let (code, live) = json_of(&addr, "/livez");
    assert_eq!((code, &live["alive"]), (200, &Value::Bool(true)), "{live}");
    let (code, ready) = json_of(&addr, "/readyz");
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["ready"], false, "{ready}");
    assert_eq!(ready["redis"], false, "{ready}");
    let waiting: Vec<&str> = ready["waiting_for"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(waiting.contains(&"redis"), "{ready}");
    assert_eq!(
        ready["details"]["redis"]["url"],
        redis_url.as_str(),
        "{ready}"
    );
    assert!(
        !ready["details"]["redis"]["error"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{ready}"
    );
    // The old health check says the same as before: not healthy.
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 503);
    // And the log says what it waits for.
    wait_until("the log line", Duration::from_secs(10), || {
        cluster
            .logs_of("orchestrator")
            .contains("waiting for Redis")
    });
    assert!(
        cluster.logs_of("orchestrator").contains(&redis_url),
        "{}",
        cluster.logs_of("orchestrator")
    );
    // Redis comes up on that port: ready, with nothing restarted.
    let _redis = Redis::on(redis_port);
    wait_until("/readyz 200", Duration::from_secs(60), || {
        http_get(&addr, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    let (_, ready) = json_of(&addr, "/readyz");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["waiting_for"], serde_json::json!([]), "{ready}");
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 200);
    assert_no_colours(&cluster);
}

#[test]
fn the_broadcasters_readiness_follows_its_amqp_link() {
    let node = RabbitNode::start();
    let mut cluster = Cluster::start(0);
    let http = format!("127.0.0.1:{}", free_port());
    let rtmp = format!("127.0.0.1:{}", free_port());
    add_with_env(
        &mut cluster,
        "broadcaster",
        &[
            "serve",
            "--http-addr",
            &http,
            "--rtmp-addr",
            &rtmp,
            "--open-ingest",
        ],
        &[("AMQP_URL", &node.url())],
    );
    wait_until("the broadcaster ready", Duration::from_secs(60), || {
        http_get(&http, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    node.ctl(&["stop_app"]);
    wait_until("the broadcaster not ready", Duration::from_secs(30), || {
        http_get(&http, "/readyz").is_some_and(|(c, _)| c == 503)
    });
    let (_, ready) = json_of(&http, "/readyz");
    assert_eq!(
        ready["waiting_for"],
        serde_json::json!(["broker"]),
        "{ready}"
    );
    assert_eq!(http_get(&http, "/livez").unwrap().0, 200);
    node.ctl(&["start_app"]);
    wait_until(
        "the broadcaster ready again",
        Duration::from_secs(60),
        || http_get(&http, "/readyz").is_some_and(|(c, _)| c == 200),
    );
    // Playback alone (--no-live) needs no broker.
    let play = format!("127.0.0.1:{}", free_port());
    add_with_env(
        &mut cluster,
        "broadcaster",
        &["serve", "--no-live", "--http-addr", &play],
        &[("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
    );
    wait_until("playback ready", Duration::from_secs(30), || {
        http_get(&play, "/readyz").is_some_and(|(c, _)| c == 200)
    });
}

/// The JSON log lines of one binary; every line must be one.
fn json_lines(cluster: &Cluster, name: &str) -> Vec<Value> {
    let text = cluster.logs_of(name);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn json_logs_carry_each_segments_trace_id_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    let cluster = Cluster::start_with(1, &[], vec![("LOG_FORMAT".into(), "json".into())]);
    let stream = stream_name("jsonlogs");
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    assert!(out.status.success(), "{}", cluster.logs());
    let worker = json_lines(&cluster, "worker");
    let orchestrator = json_lines(&cluster, "orchestrator");
    assert!(worker
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    let done: Vec<&Value> = worker
        .iter()
        .filter(|l| l["message"] == "segment done" && l["stream"] == stream.as_str())
        .collect();
    assert_eq!(done.len(), 2, "{}", cluster.logs_of("worker"));
    for line in done {
        let id = line["span"]["trace_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no trace_id: {line}"));
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "0".repeat(32),
            "{line}"
        );
        // The orchestrator's lines of the same segment carry the same trace id.
        let seq = &line["seq"];
        let accepted = orchestrator
            .iter()
            .find(|l| {
                l["message"] == "segment accepted"
                    && l["stream"] == stream.as_str()
                    && &l["seq"] == seq
            })
            .unwrap_or_else(|| panic!("no accept of {seq}: {}", cluster.logs_of("orchestrator")));
        assert_eq!(accepted["span"]["trace_id"], id, "{accepted}");
    }
    // Two segments, two traces.
    let ids: std::collections::BTreeSet<&str> = worker
        .iter()
        .filter_map(|l| l["span"]["trace_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_no_colours(&cluster);
}

fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> HttpAnswer {
    http_request(addr, "GET", path, headers, b"", Duration::from_secs(30)).expect("answers")
}

/// Checks `Range` answers of one playback server for the object at `path`, whose bytes are
/// `whole`.
fn check_ranges(server: &str, addr: &str, path: &str, whole: &[u8]) {
    let n = whole.len();
    assert!(n > 2000, "{n}");
    let a = get(addr, path, &[]);
    assert_eq!(a.status, 200, "{server}: {}", a.text());
    assert_eq!(a.body, whole, "{server}");
    assert_eq!(a.header("accept-ranges"), Some("bytes"), "{server}");
    let a = get(addr, path, &[("Range", "bytes=100-1099")]);
    assert_eq!(a.status, 206, "{server}: {}", a.text());
    assert_eq!(
        a.header("content-range"),
        Some(format!("bytes 100-1099/{n}").as_str()),
        "{server}"
    );
    assert_eq!(a.header("content-type"), Some("video/mp2t"), "{server}");
    assert_eq!(a.body, &whole[100..1100], "{server}");
    let a = get(addr, path, &[("Range", "bytes=-188")]);
    assert_eq!(a.status, 206, "{server}");
    assert_eq!(
        a.header("content-range"),
        Some(format!("bytes {}-{}/{n}", n - 188, n - 1).as_str()),
        "{server}"
    );
    assert_eq!(a.body, &whole[n - 188..], "{server}");
    let a = get(addr, path, &[("Range", &format!("bytes={}-", n - 10))]);
    assert_eq!(
        (a.status, a.body.as_slice()),
        (206, &whole[n - 10..]),
        "{server}"
    );
    // Past the end: 416 with the size.
    let a = get(addr, path, &[("Range", &format!("bytes={n}-"))]);
    assert_eq!(a.status, 416, "{server}: {}", a.text());
    assert_eq!(
        a.header("content-range"),
        Some(format!("bytes */{n}").as_str()),
        "{server}"
    );
    // Several ranges: the whole object.
    let a = get(addr, path, &[("Range", "bytes=0-1,5-6")]);
    assert_eq!((a.status, a.body.len()), (200, n), "{server}");
}

/// `castwork_build_info{service=..., version=...} 1` on a `/metrics` page.
fn assert_build_info(addr: &str, service: &str) {
    let (code, page) = http_get(addr, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200);
    let line = page
        .lines()
        .find(|l| l.starts_with("castwork_build_info{"))
        .unwrap_or_else(|| panic!("no castwork_build_info at {addr}: {page}"));
    assert!(line.contains(&format!("service=\"{service}\"")), "{line}");
    assert!(
        line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(line.ends_with(" 1"), "{line}");
}

#[test]
fn both_playback_servers_answer_range_requests_and_every_process_its_build() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 2);
    let mut cluster = Cluster::start(0);
    let worker_addr = format!("127.0.0.1:{}", free_port());
    cluster.add(
        "worker",
        &["--worker-id", "w-range", "--http-addr", &worker_addr],
    );
    let stream = stream_name("ranges");
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    assert!(out.status.success(), "{}", cluster.logs());
    let rung_dir = cluster
        .storage_dir()
        .join(format!("streams/{stream}/{RUNG}"));
    let rendition = std::fs::read_dir(&rung_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", rung_dir.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "ts"))
        .expect("a rendition");
    let whole = std::fs::read(&rendition).unwrap();
    let file = rendition.file_name().unwrap().to_string_lossy().to_string();
    check_ranges(
        "orchestrator",
        &cluster.orchestrator_addr,
        &format!("/hls/streams/{stream}/{RUNG}/{file}"),
        &whole,
    );
    let live = cluster.serve_live(&[]);
    check_ranges(
        "broadcaster",
        &live.http,
        &format!("/streams/{stream}/{RUNG}/{file}"),
        &whole,
    );
    assert_build_info(&cluster.orchestrator_addr, "castwork-orchestrator");
    assert_build_info(&worker_addr, "castwork-worker");
    assert_build_info(&live.http, "castwork-broadcaster");
}

#[test]
fn a_banned_worker_exits_with_its_own_status() {
    let mut cluster = Cluster::start(0);
    // An operator's ban (see ledger.rs for one the quality check makes): the worker learns
    // of it from the answer to its heartbeat, over the broker (it has no Redis).
    let out = Command::new(bin("orchestrator"))
        .args([
            "--redis-url",
            cluster.redis_url(),
            "workers",
            "ban",
            "w-banned",
        ])
        .args(["--reason", "3 results failed their check"])
        .output()
        .expect("orchestrator runs");
    assert!(out.status.success(), "{out:?}");
    cluster.add("worker", &["--worker-id", "w-banned"]);
    let pid = cluster.pids("worker")[0];
    let status = cluster.wait_exit(pid, Duration::from_secs(30));
    assert_eq!(status.code(), Some(EXIT_BANNED), "{}", cluster.logs());
    assert!(
        cluster
            .logs_of("worker")
            .contains("banned this worker for bad output"),
        "{}",
        cluster.logs()
    );
}

#[test]
fn the_dashboard_shows_each_renditions_own_count_and_workers_busy_slots() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    let cluster = Cluster::start(1);
    let stream = stream_name("rungs");
    let out = cluster.push(&input, &stream, &["--profiles", &format!("{LOW},{HIGH}")]);
    assert!(out.status.success(), "{}", cluster.logs());
    // Each rendition's count comes from its own accepted segments.
    let (_, s) = json_of(&cluster.orchestrator_addr, &format!("/streams/{stream}"));
    let counts: Vec<(String, u64)> = s["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["segments_done"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        vec![(LOW.to_string(), 2), (HIGH.to_string(), 2)],
        "{s}"
    );
    // One rung's count set apart in Redis: the API and the page show that rung's own.
    let out = Command::new("redis-cli")
        .args(["-u", cluster.redis_url(), "HSET"])
        .arg(format!("cw:stream:{stream}"))
        .arg(format!("done:{HIGH}"))
        .arg("1")
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "{out:?}");
    let (_, s) = json_of(&cluster.orchestrator_addr, &format!("/streams/{stream}"));
    assert_eq!(s["renditions"][0]["segments_done"], 2, "{s}");
    assert_eq!(s["renditions"][1]["segments_done"], 1, "{s}");

    let browser = Browser::start();
    browser.resize(1280, 1600);
    browser.open(&format!("http://{}/dashboard", cluster.orchestrator_addr));
    browser.wait_for(
        "each rendition's own count",
        Duration::from_secs(30),
        &format!(
            "const row = document.querySelector('#streams tr[data-stream=\"{stream}\"]'); \
             if (!row) return false; \
             const rungs = [...row.querySelectorAll('.rung')].map((r) => r.innerText.trim()); \
             return rungs.length === 2 && rungs[0].startsWith('{LOW}') && rungs[0].endsWith('2/2') \
               && rungs[1].startsWith('{HIGH}') && rungs[1].endsWith('1/2');"
        ),
    );
    // The busy-slot chart keeps each worker's history from the page's polls: here the
    // /status answers are rewritten to a worker whose busy slots go 0, 1, 2, 1, ...
    browser.eval(
        "window.realFetch = window.realFetch || window.fetch; \
         let n = 0; \
         window.fetch = async (url, opts) => { \
           const r = await window.realFetch(url, opts); \
           if (!String(url).startsWith('/status')) return r; \
           const st = await r.json(); \
           const busy = [0, 1, 2, 1][n++ % 4]; \
           st.workers = st.workers.concat([{id: 'fake-w', host: 'h', class: 'cpu', slots: 2, \
             busy_slots: busy, version: 'x', last_seen_unix: Date.now() / 1000}]); \
           return new Response(JSON.stringify(st)); \
         }; return null;",
    );
    browser.wait_for(
        "the busy-slot chart",
        Duration::from_secs(30),
        "const s = JSON.parse(document.getElementById('busy-chart').dataset.series || '{}'); \
         const f = s['fake-w'] || []; \
         return f.length >= 4 && f.includes(0) && f.includes(1) && f.includes(2) \
           && Array.isArray(s['w0']) && s['w0'].length >= 4;",
    );
    let legend = browser.eval("return document.getElementById('busy-legend').innerText;");
    assert!(
        legend.as_str().unwrap().contains("fake-w") && legend.as_str().unwrap().contains("w0"),
        "{legend}"
    );
}

/// `--config FILE`: every flag's long name as a key; flags override it; a key that is no
/// flag stops the process with a message naming the keys there are.
#[test]
fn a_config_file_sets_flags_and_the_command_line_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(0);
    let url = cluster.add_broker_user("from-file", "worker");
    let file = dir.path().join("worker.toml");
    std::fs::write(
        &file,
        format!(
            "amqp-url = \"{url}\"\nworker-id = \"configured\"\nslots = 2\npreset = \"ultrafast\"\n"
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    cluster.add_without(
        "worker",
        &["--config", &file, "--slots", "3"],
        &["AMQP_URL"],
    );
    let identity = format!("{}-from-file", cluster.vhost);
    let mut rec = None;
    wait_until(
        "the configured worker to beat",
        Duration::from_secs(30),
        || {
            rec = cluster.worker_record(&identity);
            rec.is_some()
        },
    );
    let rec = rec.unwrap();
    assert_eq!(rec["process"], "configured", "{rec}");
    assert_eq!(rec["slots"], 3, "the flag wins over the file: {rec}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "amqp_url = \"amqp://x\"\n").unwrap();
    let out = Command::new(bin("worker"))
        .args(["--config", &bad.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"amqp_url\" is not a flag here") && err.contains("amqp-url"),
        "{err}"
    );
}
