//! Helpers shared by the media tests: the `ffmpeg` CLI, the clips in testdata/, and cutting
//! a file into 2 s source segments.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use castwork_media::{probe, segment_file, CutSegment, ProbedInput, SegmentOptions};

/// Runs the `ffmpeg` CLI (errors only, overwriting), asserting success.
pub fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .status()
        .unwrap();
    assert!(ok.success(), "ffmpeg {args:?}");
}

/// A clip of testdata/, which scripts/fetch-testdata.sh fetches.
pub fn testdata(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-testdata.sh",
        p.display()
    );
    p
}

/// Probes `input` and cuts it into 2 s source segments under `dir`.
pub fn cut(input: &Path, dir: &Path) -> (ProbedInput, Vec<CutSegment>) {
    let probed = probe(input).unwrap();
    let mut segs = Vec::new();
    let opts = SegmentOptions::new(2_000_000, dir.to_path_buf());
    segment_file(input, &probed, &opts, |s| {
        segs.push(s);
        Ok(())
    })
    .unwrap();
    (probed, segs)
}
