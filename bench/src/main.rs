//! `castwork-bench`: Castwork's benchmark suite. Each figure is measured against its
//! baseline in the same run, runs alternating A B A B ..., and printed as a Markdown table of
//! medians with min and max (timings on shared machines are noisy; ratios are not).

mod segment;
mod stats;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use castwork_media::TranscodeOptions;
use castwork_protocol::profile::{parse_profiles, DEFAULT_PRESETS};
use clap::{Parser, Subcommand};

/// Castwork benchmark suite: figures as ratios against their baselines in the same run.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The worker's transcode of one 2 s segment (decode + every rung + mux) and its peak
    /// memory, against the `ffmpeg` CLI doing the same in one process (`split` filter).
    Segment {
        /// Input clips (each is cut like the broadcaster does and its second segment used).
        /// Default: testdata/bikes.mp4 (a camera clip, scripts/fetch-testdata.sh) and a
        /// generated 1080p30 clip.
        #[arg(long = "input", env = "BENCH_INPUTS", value_delimiter = ',')]
        inputs: Vec<PathBuf>,

        /// Comma-separated Livepeer presets of the ladder, at the presets' own bitrates.
        #[arg(long, env = "PROFILES", default_value = DEFAULT_PRESETS)]
        profiles: String,

        /// libx264 preset on both sides.
        #[arg(long, env = "X264_PRESET", default_value = "veryfast")]
        preset: String,

        /// Threads per encoder and for the decoder on both sides; 0 uses every core (one
        /// worker slot on this machine).
        #[arg(long, env = "WORKER_THREADS", default_value_t = 0)]
        threads: usize,

        /// Timed runs of each side (after one warm-up each).
        #[arg(long, env = "BENCH_RUNS", default_value_t = 5)]
        runs: usize,
    },
    /// (Used by `segment`.) Transcodes one segment and prints this process's peak RSS.
    #[command(hide = true)]
    TranscodeOnce {
        segment: PathBuf,
        #[arg(long)]
        profiles: String,
        #[arg(long)]
        preset: String,
        #[arg(long)]
        threads: usize,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn options(preset: &str, threads: usize) -> TranscodeOptions {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    TranscodeOptions {
        preset: preset.to_string(),
        threads: if threads == 0 { cores } else { threads },
        ..TranscodeOptions::default()
    }
}

/// A synthetic 10 s 1080p30 clip with a keyframe every 2 s and AAC audio.
fn synthetic_1080p(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("synthetic-1080p30.mp4");
    let ok = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=30",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "10",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "60",
            "-keyint_min",
            "60",
        ])
        .args(["-sc_threshold", "0", "-pix_fmt", "yuv420p", "-c:a", "aac"])
        .arg(&path)
        .status()
        .context("running ffmpeg to make the synthetic clip")?;
    anyhow::ensure!(ok.success(), "ffmpeg could not make the synthetic clip");
    Ok(path)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    castwork_media::init();
    match cli.command {
        Cmd::TranscodeOnce {
            segment,
            profiles,
            preset,
            threads,
        } => segment::transcode_once(
            &segment,
            &parse_profiles(&profiles)?,
            &options(&preset, threads),
        ),
        Cmd::Segment {
            inputs,
            profiles,
            preset,
            threads,
            runs,
        } => {
            let ladder = parse_profiles(&profiles)?;
            let opts = options(&preset, threads);
            let work = tempfile::tempdir()?;
            let inputs = if inputs.is_empty() {
                let mut v = Vec::new();
                let bikes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/bikes.mp4");
                if bikes.exists() {
                    v.push(bikes);
                } else {
                    eprintln!("testdata/bikes.mp4 is missing (scripts/fetch-testdata.sh): skipped");
                }
                v.push(synthetic_1080p(work.path())?);
                v
            } else {
                inputs
            };
            let mut figures = Vec::new();
            for (i, input) in inputs.iter().enumerate() {
                let dir = work.path().join(format!("input-{i}"));
                std::fs::create_dir_all(&dir)?;
                let p = segment::prepare(input, &ladder, &dir)?;
                figures.push(segment::time_transcode(&p, &opts, runs)?);
                figures.push(segment::peak_memory(&p, &opts, &profiles, runs.min(3))?);
            }
            println!(
                "ladder {profiles}, libx264 preset {}, {} threads per encoder and decoder, {runs} runs per side\n",
                opts.preset, opts.threads
            );
            println!("{}", stats::HEADER);
            for f in &figures {
                println!("{}", f.row());
            }
            Ok(())
        }
    }
}
