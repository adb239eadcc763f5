//! The `ffmpeg` CLI baseline: the arguments that transcode an input into a ladder the way a
//! worker does, in one process (one decode, `split`, a scale and frame-rate cut per rung,
//! libx264 with the worker's rate control).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};

use castwork_media::TranscodeOptions;
use castwork_protocol::Rung;

/// Where the CLI baseline runs: as the worker's CPU path, or on NVIDIA device `device`
/// (`-hwaccel cuda`, `scale_cuda`, `hwdownload`) encoding with libx264 or, `nvenc`,
/// `h264_nvenc`: the worker's `nvdec` and `nvenc` paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hw {
    Cpu,
    Cuda { device: u32, nvenc: bool },
}

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
    ladder_args_on(Hw::Cpu, input, rungs, opts, gop, audio, out)
}

/// [`ladder_args`] on the path `hw`.
pub fn ladder_args_on(
    hw: Hw,
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
        let scale = match hw {
            Hw::Cpu => format!(
                "scale=w={}:h={}:flags=bicubic:out_range=tv,setsar=1,format=yuv420p",
                r.width, r.height
            ),
            Hw::Cuda { .. } => format!(
                "scale_cuda=w={}:h={}:interp_algo=bicubic:format=yuv420p,hwdownload,\
                 format=yuv420p,setsar=1",
                r.width, r.height
            ),
        };
        graph.push_str(&format!(";[s{i}]{fps}{scale}[o{i}]"));
    }
    let threads = opts.threads.to_string();
    let mut a: Vec<String> = ["-v", "error", "-y", "-threads", &threads]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Hw::Cuda { device, .. } = hw {
        a.extend(
            [
                "-hwaccel",
                "cuda",
                "-hwaccel_output_format",
                "cuda",
                "-hwaccel_device",
                &device.to_string(),
            ]
            .map(String::from),
        );
    }
    a.push("-i".into());
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
        ]);
        match hw {
            Hw::Cuda {
                device,
                nvenc: true,
            } => a.extend([
                "-c:v".to_string(),
                "h264_nvenc".into(),
                "-gpu".into(),
                device.to_string(),
                "-preset".into(),
                "p4".into(),
                "-rc".into(),
                "vbr".into(),
                "-no-scenecut".into(),
                "1".into(),
                "-strict_gop".into(),
                "1".into(),
                // As the worker: no B-frames from NVENC (see castwork_media's encoder setup).
                "-bf".into(),
                "0".into(),
            ]),
            _ => a.extend([
                "-c:v".to_string(),
                "libx264".into(),
                "-preset".into(),
                opts.preset.clone(),
                "-x264-params".into(),
                "scenecut=0:open-gop=0".into(),
            ]),
        }
        a.extend([
            "-profile:v".to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use castwork_protocol::{H264Profile, Rational};

    #[test]
    fn the_gpu_baseline_decodes_and_scales_on_the_device() {
        let rung = Rung {
            name: "r".into(),
            width: 640,
            height: 360,
            bitrate: 1_000_000,
            max_fps: Rational::new(30, 1),
            drop_to_fps: None,
            gop_secs: None,
            profile: H264Profile::High,
        };
        let opts = TranscodeOptions::default();
        let args = |hw| {
            ladder_args_on(
                hw,
                Path::new("in.ts"),
                std::slice::from_ref(&rung),
                &opts,
                60,
                "copy",
                Path::new("o"),
            )
            .join(" ")
        };
        let cpu = args(Hw::Cpu);
        assert!(
            cpu.contains("scale=w=640:h=360")
                && cpu.contains("libx264")
                && !cpu.contains("hwaccel")
        );
        let hybrid = args(Hw::Cuda {
            device: 1,
            nvenc: false,
        });
        assert!(
            hybrid.contains("-hwaccel cuda -hwaccel_output_format cuda -hwaccel_device 1 -i in.ts"),
            "{hybrid}"
        );
        assert!(
            hybrid.contains("scale_cuda=w=640:h=360")
                && hybrid.contains("hwdownload")
                && hybrid.contains("libx264")
        );
        let nvenc = args(Hw::Cuda {
            device: 1,
            nvenc: true,
        });
        assert!(
            nvenc.contains("-c:v h264_nvenc -gpu 1") && !nvenc.contains("libx264"),
            "{nvenc}"
        );
    }
}
