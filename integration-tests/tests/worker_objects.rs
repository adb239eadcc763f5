//! A worker holds no object-store credentials (issue 15): each job carries signed URLs on
//! the orchestrator's HTTP, one that reads its source segment and one that writes its
//! attempt's renditions. This test takes a real job off the queue and tries, with its
//! URLs, everything a dishonest worker could: another object, a forged token, a rung not in
//! the ladder, an oversized body, endless uploads, an attempt no longer wanted. Then a
//! worker with nothing but its broker URL completes the stream.

mod common;

use std::time::Duration;

use castwork_protocol::*;
use common::*;
use serde_json::Value;

const RUNG: &str = "P144p30fps16x9";
const PATIENCE: Duration = Duration::from_secs(30);

/// Splits a URL on the orchestrator into (host:port, path and query).
fn split(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').unwrap();
    (host.to_string(), format!("/{path}"))
}

fn request(url: &str, method: &str, body: &[u8]) -> HttpAnswer {
    let (host, path) = split(url);
    http_request(&host, method, &path, &[], body, Duration::from_secs(20)).unwrap()
}

fn error_of(a: &HttpAnswer) -> String {
    serde_json::from_slice::<Value>(&a.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| a.text())
}

#[test]
fn a_jobs_urls_reach_its_own_objects_only_and_a_worker_needs_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 4);
    let mut cluster = Cluster::start(0);
    let stream = stream_name("signed");
    let push = cluster.push_in_background(&input, &stream, &["--profiles", RUNG]);
    let queue = job_queue(StreamMode::Vod, "cpu");
    wait_until("a job in the queue", PATIENCE, || {
        cluster.queue_depth(&queue) > 0
    });
    let job: SegmentJob = decode(&peek_message(&cluster.amqp_url, &queue)).unwrap();
    let urls = job
        .objects
        .clone()
        .expect("the job carries its object URLs");
    assert!(urls
        .source_url
        .starts_with(&format!("http://{}/work/", cluster.orchestrator_addr)));

    // The source URL reads this job's source segment, exactly.
    let got = request(&urls.source_url, "GET", b"");
    assert_eq!(got.status, 200, "{}", error_of(&got));
    assert_eq!(got.body.len() as u64, job.source.size);
    let on_disk = std::fs::read(cluster.storage_dir().join(&job.source.key)).unwrap();
    assert_eq!(got.body, on_disk);

    // Its token changed by one character, or used for the other operation, is refused.
    let mut forged = urls.source_url.clone().into_bytes();
    let i = forged.iter().rposition(|b| b.is_ascii_hexdigit()).unwrap();
    forged[i] = if forged[i] == b'0' { b'1' } else { b'0' };
    let a = request(std::str::from_utf8(&forged).unwrap(), "GET", b"");
    assert_eq!(a.status, 403, "{}", error_of(&a));
    let token = urls.source_url.split_once("?t=").unwrap().1;
    let (host, _) = split(&urls.source_url);
    let as_upload = format!("http://{host}/work/rendition?t={token}&rung={RUNG}");
    let a = request(&as_upload, "PUT", b"x");
    assert_eq!(a.status, 403, "{}", error_of(&a));
    assert!(error_of(&a).contains("does not write renditions"));

    // The upload URL: a rung outside the ladder, or a path for a rung name, is refused.
    for rung in ["P720p30fps16x9", "..%2F..%2Fetc"] {
        let a = request(&format!("{}&rung={rung}", urls.upload_url), "PUT", b"x");
        assert_eq!(a.status, 400, "{rung}: {}", error_of(&a));
    }
    // A body over the rung's cap (1 MiB for a short 144p segment) is refused unread.
    let big = vec![0u8; 3 << 20];
    let a = request(&format!("{}&rung={RUNG}", urls.upload_url), "PUT", &big);
    assert_eq!(a.status, 413, "{}", error_of(&a));
    // What it may write goes under this attempt's key for those bytes, nowhere else.
    let junk = b"not a rendition".to_vec();
    let a = request(&format!("{}&rung={RUNG}", urls.upload_url), "PUT", &junk);
    assert_eq!(a.status, 200, "{}", error_of(&a));
    let stored: ObjectRef = serde_json::from_slice(&a.body).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&junk));
    assert_eq!(
        stored.key,
        rendition_key(&stream, RUNG, job.seq, job.attempt, &sha)
    );
    // And only so many times: a few runs of the job, no more.
    let mut last = 0;
    for _ in 0..8 {
        last = request(&format!("{}&rung={RUNG}", urls.upload_url), "PUT", &junk).status;
    }
    assert_eq!(last, 429);

    // A worker with its broker URL and nothing else completes the stream (the honest upload
    // of attempt 1 finds its uploads used up above: it fails, and attempt 2 gets new URLs).
    let before = cluster.pids("worker");
    cluster.add_without(
        "worker",
        &[],
        &[
            "STORAGE_URL",
            "REDIS_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ],
    );
    let pid = cluster
        .pids("worker")
        .into_iter()
        .find(|p| !before.contains(p))
        .unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let names: Vec<String> = String::from_utf8_lossy(&environ)
        .split('\0')
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
        .collect();
    for var in [
        "STORAGE_URL",
        "REDIS_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        assert!(
            !names.iter().any(|n| n == var),
            "{var} in the worker's environment"
        );
    }
    let out = push.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = cluster.wait_complete(&stream, Duration::from_secs(120));
    assert_eq!(status["state"], "complete", "{status}");

    // Once the segment is done, its attempt's URL writes nothing more.
    let a = request(&format!("{}&rung={RUNG}", urls.upload_url), "PUT", b"late");
    assert!(
        a.status == 409 || a.status == 429,
        "{} {}",
        a.status,
        error_of(&a)
    );
}
