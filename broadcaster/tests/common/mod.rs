//! Checks shared by the broadcaster's tests: what `ffprobe` sees in a file, and whether the
//! `ffmpeg` CLI decodes it alone without a complaint.

use std::path::Path;
use std::process::Command;

/// The codec names of a file's streams, sorted, as `ffprobe` lists them.
pub fn codecs(path: &Path) -> Vec<String> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe is installed");
    assert!(out.status.success(), "ffprobe {}", path.display());
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    names.sort();
    names
}

/// Decodes a file alone, failing on any error message; returns its video frame count.
///
/// `-enc_time_base -1` keeps the decoded frames' millisecond timestamps: by default the CLI
/// rounds them to 1/30 s, which collides ("non monotonically increasing dts") when the
/// audio starts about half a frame before the video, as in FFmpeg's own `-f segment` output
/// of the same source.
pub fn decode(path: &Path) -> u64 {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-enc_time_base", "-1", "-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
