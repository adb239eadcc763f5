//! `castwork-bench`: Castwork's benchmark suite. Each figure is measured against its
//! baseline in the same run, runs alternating A B A B ..., and printed as a Markdown table of
//! medians with min and max (timings on shared machines are noisy; ratios are not).

mod cli;
mod control;
mod e2e;
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

/// What every figure is measured with.
#[derive(clap::Args, Debug)]
struct Common {
    /// Input clips. Default: testdata/bikes.mp4 (a camera clip, scripts/fetch-testdata.sh)
    /// and a generated 1080p30 clip.
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

    /// Timed runs of each side, alternating (after one warm-up each where noted).
    #[arg(long, env = "BENCH_RUNS", default_value_t = 5)]
    runs: usize,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The worker's transcode of one 2 s segment (decode + every rung + mux) and its peak
    /// memory, against the `ffmpeg` CLI doing the same in one process (`split` filter).
    Segment {
        #[command(flatten)]
        common: Common,
    },
    /// `broadcaster push --wait` of each whole clip through a running cluster (an
    /// orchestrator and worker processes of this build, on a RabbitMQ vhost of its own)
    /// against the `ffmpeg` CLI transcoding the whole clip in one process.
    E2e {
        #[command(flatten)]
        common: Common,

        /// Worker processes of one slot each.
        #[arg(long, env = "BENCH_WORKERS", default_value_t = 2)]
        workers: usize,
    },
    /// Every figure above, in one table.
    All {
        #[command(flatten)]
        common: Common,

        /// Worker processes of one slot each.
        #[arg(long, env = "BENCH_WORKERS", default_value_t = 2)]
        workers: usize,
    },
    /// Control-plane throughput: segment jobs per second through orchestrator, workers,
    /// results and playlists, with the benchmark-only no-op transcode, for each worker
    /// count.
    ControlPlane {
        /// Segment jobs per run.
        #[arg(long, default_value_t = 2000)]
        segments: u64,

        /// Worker process counts to measure, one fresh cluster each.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
        workers: Vec<usize>,

        /// Slots per worker.
        #[arg(long, default_value_t = 4)]
        slots: usize,

        /// Rungs per job (each is one upload and one playlist entry).
        #[arg(long, default_value = DEFAULT_PRESETS)]
        profiles: String,
    },
    /// The worker's paths on an NVIDIA device: one 2 s segment through the CPU path, NVDEC +
    /// scale_cuda + libx264 (class nvdec) and NVDEC + scale_cuda + NVENC (class nvenc, where
    /// the card has encoders), each against the `ffmpeg` CLI on the same path (`-hwaccel
    /// cuda ... scale_cuda ... libx264|h264_nvenc`) in the same run. Segments per second are
    /// one over the seconds. Needs a device.
    Gpu {
        #[command(flatten)]
        common: Common,

        /// The CUDA device index.
        #[arg(long, env = "BENCH_GPU", default_value_t = 0)]
        device: u32,
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
        Cmd::ControlPlane {
            segments,
            workers,
            slots,
            profiles,
        } => {
            let mut points = Vec::new();
            for n in workers {
                eprintln!("{segments} segments, {n} workers of {slots} slots...");
                let p = control::measure(n, slots, segments, &profiles)?;
                eprintln!("  {:.2} s, {:.0} jobs/s", p.secs, p.jobs_per_sec());
                points.push(p);
            }
            println!("| worker processes | segment jobs | seconds | jobs/s |\n|---|---|---|---|");
            for p in &points {
                println!(
                    "| {} | {} | {:.2} | **{:.0}** |",
                    p.workers,
                    p.segments,
                    p.secs,
                    p.jobs_per_sec()
                );
            }
            Ok(())
        }
        Cmd::Segment { common } => report(&common, true, None),
        Cmd::Gpu { common, device } => gpu(&common, device),
        Cmd::E2e { common, workers } => report(&common, false, Some(workers)),
        Cmd::All { common, workers } => report(&common, true, Some(workers)),
    }
}

/// The inputs: those given, or bikes.mp4 and a generated 1080p30 clip.
fn inputs(common: &Common, work: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !common.inputs.is_empty() {
        return Ok(common.inputs.clone());
    }
    let mut v = Vec::new();
    let bikes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/bikes.mp4");
    if bikes.exists() {
        v.push(bikes);
    } else {
        eprintln!("testdata/bikes.mp4 is missing (scripts/fetch-testdata.sh): skipped");
    }
    v.push(synthetic_1080p(work)?);
    Ok(v)
}

/// The `gpu` figures: each input's segment on the CPU, the hybrid and the NVENC path.
fn gpu(common: &Common, device: u32) -> anyhow::Result<()> {
    let ladder = parse_profiles(&common.profiles)?;
    let cpu = options(&common.preset, common.threads);
    let cuda = std::sync::Arc::new(
        castwork_media::CudaDevice::open(device)
            .context("castwork-bench gpu needs an NVIDIA device and its driver")?,
    );
    let work = tempfile::tempdir()?;
    let mut figures = Vec::new();
    for (i, input) in inputs(common, work.path())?.iter().enumerate() {
        let dir = work.path().join(format!("input-{i}"));
        std::fs::create_dir_all(&dir)?;
        let p = segment::prepare(input, &ladder, &dir)?;
        figures.push(segment::time_transcode(&p, &cpu, common.runs)?);
        for nvenc in [false, true] {
            let opts = TranscodeOptions {
                gpu: Some(castwork_media::GpuTarget {
                    device: cuda.clone(),
                    nvenc,
                }),
                ..cpu.clone()
            };
            match segment::time_transcode(&p, &opts, common.runs) {
                Ok(f) => figures.push(f),
                // Data-centre cards (H100, A100) have no encoders.
                Err(e) if nvenc => eprintln!("NVENC path not measured: {e:#}"),
                Err(e) => return Err(e),
            }
        }
    }
    println!(
        "ladder {}, libx264 preset {}, {} threads, GPU {device}, {} runs per side\n",
        common.profiles, cpu.preset, cpu.threads, common.runs
    );
    println!("{}", stats::HEADER);
    for f in &figures {
        println!("{}", f.row());
    }
    Ok(())
}

/// Measures the chosen figures for every input and prints the table.
fn report(common: &Common, segments: bool, workers: Option<usize>) -> anyhow::Result<()> {
    let ladder = parse_profiles(&common.profiles)?;
    let opts = options(&common.preset, common.threads);
    let work = tempfile::tempdir()?;
    let inputs = inputs(common, work.path())?;
    let mut figures = Vec::new();
    if segments {
        for (i, input) in inputs.iter().enumerate() {
            let dir = work.path().join(format!("input-{i}"));
            std::fs::create_dir_all(&dir)?;
            let p = segment::prepare(input, &ladder, &dir)?;
            figures.push(segment::time_transcode(&p, &opts, common.runs)?);
            figures.push(segment::peak_memory(
                &p,
                &opts,
                &common.profiles,
                common.runs.min(3),
            )?);
        }
    }
    if let Some(n) = workers {
        let cluster = e2e::Cluster::start(n, &opts.preset)?;
        for input in &inputs {
            eprintln!("{}: end to end, {n} workers", input.display());
            figures.push(e2e::figure(&cluster, input, &ladder, &opts, common.runs)?);
        }
    }
    println!(
        "ladder {}, libx264 preset {}, {} threads per encoder and decoder, {} runs per side\n",
        common.profiles, opts.preset, opts.threads, common.runs
    );
    println!("{}", stats::HEADER);
    for f in &figures {
        println!("{}", f.row());
    }
    Ok(())
}
