//! The benchmarks run end to end on a small clip and print their table rows (no timing is
//! asserted: timings on shared machines are noisy).

use std::path::{Path, PathBuf};
use std::process::Command;

fn small_clip(dir: &Path) -> PathBuf {
    let clip = dir.join("small.mp4");
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x240:rate=30")
        .args(["-f", "lavfi", "-i", "sine", "-t", "5", "-c:v", "libx264"])
        .args(["-g", "60", "-pix_fmt", "yuv420p", "-c:a", "aac"])
        .arg(&clip)
        .status()
        .unwrap();
    assert!(ok.success());
    clip
}

/// Runs `castwork-bench ARGS` and returns what it printed, failing on an error.
fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_castwork-bench"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Runs `castwork-bench ARGS --input CLIP` and returns the table rows of the clip.
fn rows(args: &[&str], clip: &Path) -> Vec<String> {
    let clip = clip.to_string_lossy();
    let mut all = args.to_vec();
    all.extend([
        "--runs",
        "1",
        "--profiles",
        "P144p30fps16x9",
        "--input",
        &clip,
    ]);
    let text = bench(&all);
    let rows: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("| small.mp4"))
        .map(String::from)
        .collect();
    assert!(
        rows.iter().all(|r| r.contains("**")),
        "each row has a ratio: {text}"
    );
    rows
}

#[test]
fn segment_benchmark_prints_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let clip = small_clip(dir.path());
    assert_eq!(rows(&["segment"], &clip).len(), 2);
}

#[test]
fn end_to_end_benchmark_runs_a_cluster_of_this_build() {
    let dir = tempfile::tempdir().unwrap();
    let clip = small_clip(dir.path());
    let rows = rows(&["e2e", "--workers", "1"], &clip);
    assert_eq!(rows.len(), 1);
    assert!(rows[0].contains("push --wait"), "{rows:?}");
}

#[test]
fn control_plane_benchmark_completes_a_stream_of_noop_jobs() {
    let text = bench(&[
        "control-plane",
        "--segments",
        "40",
        "--workers",
        "1",
        "--slots",
        "2",
    ]);
    assert!(text.contains("| 1 | 40 |"), "{text}");
}
