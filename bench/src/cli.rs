//! The `ffmpeg` CLI baseline: the arguments that transcode an input into a ladder the way a
//! worker does, in one process (one decode, `split`, a scale and frame-rate cut per rung,
//! libx264 with the worker's rate control).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};

use castwork_media::TranscodeOptions;
use castwork_protocol::Rung;

/// Arguments for `ffmpeg`: `input` into every rung, a keyframe every `gop` frames,
/// the first audio stream through `audio` (`copy` or an encoder), rung `i` written to
/// `{out}-{i}.ts`.
pub fn ladder_args(
    input: &Path,
    rungs: &[Rung],
    opts: &TranscodeOptions,
    gop: u64,
    audio: &str,
    out: &Path,
) -> Vec<String> {
    let n = rungs.len();
    let mut graph = format!(
        "[0:v]split={n}{}",
        (0..n).map(|i| format!("[s{i}]")).collect::<String>()
    );
    for (i, r) in rungs.iter().enumerate() {
        let fps = r
            .drop_to_fps
            .map_or(String::new(), |f| format!("fps={}/{},", f.num, f.den));
        graph.push_str(&format!(
            ";[s{i}]{fps}scale=w={}:h={}:flags=bicubic:out_range=tv,setsar=1,format=yuv420p[o{i}]",
            r.width, r.height
        ));
    }
    let threads = opts.threads.to_string();
    let mut a: Vec<String> = ["-v", "error", "-y", "-threads", &threads, "-i"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(input.display().to_string());
    a.extend(["-filter_complex".to_string(), graph]);
    for (i, r) in rungs.iter().enumerate() {
        let kbit = r.bitrate / 1000;
        a.extend([
            "-map".to_string(),
            format!("[o{i}]"),
            "-map".into(),
            "0:a:0?".into(),
            "-c:a".into(),
            audio.into(),
            "-c:v".into(),
            "libx264".into(),
            "-preset".into(),
            opts.preset.clone(),
            "-profile:v".into(),
            r.profile.x264_name().into(),
            "-threads".into(),
            threads.clone(),
            "-b:v".into(),
            format!("{kbit}k"),
            "-maxrate".into(),
            format!("{}k", kbit * 6 / 5),
            "-bufsize".into(),
            format!("{}k", kbit * 2),
            "-g".into(),
            gop.to_string(),
            "-forced-idr".into(),
            "1".into(),
            "-x264-params".into(),
            "scenecut=0:open-gop=0".into(),
        ]);
        if !r.profile.allows_b_frames() {
            a.extend(["-bf".to_string(), "0".into()]);
        }
        a.extend([
            "-f".to_string(),
            "mpegts".into(),
            format!("{}-{i}.ts", out.display()),
        ]);
    }
    a
}

/// Runs `ffmpeg` with `extra` global options before `args`; returns what it printed on
/// stderr.
pub fn run(args: &[String], extra: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ffmpeg")
        .args(extra)
        .args(args)
        .output()
        .context("running ffmpeg")?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        bail!("ffmpeg failed: {err}");
    }
    Ok(err)
}
