//! `broadcaster`: push video into a Castwork cluster and serve its HLS playback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use castwork_broadcaster::{push, serve, PushRequest};
use castwork_cluster::{http, shutdown_token, telemetry, ServiceArgs, Storage};
use castwork_protocol::profile::{parse_profiles, parse_transcoding_options, DEFAULT_PRESETS};
use clap::{Parser, Subcommand};

/// Castwork broadcaster: pushes video files into a Castwork cluster and serves the
/// transcoded adaptive-bitrate HLS playback.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Cut a video file into segments and send it for transcoding.
    Push {
        /// The video file (anything FFmpeg can decode).
        file: PathBuf,

        /// Stream name: letters, digits, '_', '-' and '.'; it names the playback URL.
        #[arg(long, env = "STREAM_NAME")]
        stream: String,

        /// Comma-separated Livepeer presets for the rendition ladder.
        #[arg(long, env = "PROFILES", default_value = DEFAULT_PRESETS, conflicts_with = "transcoding_options")]
        profiles: String,

        /// A Livepeer `transcodingOptions` JSON file describing the ladder instead of presets.
        #[arg(long, env = "TRANSCODING_OPTIONS")]
        transcoding_options: Option<PathBuf>,

        /// Wait until every rendition of every segment is done; exit non-zero naming the
        /// segments that failed.
        #[arg(long, env = "PUSH_WAIT")]
        wait: bool,

        /// Target segment duration in seconds; segments start at the first keyframe after it.
        #[arg(long, env = "SEGMENT_SECS", default_value_t = 2.0)]
        segment_secs: f64,

        /// Base URL of `broadcaster serve`, used to print the playback URL.
        #[arg(long, env = "PLAYBACK_URL", default_value = "http://127.0.0.1:8935")]
        playback_url: String,

        /// Seconds to wait for an orchestrator to admit the stream.
        #[arg(long, env = "ADMIT_TIMEOUT_SECS", default_value_t = 30)]
        admit_timeout_secs: u64,
    },
    /// Serve HLS playback: GET /streams/NAME/index.m3u8, media playlists and segments.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "BROADCASTER_HTTP_ADDR", default_value = "127.0.0.1:8935")]
        http_addr: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(&cli.service.log);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let storage = Storage::from_url(&cli.service.storage_url)?;
    match cli.command {
        Command::Serve { http_addr } => {
            let shutdown = shutdown_token();
            let addr =
                http::serve(http_addr, serve::router(storage.clone()), shutdown.clone()).await?;
            tracing::info!(%addr, storage = %storage, "serving HLS playback at http://{addr}/streams/NAME/index.m3u8");
            shutdown.cancelled().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Push {
            file,
            stream,
            profiles,
            transcoding_options,
            wait,
            segment_secs,
            playback_url,
            admit_timeout_secs,
        } => {
            let ladder = match &transcoding_options {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                    parse_transcoding_options(&text)?
                }
                None => parse_profiles(&profiles)?,
            };
            if !(0.5..=60.0).contains(&segment_secs) {
                anyhow::bail!("--segment-secs must be between 0.5 and 60");
            }
            let local_dir = cli
                .service
                .storage_url
                .strip_prefix("file://")
                .map(PathBuf::from);
            let outcome = push(
                PushRequest {
                    input: file,
                    stream: stream.clone(),
                    ladder,
                    segment_secs,
                    wait,
                    amqp_url: cli.service.amqp_url,
                    storage,
                    playback_url: playback_url.clone(),
                    local_dir: local_dir.clone(),
                    admit_timeout: Duration::from_secs(admit_timeout_secs),
                },
                shutdown_token(),
            )
            .await?;
            if !wait {
                println!("queued {} segments of stream {stream}", outcome.segments);
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(master) = &outcome.master_playlist {
                println!("playback: {}/{master}", playback_url.trim_end_matches('/'));
                if let Some(dir) = &local_dir {
                    println!("output: {}", dir.join(master).display());
                }
            }
            if outcome.failed.is_empty() {
                println!(
                    "done: {} segments, every rendition transcoded",
                    outcome.segments
                );
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "{} of {} segments failed:",
                    outcome.failed.len(),
                    outcome.segments
                );
                for (seq, message) in &outcome.failed {
                    eprintln!("  segment {seq}: {message}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
