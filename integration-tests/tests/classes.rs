//! Capability classes on a machine without a GPU (issue 16): a worker of a GPU class that
//! runs the CPU pipeline (`--no-gpu-pipeline`) stands in for a GPU worker, to prove the
//! queues, the routing and the fallback. `--class` takes only known classes, a GPU class
//! with no device that passes its self-test does not start, on-demand work that prefers the
//! CPU goes to the GPU class when only that class has workers, and jobs left in a class's
//! queue when its last worker dies move to a class that has workers.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const RUNGS: &str = "P720p30fps16x9,P360p30fps16x9";
const PATIENCE: Duration = Duration::from_secs(120);

fn routed(cluster: &Cluster, class: &str) -> f64 {
    metric(
        &cluster.orchestrator_addr,
        &format!("castwork_orchestrator_jobs_routed_total{{class=\"{class}\"}}"),
    )
}

#[test]
fn a_worker_names_a_known_class_and_a_gpu_class_needs_a_device() {
    let out = Command::new(bin("worker"))
        .args(["--class", "gpu"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("[possible values: cpu, nvdec, nvenc]"),
        "{err}"
    );

    if std::path::Path::new("/dev/nvidiactl").exists() {
        return; // a GPU machine: the self-test may well pass there
    }
    let cluster = Cluster::start(0);
    let out = Command::new(bin("worker"))
        .args(["--amqp-url", &cluster.amqp_url, "--class", "nvdec"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--class nvdec: no NVIDIA device passed the self-test")
            && err.contains("--no-gpu-pipeline"),
        "{err}"
    );
}

#[test]
fn jobs_go_to_the_class_that_has_workers_and_move_when_its_workers_die() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(0);
    cluster.add(
        "worker",
        &["--worker-id", "g0", "--class", "nvdec", "--no-gpu-pipeline"],
    );
    wait_until("the nvdec worker's heartbeat", PATIENCE, || {
        cluster.workers().iter().any(|w| w["class"] == "nvdec")
    });

    // On-demand work prefers the CPU (--route-vod cpu,nvdec,nvenc), but only an nvdec
    // worker runs: its queue gets the jobs, and the stream completes.
    let short = clip(dir.path(), 4);
    let stream = stream_name("gpu-only");
    let out = cluster.push(&short, &stream, &["--profiles", "P144p30fps16x9"]);
    assert!(out.status.success(), "{out:?}\n{}", cluster.logs());
    cluster.check_output(&short, &stream);
    assert!(routed(&cluster, "nvdec") >= 2.0, "{}", cluster.logs());
    assert_eq!(routed(&cluster, "cpu"), 0.0);

    // The nvdec worker dies with jobs of a longer stream waiting in its queue; a CPU worker
    // comes: the waiting jobs move to the CPU's queue and the stream completes.
    let long = dir.path().join("long.mp4");
    tone_clip(&long, "1280x720", 16, "aac");
    let stream = stream_name("stranded");
    let push = cluster.push_in_background(&long, &stream, &["--profiles", RUNGS]);
    let queue = "jobs.vod.nvdec";
    wait_until("jobs waiting for the nvdec worker", PATIENCE, || {
        cluster.queue_depth(queue) >= 3
    });
    let gpu = cluster.pids("worker")[0];
    cluster.signal(gpu, "KILL");
    let waiting = cluster.queue_depth(queue);
    eprintln!("killed the nvdec worker with {waiting} jobs waiting in {queue}");
    assert!(waiting >= 1, "no job was waiting when the worker died");
    cluster.add("worker", &["--worker-id", "c0"]);
    let (ok, log) = finish(push, PATIENCE);
    assert!(ok, "{log}\n{}", cluster.logs());
    let v = cluster.wait_complete(&stream, PATIENCE);
    assert_eq!(v["state"], "complete", "{v}");
    let total = v["segments"]["total"].as_u64().unwrap();
    for rung in RUNGS.split(',') {
        assert_eq!(
            cluster.playlist_seqs(&stream, rung),
            (0..total).collect::<Vec<_>>(),
            "{rung}"
        );
    }
    let moved = metric(
        &cluster.orchestrator_addr,
        "castwork_orchestrator_jobs_moved_total{from=\"nvdec\",to=\"cpu\"}",
    );
    assert!(moved >= 1.0, "no job moved: {}", cluster.logs());
    // Nothing stays stranded: the killed worker's own jobs, given back when its connection
    // died, may outlive their segments (redone elsewhere once overdue); the next sweeps
    // move them too, and their workers drop them as stale.
    wait_until("the nvdec queue to drain", PATIENCE, || {
        cluster.queue_depth(queue) == 0
    });
    assert!(cluster
        .logs()
        .contains("jobs waited in a queue nobody reads: moved to a class with workers"));
}
