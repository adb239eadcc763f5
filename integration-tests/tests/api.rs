//! The job API of `broadcaster serve --api` (issue 18): an app developer with an API key
//! posts a video's URL and gets an HLS ladder; keys, accounts, bad requests and the fetch's
//! refusal of this machine's own addresses, as a client meets them over HTTP.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(120);

/// Serves `dir` over HTTP on a free loopback port: the "internet" the inputs come from.
struct FileServer {
    child: Child,
    addr: String,
}

impl FileServer {
    fn start(dir: &std::path::Path) -> FileServer {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let addr = format!("127.0.0.1:{port}");
        wait_until("the file server", Duration::from_secs(20), || {
            http_get(&addr, "/").is_some()
        });
        FileServer { child, addr }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn api_key(cluster: &Cluster, name: &str) -> String {
    let out = Command::new(bin("broadcaster"))
        .args(["--redis-url", cluster.redis_url(), "api-keys", "add", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn call(addr: &str, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let a = http_request(
        addr,
        method,
        path,
        &headers,
        body.as_bytes(),
        Duration::from_secs(30),
    )
    .expect("the API answers");
    let v = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
    (a.status, v)
}

fn wait_job(addr: &str, key: &str, id: &str) -> Value {
    let mut job = Value::Null;
    wait_until("the job to end", PATIENCE, || {
        job = call(addr, "GET", &format!("/v1/jobs/{id}"), Some(key), "").1;
        matches!(
            job["state"].as_str(),
            Some("complete" | "incomplete" | "failed")
        )
    });
    job
}

#[test]
fn an_app_posts_a_url_and_gets_a_ladder() {
    let mut cluster = Cluster::start(2);
    let files = tempfile::tempdir().unwrap();
    tone_clip(&files.path().join("clip.mp4"), "640x360", 4, "aac");
    let inputs = FileServer::start(files.path());
    let key = api_key(&cluster, "acme");
    let other = api_key(&cluster, "globex");
    let open = cluster.serve_live(&["--api", "--api-allow-private-inputs", "--no-live"]);
    let api = open.http.as_str();

    let (code, doc) = call(api, "GET", "/v1/openapi.json", None, "");
    assert_eq!(code, 200);
    assert_eq!(doc["openapi"], "3.0.3");

    // No key, a wrong key, bad jobs: each refused with its reason.
    let (code, v) = call(api, "GET", "/v1/jobs", None, "");
    assert_eq!(code, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("api-keys add"), "{v}");
    assert_eq!(call(api, "GET", "/v1/jobs", Some("cwa_nope"), "").0, 401);
    for (body, why) in [
        ("not json", "a job is JSON"),
        (
            r#"{"input": "file:///etc/passwd"}"#,
            "only http:// and https://",
        ),
        (
            r#"{"input": "http://x/", "profiles": "P9999p"}"#,
            "profiles",
        ),
        (r#"{"input": "http://x/", "priority": 1}"#, "unknown field"),
    ] {
        let (code, v) = call(api, "POST", "/v1/jobs", Some(&key), body);
        assert_eq!(code, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(why), "{body}: {v}");
    }

    // A job: queued at once, then complete, with a ladder that plays.
    let url = format!("http://{}/clip.mp4", inputs.addr);
    let body = serde_json::json!({"input": url, "profiles": ["P144p30fps16x9", "P240p30fps16x9"]});
    let (code, created) = call(api, "POST", "/v1/jobs", Some(&key), &body.to_string());
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["state"], "queued", "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let job = wait_job(api, &key, &id);
    assert_eq!(job["state"], "complete", "{job}\n{}", cluster.logs());
    assert_eq!(job["segments"], 2, "{job}");
    assert_eq!(
        job["progress"],
        serde_json::json!({"segments": 2, "sent": 2, "transcoded": 2, "failed": 0}),
        "{job}"
    );
    let playback = job["playback_url"].as_str().unwrap();
    let path = playback.split_once(api).unwrap().1;
    let (code, master) = http_get(api, path).unwrap();
    assert_eq!(code, 200);
    assert!(
        master.contains("P144p30fps16x9") && master.contains("P240p30fps16x9"),
        "{master}"
    );
    let stream = job["stream"].as_str().unwrap();
    assert_eq!(cluster.playlist_seqs(stream, "P240p30fps16x9"), [0, 1]);

    // A job with a webhook: its first delivery is answered 500, the retry 200; the body is
    // the job, signed with the key's SHA-256 over "t.body".
    let (tx, rx) = std::sync::mpsc::channel::<(String, String)>();
    let tries = std::sync::atomic::AtomicUsize::new(0);
    let hook = webhook_with_head(move |head, body| {
        let _ = tx.send((head.to_string(), body.to_string()));
        if tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            (500, "{}".into())
        } else {
            (200, "{}".into())
        }
    });
    let body = serde_json::json!({"input": url, "profiles": "P144p30fps16x9", "webhook": hook});
    let (code, created) = call(api, "POST", "/v1/jobs", Some(&key), &body.to_string());
    assert_eq!(code, 201, "{created}");
    let hooked = created["id"].as_str().unwrap().to_string();
    let (head, sent) = rx.recv_timeout(PATIENCE).expect("the webhook is called");
    let (_, again) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("and called again");
    assert_eq!(sent, again);
    let v: Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(
        (v["id"].as_str(), v["state"].as_str()),
        (Some(hooked.as_str()), Some("complete"))
    );
    assert!(v.get("signing_key").is_none(), "{v}");
    let sig = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("castwork-signature: ")
                .map(String::from)
        })
        .expect("a signature header");
    let (t, mac) = sig.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    use hmac::Mac as _;
    let secret = castwork_protocol::secret::sha256_hex(&key);
    let mut want = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    want.update(format!("{t}.{sent}").as_bytes());
    assert_eq!(
        mac,
        hex::encode(want.finalize().into_bytes()),
        "the signature checks"
    );
    wait_until("the delivery recorded", PATIENCE, || {
        call(api, "GET", &format!("/v1/jobs/{hooked}"), Some(&key), "").1["webhook_result"]
            == "delivered (2 tries)"
    });

    // Listed for its account; another account sees neither the job nor the list.
    let (_, page) = call(api, "GET", "/v1/jobs?limit=1", Some(&key), "");
    assert_eq!(
        page["jobs"][0]["id"],
        hooked.as_str(),
        "newest first: {page}"
    );
    let next = page["next"].as_u64().expect("a next page");
    let (_, page) = call(
        api,
        "GET",
        &format!("/v1/jobs?limit=1&before={next}"),
        Some(&key),
        "",
    );
    assert_eq!(page["jobs"][0]["id"], id.as_str(), "{page}");
    assert_eq!(
        call(api, "GET", &format!("/v1/jobs/{id}"), Some(&other), "").0,
        404
    );
    let (_, theirs) = call(api, "GET", "/v1/jobs", Some(&other), "");
    assert_eq!(theirs["jobs"], serde_json::json!([]), "{theirs}");

    // Deleting: an ended job's outputs go at once; a running one is cancelled first.
    let (code, gone) = call(api, "DELETE", &format!("/v1/jobs/{id}"), Some(&key), "");
    assert_eq!(
        (code, gone["state"].as_str()),
        (200, Some("deleted")),
        "{gone}"
    );
    assert_eq!(
        http_get(api, path).unwrap().0,
        404,
        "its master playlist is gone"
    );
    tone_clip(&files.path().join("long.mp4"), "640x360", 20, "aac");
    let body = serde_json::json!({"input": format!("http://{}/long.mp4", inputs.addr)});
    let (_, created) = call(api, "POST", "/v1/jobs", Some(&key), &body.to_string());
    let running = created["id"].as_str().unwrap().to_string();
    wait_until("the long job to start", PATIENCE, || {
        call(api, "GET", &format!("/v1/jobs/{running}"), Some(&key), "").1["state"] == "transcoding"
    });
    let (code, v) = call(
        api,
        "DELETE",
        &format!("/v1/jobs/{running}"),
        Some(&key),
        "",
    );
    assert_eq!(code, 202, "{v}");
    let mut job = Value::Null;
    for _ in 0..60 {
        job = call(api, "GET", &format!("/v1/jobs/{running}"), Some(&key), "").1;
        if job["state"] == "deleted" {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(job["state"], "deleted", "{job}\n{}", cluster.logs());
    let stream = job["stream"].as_str().unwrap();
    assert!(
        http_get(api, &format!("/streams/{stream}/index.m3u8"))
            .unwrap()
            .0
            == 404,
        "no playlist of a deleted job"
    );

    // A server that fetches only from the public internet refuses this machine's own
    // addresses: the job fails saying so, and nothing is fetched.
    let strict = cluster.serve_live(&["--api", "--no-live"]);
    for target in [
        url.clone(),
        format!("http://{}/", cluster.orchestrator_addr),
    ] {
        let body = serde_json::json!({ "input": target });
        let (code, created) = call(
            &strict.http,
            "POST",
            "/v1/jobs",
            Some(&key),
            &body.to_string(),
        );
        assert_eq!(code, 201, "{created}");
        let job = wait_job(&strict.http, &key, created["id"].as_str().unwrap());
        assert_eq!(job["state"], "failed", "{job}");
        assert!(
            job["error"]
                .as_str()
                .unwrap()
                .contains("not on the public internet"),
            "{job}"
        );
    }
}

/// Schemathesis (PyPI, installed by scripts/test.sh into target/schemathesis) against the
/// running API and its own description: every answer matches the described status codes,
/// content types and schemas, requests the description forbids are refused, no request makes
/// a server error, and no route answers without a key. (Its "schema-valid requests are
/// accepted" check is left out: a job's URL and ladder are checked beyond what a schema can
/// say, such as a preset name that exists.)
/// With `--api-orch-addr` the API server runs its jobs at other orchestrators over HTTP,
/// holding no broker or store credentials of theirs: the job's renditions are copied into
/// the server's own store, where it plays them from. The first orchestrator's only worker
/// says no segment can be done (alone, its word is final); the job moves to the other,
/// priced within the server's maximum and paid from the key holder's account there, and
/// completes. A third, priced above the maximum, is never chosen.
#[test]
fn jobs_run_at_orchestrators_over_http_and_move_when_one_fails() {
    let mut front = Cluster::start(0);
    let mut failing = Cluster::start(0);
    failing.add(
        "worker",
        &["--worker-id", "liar", "--test-only-lie-permanent"],
    );
    // Priced: drawn only after the free one.
    let spare = Cluster::start_with(1, &["--price-per-unit", "1"], Vec::new());
    spare.orchestrator_cli(&["ledger", "credit", "api", "1000000000000"]);
    let dear = Cluster::start_with(1, &["--price-per-unit", "1000"], Vec::new());
    let keys = [&failing, &spare, &dear].map(|c| {
        c.orchestrator_cli(&["broadcasters", "add", "api"])
            .trim()
            .to_string()
    });
    let addrs = [&failing, &spare, &dear].map(|c| format!("http://{}", c.orchestrator_addr));
    let files = tempfile::tempdir().unwrap();
    tone_clip(&files.path().join("clip.mp4"), "640x360", 4, "aac");
    let inputs = FileServer::start(files.path());
    let key = api_key(&front, "acme");
    let open = front.serve_live(&[
        "--api",
        "--api-allow-private-inputs",
        "--no-live",
        "--api-orch-addr",
        &addrs.join(","),
        "--api-orch-key",
        &keys.join(","),
        "--api-max-price-per-unit",
        "10",
    ]);
    let api = open.http.as_str();
    let url = format!("http://{}/clip.mp4", inputs.addr);
    let body = serde_json::json!({"input": url, "profiles": ["P144p30fps16x9"]});
    let (code, created) = call(api, "POST", "/v1/jobs", Some(&key), &body.to_string());
    assert_eq!(code, 201, "{created}");
    let job = wait_job(api, &key, created["id"].as_str().unwrap());
    assert_eq!(job["state"], "complete", "{job}\n{}", front.logs());
    let stream = job["stream"].as_str().unwrap();
    // Done at the spare, ended with nothing done at the first, copied into the server's
    // store.
    assert_eq!(spare.status(stream)["state"], "complete");
    wait_until("the first ended", Duration::from_secs(30), || {
        ended_undone(&failing.status(stream))
    });
    assert!(front
        .storage_dir()
        .join(format!("streams/{stream}/index.m3u8"))
        .is_file());
    let (code, _) = http_get(&dear.orchestrator_addr, &format!("/streams/{stream}")).unwrap();
    assert_eq!(code, 404, "the dear one never had the job");
    let playback = job["playback_url"].as_str().unwrap();
    let (code, master) = http_get(api, playback.split_once(api).unwrap().1).unwrap();
    assert_eq!(code, 200, "{master}");
    let (code, media) =
        http_get(api, &format!("/streams/{stream}/P144p30fps16x9/index.m3u8")).unwrap();
    assert_eq!(code, 200, "{media}");
    assert_eq!(media.matches("#EXTINF").count(), 2, "{media}");
    output_check::assert_output_ok(&front.storage_dir(), stream, &files.path().join("clip.mp4"));
}

#[test]
fn the_api_keeps_to_its_openapi_description() {
    let st = workspace().join("target/schemathesis/bin/st");
    assert!(
        st.exists(),
        "{} is missing: run scripts/test.sh, or python3 -m venv target/schemathesis && \
         target/schemathesis/bin/pip install schemathesis==4.32.5",
        st.display()
    );
    let mut cluster = Cluster::start(0);
    let key = api_key(&cluster, "fuzz");
    let api = cluster.serve_live(&["--api", "--no-live"]);
    let out = Command::new(&st)
        .args(["run", &format!("http://{}/v1/openapi.json", api.http)])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "50", "--seed", "1"])
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Tested: 4"),
        "every operation was tested: {text}"
    );
}
