//! The benchmark runs end to end on a small clip and prints its table (no timing is
//! asserted: timings on shared machines are noisy).

use std::process::Command;

#[test]
fn segment_benchmark_prints_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("small.mp4");
    let ok = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30",
        ])
        .args([
            "-f", "lavfi", "-i", "sine", "-t", "5", "-c:v", "libx264", "-g", "60",
        ])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac"])
        .arg(&clip)
        .status()
        .unwrap();
    assert!(ok.success());
    let out = Command::new(env!("CARGO_BIN_EXE_castwork-bench"))
        .args(["segment", "--runs", "1", "--profiles", "P144p30fps16x9"])
        .arg("--input")
        .arg(&clip)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("| small.mp4"))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows.iter().all(|r| r.contains("**")),
        "each row has a ratio: {text}"
    );
}
