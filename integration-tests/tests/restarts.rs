//! Services restarted under a running stream: RabbitMQ stopped and started, Redis SIGKILLed
//! (append-only file, fsync always) and started again. The stream completes exactly once.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    clip, http_get, output_check::assert_output_ok, stream_name, wait_until, Cluster, RabbitNode,
    RedisNode,
};

const RUNG: &str = "P240p30fps16x9";

fn done(cluster: &Cluster, stream: &str) -> u64 {
    http_get(&cluster.orchestrator_addr, &format!("/streams/{stream}"))
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["segments"]["done"].as_u64())
        .unwrap_or(0)
}

fn finish(cluster: &Cluster, mut push: std::process::Child, stream: &str, input: &Path) {
    let status = push.wait().unwrap();
    let out = std::fs::read_to_string(cluster.dir.path().join(format!("push-{stream}.out")))
        .unwrap_or_default();
    assert!(status.success(), "push failed: {out}\n{}", cluster.logs());
    let s = cluster.wait_complete(stream, Duration::from_secs(60));
    assert_eq!(s["segments"]["total"], 10, "{s}");
    assert_eq!(s["segments"]["done"], 10, "{s}");
    assert_eq!(
        cluster.playlist_seqs(stream, RUNG),
        (0..10).collect::<Vec<u64>>(),
        "exactly once"
    );
    assert_output_ok(&cluster.storage_dir(), stream, input);
}

#[test]
fn rabbitmq_stopped_and_started_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 20);
    let node = RabbitNode::start();
    let cluster = Cluster::start_with(2, &[], vec![("AMQP_URL".into(), node.url())]);
    let stream = stream_name("broker");
    let push = cluster.push_in_background(&input, &stream, &["--profiles", RUNG]);
    wait_until("two accepted segments", Duration::from_secs(120), || {
        done(&cluster, &stream) >= 2
    });
    node.ctl(&["stop_app"]);
    let before = done(&cluster, &stream);
    std::thread::sleep(Duration::from_secs(3));
    node.ctl(&["start_app"]);
    let back = Instant::now();
    wait_until(
        "progress after the restart",
        Duration::from_secs(120),
        || done(&cluster, &stream) > before || done(&cluster, &stream) >= 10,
    );
    println!(
        "broker restart: first segment accepted {:.1} s after RabbitMQ came back",
        back.elapsed().as_secs_f64()
    );
    finish(&cluster, push, &stream, &input);
}

#[test]
fn redis_killed_and_restarted_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path(), 20);
    let mut redis = RedisNode::start();
    let cluster = Cluster::start_with(2, &[], vec![("REDIS_URL".into(), redis.url())]);
    let stream = stream_name("redis");
    let push = cluster.push_in_background(&input, &stream, &["--profiles", RUNG]);
    wait_until("two accepted segments", Duration::from_secs(120), || {
        done(&cluster, &stream) >= 2
    });
    redis.kill();
    std::thread::sleep(Duration::from_secs(2));
    redis.restart();
    finish(&cluster, push, &stream, &input);
}
