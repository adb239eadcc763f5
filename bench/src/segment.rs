//! The worker's transcode of one 2 s source segment (one decode, every rung, mux) against
//! the `ffmpeg` CLI doing the same in one process (`split` filter), same segment, ladder,
//! preset, rate control and threads; and the peak memory of each.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};
use castwork_media::{transcode_segment, CutSegment, SegmentOptions, TranscodeOptions};
use castwork_protocol::{plan_ladder, Profile, Rung, SourceMetadata};

use crate::stats::Figure;

/// A source segment ready to transcode, with what a worker's job would carry.
pub struct Prepared {
    pub label: String,
    pub segment: PathBuf,
    pub metadata: SourceMetadata,
    pub rungs: Vec<Rung>,
}

/// Cuts `input` as the broadcaster does and keeps its second segment (the first may start
/// with a partial GOP).
pub fn prepare(input: &Path, ladder: &[Profile], dir: &Path) -> anyhow::Result<Prepared> {
    let probed = castwork_media::probe(input)?;
    let mut segments: Vec<CutSegment> = Vec::new();
    castwork_media::segment_file(
        input,
        &probed,
        &SegmentOptions::new(2_000_000, dir.to_path_buf()),
        |s| {
            segments.push(s);
            Ok(())
        },
    )?;
    let Some(seg) = segments.get(1).or(segments.first()) else {
        bail!("{} gave no segment", input.display());
    };
    let plan = plan_ladder(ladder, &probed.metadata);
    if plan.rungs.is_empty() {
        bail!("no rung of the ladder fits {}", input.display());
    }
    let label = input
        .file_name()
        .map_or_else(|| "input".into(), |n| n.to_string_lossy().to_string());
    eprintln!(
        "{label}: segment {} ({:.2} s, {} frames), rungs {}",
        seg.seq,
        seg.duration_us as f64 / 1e6,
        seg.frames,
        plan.rungs
            .iter()
            .map(|r| format!("{}x{}@{}k", r.width, r.height, r.bitrate / 1000))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Prepared {
        label,
        segment: seg.path.clone(),
        metadata: probed.metadata,
        rungs: plan.rungs,
    })
}

/// The `ffmpeg` CLI arguments that transcode `p` like a worker does: one IDR at the start of
/// the segment, audio copied; on the path `opts` names (its GPU target, if any).
pub fn ffmpeg_args(p: &Prepared, opts: &TranscodeOptions, out: &Path) -> Vec<String> {
    let hw = match &opts.gpu {
        None => crate::cli::Hw::Cpu,
        Some(g) => crate::cli::Hw::Cuda {
            device: g.device.index(),
            nvenc: g.nvenc,
        },
    };
    crate::cli::ladder_args_on(
        hw,
        &p.segment,
        &p.rungs,
        opts,
        100_000,
        "copy",
        &out.join("cli"),
    )
}

/// Times `runs` alternating transcodes (Castwork in process, then the CLI), after one
/// warm-up of each.
pub fn time_transcode(
    p: &Prepared,
    opts: &TranscodeOptions,
    runs: usize,
) -> anyhow::Result<Figure> {
    let out = tempfile::tempdir()?;
    let args = ffmpeg_args(p, opts, out.path());
    let ours = || -> anyhow::Result<f64> {
        let t = Instant::now();
        transcode_segment(&p.segment, &p.rungs, &p.metadata, out.path(), opts)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let cli = || -> anyhow::Result<f64> {
        let t = Instant::now();
        crate::cli::run(&args, &[])?;
        Ok(t.elapsed().as_secs_f64())
    };
    ours()?;
    cli()?;
    let path = match &opts.gpu {
        None => String::new(),
        Some(g) if g.nvenc => format!(", GPU {} NVDEC + scale_cuda + NVENC", g.device.index()),
        Some(g) => format!(", GPU {} NVDEC + scale_cuda + libx264", g.device.index()),
    };
    let mut fig = Figure {
        name: format!(
            "{}: one 2 s segment, decode + {} rungs + mux{path}",
            p.label,
            p.rungs.len()
        ),
        unit: "s",
        ours: Vec::new(),
        baseline: Vec::new(),
        target: "<= 1.00".into(),
    };
    for r in 0..runs {
        fig.ours.push(ours()?);
        fig.baseline.push(cli()?);
        eprintln!(
            "  run {}: castwork {:.3} s, ffmpeg {:.3} s",
            r + 1,
            fig.ours[r],
            fig.baseline[r]
        );
    }
    Ok(fig)
}

/// Peak resident memory (MiB) of a process that does one transcode: this program in its
/// `transcode-once` mode against `ffmpeg -benchmark`'s `maxrss`.
pub fn peak_memory(
    p: &Prepared,
    opts: &TranscodeOptions,
    profiles: &str,
    runs: usize,
) -> anyhow::Result<Figure> {
    let out = tempfile::tempdir()?;
    let mut args = ffmpeg_args(p, opts, out.path());
    // `-benchmark` prints `maxrss` at the info level.
    args[1] = "info".into();
    let exe = std::env::current_exe()?;
    let mut fig = Figure {
        name: format!("{}: peak RSS of one transcode (one slot)", p.label),
        unit: "MiB",
        ours: Vec::new(),
        baseline: Vec::new(),
        target: "<= 1.20".into(),
    };
    for _ in 0..runs.max(1) {
        let o = Command::new(&exe)
            .arg("transcode-once")
            .arg(&p.segment)
            .args(["--profiles", profiles, "--preset", &opts.preset])
            .args(["--threads", &opts.threads.to_string()])
            .output()?;
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        if !o.status.success() {
            bail!(
                "transcode-once failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        fig.ours
            .push(number_after(&text, "peak_rss_kib=")? / 1024.0);
        let err = crate::cli::run(&args, &["-benchmark"])?;
        fig.baseline.push(number_after(&err, "maxrss=")? / 1024.0);
    }
    Ok(fig)
}

fn number_after(text: &str, key: &str) -> anyhow::Result<f64> {
    let at = text
        .find(key)
        .with_context(|| format!("no {key} in {text:?}"))?;
    let digits: String = text[at + key.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(digits.parse()?)
}

/// The `transcode-once` mode: one transcode of a segment, then this process's peak RSS.
pub fn transcode_once(
    segment: &Path,
    ladder: &[Profile],
    opts: &TranscodeOptions,
) -> anyhow::Result<()> {
    let probed = castwork_media::probe(segment)?;
    let plan = plan_ladder(ladder, &probed.metadata);
    let out = tempfile::tempdir()?;
    transcode_segment(segment, &plan.rungs, &probed.metadata, out.path(), opts)?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
        .context("no VmHWM in /proc/self/status")?;
    println!("peak_rss_kib={kib}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_after_their_key() {
        assert_eq!(
            number_after("bench: maxrss=123456kB\n", "maxrss=").unwrap(),
            123456.0
        );
        assert!(number_after("nothing", "maxrss=").is_err());
    }
}
