//! Operating a running cluster: `orchestrator status`, queue depths and their metrics, and
//! the dashboard and player pages in headless Chromium.

mod common;

use std::process::Command;
use std::time::Duration;

use common::browser::Browser;
use common::{bin, clip, free_port, http_get, stream_name, wait_until, Cluster, Injector};

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
    // The depths are a snapshot every 2 s: under load one may predate a consumer (say, a
    // worker re-subscribing), so read until the worker's queues show it, 20 s at most. The
    // unacknowledged counts come from the management API, which samples new queues' every
    // 5 s: until then they show as unknown (`-`).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = status(&format!("http://{}", cluster.orchestrator_addr));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let consumed = text
            .lines()
            .filter(|l| l.starts_with("jobs.") && l.split_whitespace().nth(2) == Some("1"))
            .count()
            == 2
            && !text.contains("UNACKED -");
        if consumed || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
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
        ("orchestrator.ingest", 1),
        ("jobs.live.cpu", 1),
        ("jobs.vod.cpu", 1),
        ("orchestrator.results", 1),
        ("castwork.jobs.dead", 1),
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(queue))
            .unwrap_or_else(|| panic!("no row for {queue}:\n{text}"));
        // QUEUE READY CONSUMERS UNACKED
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells[1..],
            ["0".to_string(), consumers.to_string(), "0".to_string()],
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

/// An OTLP/gRPC trace receiver: every span it gets, with its service's name.
mod collector {
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::trace::v1::Span;

    #[derive(Clone, Default)]
    pub struct Collector(pub Arc<Mutex<Vec<(String, Span)>>>);

    /// Every (service.name, service.version) pair the resources of the exports named.
    pub static VERSIONS: Mutex<std::collections::BTreeSet<(String, String)>> =
        Mutex::new(std::collections::BTreeSet::new());

    fn resource_attr(
        resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>,
        key: &str,
    ) -> String {
        resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|a| a.key == key)
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                Any::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    pub fn attr(span: &Span, key: &str) -> Option<String> {
        span.attributes.iter().find(|a| a.key == key).and_then(|a| {
            match a.value.as_ref()?.value.as_ref()? {
                Any::StringValue(s) => Some(s.clone()),
                Any::IntValue(i) => Some(i.to_string()),
                _ => None,
            }
        })
    }

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut got = self.0.lock().unwrap();
            for rs in request.into_inner().resource_spans {
                let service = resource_attr(rs.resource.as_ref(), "service.name");
                let version = resource_attr(rs.resource.as_ref(), "service.version");
                VERSIONS.lock().unwrap().insert((service.clone(), version));
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        got.push((service.clone(), span));
                    }
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    /// Serves on `port` from a thread of its own until the test process ends.
    pub fn start(port: u16) -> Collector {
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve(([127, 0, 0, 1], port).into())
                    .await
                    .unwrap();
            });
        });
        collector
    }
}

#[test]
fn one_trace_per_segment_across_broadcaster_orchestrator_and_worker() {
    use std::collections::{BTreeMap, HashSet};

    let port = free_port();
    let collector = collector::start(port);
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 6);
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string()),
    ];
    let cluster = Cluster::start_with(1, &[], env);
    let stream = stream_name("traced");
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    // The roots: one `segment` span per segment, from the broadcaster.
    let roots = || -> BTreeMap<String, Vec<u8>> {
        collector
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| {
                s.name == "segment" && collector::attr(s, "stream").as_deref() == Some(&stream)
            })
            .map(|(_, s)| (collector::attr(s, "seq").unwrap(), s.trace_id.clone()))
            .collect()
    };
    // Every span of those traces has arrived once each handled result is in.
    let wanted = [
        "segment",
        "cut",
        "upload source",
        "publish segment",
        "admit segment",
        "publish job",
        "transcode job",
        "fetch",
        "transcode",
        "encode rung",
        "upload",
        "handle result",
        "check output",
        "accept",
        "list",
    ];
    let complete = || {
        let r = roots();
        let spans = collector.0.lock().unwrap();
        r.len() == 3
            && r.values().all(|t| {
                wanted
                    .iter()
                    .all(|w| spans.iter().any(|(_, s)| &s.trace_id == t && s.name == *w))
            })
    };
    wait_until(
        "every span of the 3 traces",
        Duration::from_secs(30),
        complete,
    );
    let roots = roots();
    assert_eq!(
        roots.keys().cloned().collect::<Vec<_>>(),
        ["0", "1", "2"],
        "one root per segment"
    );
    let traces: HashSet<&Vec<u8>> = roots.values().collect();
    assert_eq!(traces.len(), 3, "each segment is its own trace");
    // Every process names its build on its spans (the `service.version` resource attribute).
    let versions = collector::VERSIONS.lock().unwrap().clone();
    let version = env!("CARGO_PKG_VERSION").to_string();
    for service in [
        "castwork-broadcaster",
        "castwork-orchestrator",
        "castwork-worker",
    ] {
        assert!(
            versions.contains(&(service.to_string(), version.clone())),
            "{service} without service.version {version}: {versions:?}"
        );
    }
    let spans = collector.0.lock().unwrap();
    for (seq, trace) in &roots {
        let mine: Vec<&(String, opentelemetry_proto::tonic::trace::v1::Span)> =
            spans.iter().filter(|(_, s)| &s.trace_id == trace).collect();
        let by_name = |name: &str| {
            mine.iter()
                .find(|(_, s)| s.name == name)
                .unwrap_or_else(|| panic!("no {name} span in segment {seq}"))
        };
        let services: HashSet<&str> = mine.iter().map(|(svc, _)| svc.as_str()).collect();
        assert_eq!(
            services,
            HashSet::from([
                "castwork-broadcaster",
                "castwork-orchestrator",
                "castwork-worker"
            ]),
            "segment {seq}"
        );
        // Parent links: the root has none; every other span's parent is in the trace.
        let ids: HashSet<&Vec<u8>> = mine.iter().map(|(_, s)| &s.span_id).collect();
        for (_, s) in &mine {
            if s.name == "segment" {
                assert!(s.parent_span_id.is_empty(), "the root has no parent");
            } else {
                assert!(ids.contains(&s.parent_span_id), "{} has its parent", s.name);
            }
        }
        for (child, parent, service) in [
            ("cut", "segment", "castwork-broadcaster"),
            ("upload source", "segment", "castwork-broadcaster"),
            ("publish segment", "segment", "castwork-broadcaster"),
            ("admit segment", "publish segment", "castwork-orchestrator"),
            ("publish job", "admit segment", "castwork-orchestrator"),
            ("transcode job", "publish job", "castwork-worker"),
            ("fetch", "transcode job", "castwork-worker"),
            ("transcode", "transcode job", "castwork-worker"),
            ("encode rung", "transcode", "castwork-worker"),
            ("upload", "transcode job", "castwork-worker"),
            ("handle result", "transcode job", "castwork-orchestrator"),
            ("check output", "handle result", "castwork-orchestrator"),
            ("accept", "handle result", "castwork-orchestrator"),
            ("list", "handle result", "castwork-orchestrator"),
        ] {
            let (svc, c) = by_name(child);
            let (_, p) = by_name(parent);
            assert_eq!(svc, service, "{child} comes from {service}");
            assert_eq!(
                c.parent_span_id, p.span_id,
                "{child} is a child of {parent}"
            );
        }
        // The tree of segment 1 with durations, for the record.
        if seq == "1" {
            let t0 = by_name("segment").1.start_time_unix_nano;
            fn walk(
                spans: &[&(String, opentelemetry_proto::tonic::trace::v1::Span)],
                parent: &[u8],
                depth: usize,
                t0: u64,
            ) {
                let mut kids: Vec<_> = spans
                    .iter()
                    .filter(|(_, s)| s.parent_span_id == parent)
                    .collect();
                kids.sort_by_key(|(_, s)| s.start_time_unix_nano);
                for (svc, s) in kids {
                    println!(
                        "{:indent$}{} [{}] +{:.1} ms, {:.1} ms",
                        "",
                        s.name,
                        svc.trim_start_matches("castwork-"),
                        (s.start_time_unix_nano.saturating_sub(t0)) as f64 / 1e6,
                        (s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano)) as f64 / 1e6,
                        indent = depth * 2
                    );
                    walk(spans, &s.span_id, depth + 1, t0);
                }
            }
            println!("trace {} of segment 1:", hex(trace));
            walk(&mine, &[], 0, t0);
        }
    }
}

#[test]
fn an_unreachable_trace_collector_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    // Nothing listens there: every export fails.
    let env = vec![(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
        format!("http://127.0.0.1:{}", free_port()),
    )];
    let cluster = Cluster::start_with(1, &[], env);
    let stream = stream_name("nocollector");
    let started = std::time::Instant::now();
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cluster.status(&stream)["segments"]["done"], 2);
    println!(
        "push with a dead collector: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Parses the Prometheus text format strictly: every sample line is `name{labels} value`
/// of a family with a `# TYPE`. Returns `name{labels}` -> value.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = std::collections::HashMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            assert!(name_ok(name), "bad TYPE line {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad TYPE line {line:?}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad metric name in {line:?}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels in {line:?}"
                );
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(name_ok(k), "bad label name in {line:?}");
                    assert!(
                        v.starts_with('"') && v.ends_with('"'),
                        "bad label in {line:?}"
                    );
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name} has no TYPE line");
        assert!(name.starts_with("castwork_"), "{name} is not ours");
        samples.insert(series.to_string(), value);
    }
    samples
}

fn bytes_under(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "ts"))
                .map(|e| e.metadata().unwrap().len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn metrics_of_every_process_parse_and_count_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 6);
    let mut cluster = Cluster::start(0);
    let worker_http = format!("127.0.0.1:{}", free_port());
    cluster.add(
        "worker",
        &["--worker-id", "metered", "--http-addr", &worker_http],
    );
    let live = cluster.serve_live(&[]);
    let stream = stream_name("metered");
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = |addr: &str| {
        let (code, text) = http_get(addr, "/metrics").expect("metrics answers");
        assert_eq!(code, 200);
        parse_prometheus(&text)
    };
    let get = |m: &std::collections::HashMap<String, f64>, series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("no {series} in {:?}", m.keys().collect::<Vec<_>>()))
    };

    let o = metrics(&cluster.orchestrator_addr);
    for (series, want) in [
        (
            "castwork_orchestrator_streams_total{event=\"admitted\"}",
            1.0,
        ),
        (
            "castwork_orchestrator_streams_total{event=\"completed\"}",
            1.0,
        ),
        (
            "castwork_orchestrator_segments_total{event=\"received\"}",
            3.0,
        ),
        ("castwork_orchestrator_segments_total{event=\"done\"}", 3.0),
        ("castwork_orchestrator_jobs_published_total", 3.0),
        ("castwork_orchestrator_transcode_seconds_count", 3.0),
        (
            "castwork_orchestrator_segment_seconds_count{stage=\"queue_wait\"}",
            3.0,
        ),
        (
            "castwork_orchestrator_segment_seconds_count{stage=\"end_to_end\"}",
            3.0,
        ),
    ] {
        assert_eq!(get(&o, series), want, "{series}");
    }
    assert!(o
        .keys()
        .any(|k| k.starts_with("castwork_orchestrator_queue_messages")));

    let w = metrics(&worker_http);
    let sources = bytes_under(
        &cluster
            .storage_dir()
            .join(format!("streams/{stream}/source")),
    );
    let renditions = bytes_under(
        &cluster
            .storage_dir()
            .join(format!("streams/{stream}/{RUNG}")),
    );
    assert!(sources > 0 && renditions > 0);
    for (series, want) in [
        ("castwork_worker_segments_total{outcome=\"done\"}", 3.0),
        ("castwork_worker_stage_seconds_count{stage=\"fetch\"}", 3.0),
        (
            "castwork_worker_stage_seconds_count{stage=\"transcode\"}",
            3.0,
        ),
        ("castwork_worker_stage_seconds_count{stage=\"upload\"}", 3.0),
        ("castwork_worker_transcode_realtime_ratio_count", 3.0),
        (
            "castwork_worker_bytes_total{direction=\"in\"}",
            sources as f64,
        ),
        (
            "castwork_worker_bytes_total{direction=\"out\"}",
            renditions as f64,
        ),
        ("castwork_worker_slots", 1.0),
        ("castwork_worker_busy_slots", 0.0),
        ("castwork_worker_redeliveries_total", 0.0),
    ] {
        assert_eq!(get(&w, series), want, "{series}");
    }

    // The broadcaster counts what it serves for playback.
    let (code, playlist) = http_get(&live.http, &format!("/streams/{stream}/index.m3u8")).unwrap();
    assert_eq!(code, 200);
    // Sources are not served for playback.
    let (code, _) = http_get(&live.http, &format!("/streams/{stream}/source/0.ts")).unwrap();
    assert_eq!(code, 404);
    let b = metrics(&live.http);
    assert_eq!(
        get(&b, "castwork_broadcaster_bytes_total{direction=\"out\"}"),
        playlist.len() as f64
    );
}

/// What a user may do on the broker: runs `op` on a fresh channel and reports whether the
/// broker refused it (ACCESS_REFUSED closes the channel).
fn refused(url: &str, op: &str, name: &str) -> bool {
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .expect("the user may connect");
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            match op {
                "publish" => match ch
                    .basic_publish(
                        name.into(),
                        "ingest".into(),
                        BasicPublishOptions::default(),
                        b"{}",
                        lapin::BasicProperties::default(),
                    )
                    .await
                {
                    Ok(confirm) => confirm.await.map(|_| ()),
                    Err(e) => Err(e),
                },
                "consume" => ch
                    .basic_consume(
                        name.into(),
                        "probe".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map(|_| ()),
                "declare" => ch
                    .queue_declare(
                        name.into(),
                        QueueDeclareOptions {
                            auto_delete: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map(|_| ()),
                "delete" => ch
                    .queue_delete(name.into(), Default::default())
                    .await
                    .map(|_| ()),
                other => panic!("unknown op {other}"),
            }
        })
        .await
        .expect("the broker answers");
        let _ = conn.close(200, "bye".into()).await;
        match outcome {
            Ok(()) => false,
            Err(e) => {
                let text = format!("{e:?}");
                assert!(
                    text.contains("ACCESS_REFUSED") || text.contains("AccessRefused"),
                    "{text}"
                );
                true
            }
        }
    })
}

#[test]
fn each_role_works_with_its_own_least_privilege_rabbitmq_user() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    let cluster = Cluster::start_with_role_users(1);
    let stream = stream_name("roles");
    let out = cluster.push(&input, &stream, &["--profiles", RUNG]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    assert_eq!(cluster.status(&stream)["segments"]["done"], 2);
    let (worker, broadcaster) = (
        cluster.amqp_url_of("worker"),
        cluster.amqp_url_of("broadcaster"),
    );
    assert_ne!(worker, cluster.amqp_url, "the worker has a user of its own");
    // Each is refused what its role never does.
    assert!(
        refused(&worker, "publish", "castwork.ingest"),
        "a worker cannot ingest"
    );
    assert!(
        refused(&worker, "consume", "orchestrator.ingest"),
        "a worker cannot read ingest"
    );
    assert!(
        refused(&worker, "consume", "orchestrator.results"),
        "nor other workers' reports"
    );
    assert!(
        refused(&worker, "delete", "jobs.vod.cpu"),
        "nor delete the queue it takes jobs from"
    );
    assert!(
        refused(&worker, "declare", "jobs.vod.cpu"),
        "nor declare one (which would let it delete it)"
    );
    assert!(
        refused(&worker, "declare", "castwork.push.1"),
        "nor make event queues"
    );
    assert!(
        refused(&worker, "consume", "castwork.jobs.dead"),
        "nor read dead letters"
    );
    assert!(
        refused(&broadcaster, "consume", "jobs.vod.cpu"),
        "a broadcaster cannot take jobs"
    );
    assert!(
        refused(&broadcaster, "publish", "castwork.jobs"),
        "nor publish jobs"
    );
    assert!(
        refused(&broadcaster, "publish", "castwork.results"),
        "nor results"
    );
    assert!(
        refused(&broadcaster, "consume", "orchestrator.ingest"),
        "nor read what other broadcasters ingest"
    );
    assert!(
        refused(&broadcaster, "delete", "orchestrator.ingest"),
        "nor delete the ingest queue"
    );
    // And allowed what it does.
    assert!(!refused(&broadcaster, "publish", "castwork.ingest"));
    assert!(!refused(&worker, "publish", "castwork.results"));
}

/// Restarts the cluster's orchestrator (SIGKILL, then the same flags) and waits for it.
fn restart_orchestrator(cluster: &mut Cluster) {
    let pid = cluster.pids("orchestrator")[0];
    cluster.signal(pid, "KILL");
    let addr = cluster.orchestrator_addr.clone();
    cluster.add("orchestrator", &["--http-addr", &addr]);
    wait_until(
        "the orchestrator is healthy",
        Duration::from_secs(30),
        || http_get(&cluster.orchestrator_addr, "/healthz").is_some_and(|(c, _)| c == 200),
    );
}

#[test]
fn the_queues_an_older_castwork_named_like_their_exchanges_are_drained_then_deleted() {
    let mut cluster = Cluster::start(0);
    let legacy = Injector::new(&cluster.amqp_url);
    // An older topology: the ingest queue bore its exchange's name, and still holds a message.
    legacy.declare_bound(
        "castwork.ingest",
        castwork_protocol::INGEST_EXCHANGE,
        "ingest",
    );
    legacy.publish("", "castwork.ingest", br#"{"left":"by an older castwork"}"#);
    let depth = |c: &Cluster, q: &str| c.queue_depths().into_iter().find(|(n, _)| n == q);
    assert_eq!(
        depth(&cluster, "castwork.ingest"),
        Some(("castwork.ingest".into(), 1))
    );
    let before = cluster.dead_letters().len();
    // The next orchestrator unbinds it and reads it with the ingest handler: the message is
    // handled (here: dead-lettered as unreadable, under the queue that replaces it).
    restart_orchestrator(&mut cluster);
    wait_until(
        "the legacy message handled",
        Duration::from_secs(30),
        || cluster.dead_letters().len() > before,
    );
    let letter = &cluster.dead_letters()[0];
    assert_eq!(letter["queue"], "orchestrator.ingest", "{letter}");
    assert!(
        letter["reason"].as_str().unwrap().contains("unreadable"),
        "{letter}"
    );
    assert_eq!(
        depth(&cluster, "castwork.ingest"),
        Some(("castwork.ingest".into(), 0))
    );
    // Unbound: what is published to the exchange now reaches the new queue alone.
    let bindings = Command::new("rabbitmqctl")
        .args([
            "list_bindings",
            "-q",
            "-p",
            &cluster.vhost,
            "source_name",
            "destination_name",
        ])
        .output()
        .unwrap();
    let bindings = String::from_utf8_lossy(&bindings.stdout).to_string();
    let bound = |queue: &str| {
        bindings
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["castwork.ingest", queue])
    };
    assert!(!bound("castwork.ingest"), "{bindings}");
    assert!(bound("orchestrator.ingest"), "{bindings}");
    // Empty and unused, it is deleted at the next start.
    restart_orchestrator(&mut cluster);
    wait_until("the legacy queue deleted", Duration::from_secs(30), || {
        depth(&cluster, "castwork.ingest").is_none()
    });
}
