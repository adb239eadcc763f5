//! End to end, on demand: `broadcaster push --wait` of a whole clip through a running
//! cluster (an orchestrator and worker processes of this build, on a RabbitMQ vhost of its
//! own) against the `ffmpeg` CLI transcoding the same ladder from the same file in one
//! process (one decode, `split`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use castwork_media::TranscodeOptions;
use castwork_protocol::{plan_ladder, Profile};

use crate::stats::Figure;

/// A cluster of this build's release binaries; stopped and its vhost deleted on drop.
pub struct Cluster {
    vhost: String,
    pub dir: tempfile::TempDir,
    /// The orchestrator's HTTP address.
    pub http: String,
    pub amqp_url: String,
    children: Vec<Child>,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .context("running rabbitmqctl (is RabbitMQ installed? scripts/setup.sh)")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    /// Starts an orchestrator and `workers` workers of one slot each.
    pub fn start(workers: usize, preset: &str) -> anyhow::Result<Cluster> {
        Cluster::start_with(workers, preset, &[], &[])
    }

    /// Like [`Cluster::start`], with extra orchestrator and worker flags.
    pub fn start_with(
        workers: usize,
        preset: &str,
        orchestrator_args: &[&str],
        worker_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        let bin = std::env::current_exe()?
            .parent()
            .context("no directory for the binaries")?
            .to_path_buf();
        for b in ["orchestrator", "worker", "broadcaster"] {
            if !bin.join(b).exists() {
                bail!(
                    "{} is missing: build with `cargo build --release --bins`",
                    bin.join(b).display()
                );
            }
        }
        let vhost = format!("castwork-bench-{}", std::process::id());
        rabbitmqctl(&["add_vhost", &vhost])?;
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])?;
        let dir = tempfile::tempdir()?;
        let env = vec![
            (
                "AMQP_URL".to_string(),
                format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
            ),
            (
                "STORAGE_URL".to_string(),
                format!("file://{}", dir.path().join("data").display()),
            ),
            ("RUST_LOG".to_string(), "warn".to_string()),
            ("X264_PRESET".to_string(), preset.to_string()),
        ];
        let http = format!("127.0.0.1:{}", free_port()?);
        let mut c = Cluster {
            amqp_url: env[0].1.clone(),
            vhost,
            dir,
            http: http.clone(),
            children: Vec::new(),
            bin,
            env,
        };
        let mut args = vec!["--http-addr", &http];
        args.extend_from_slice(orchestrator_args);
        c.spawn("orchestrator", &args)?;
        for i in 0..workers {
            let id = format!("bench-{i}");
            let mut args = vec!["--worker-id", &id];
            args.extend_from_slice(worker_args);
            c.spawn("worker", &args)?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&http).is_err() {
            if Instant::now() > deadline {
                bail!("the orchestrator did not start");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(1));
        Ok(c)
    }

    fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(name));
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn spawn(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("{name}-{}.log", self.children.len())),
        )?;
        let child = self
            .command(name)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children.push(child);
        Ok(())
    }

    /// Pushes a file and waits for every rendition; returns the wall time.
    pub fn push(&self, input: &Path, stream: &str) -> anyhow::Result<f64> {
        let t = Instant::now();
        let out = self
            .command("broadcaster")
            .arg("push")
            .arg(input)
            .args(["--stream", stream, "--wait"])
            .output()?;
        if !out.status.success() {
            bail!("push failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = rabbitmqctl(&["delete_vhost", &self.vhost]);
    }
}

/// The `ffmpeg` CLI transcoding the whole file into the ladder the cluster makes of it.
fn ffmpeg_whole_file(
    input: &Path,
    ladder: &[Profile],
    opts: &TranscodeOptions,
    out: &Path,
) -> anyhow::Result<Vec<String>> {
    let probed = castwork_media::probe(input)?;
    let plan = plan_ladder(ladder, &probed.metadata);
    let fps = probed.metadata.frame_rate.as_f64().max(1.0);
    // The broadcaster copies AAC audio and converts anything else to AAC once.
    let audio = if probed.audio_codec.as_deref() == Some("aac") {
        "copy"
    } else {
        "aac"
    };
    Ok(crate::cli::ladder_args(
        input,
        &plan.rungs,
        opts,
        (2.0 * fps).round() as u64,
        audio,
        &out.join("whole"),
    ))
}

/// Alternating runs: push --wait (A) and the whole-file CLI (B).
pub fn figure(
    cluster: &Cluster,
    input: &Path,
    ladder: &[Profile],
    opts: &TranscodeOptions,
    runs: usize,
) -> anyhow::Result<Figure> {
    let out = tempfile::tempdir()?;
    let args = ffmpeg_whole_file(input, ladder, opts, out.path())?;
    let label = input
        .file_name()
        .map_or_else(|| "input".into(), |n| n.to_string_lossy().to_string());
    let cli = || -> anyhow::Result<f64> {
        let t = Instant::now();
        crate::cli::run(&args, &[])?;
        Ok(t.elapsed().as_secs_f64())
    };
    let mut fig = Figure {
        name: format!("{label}: push --wait of the whole clip, cluster running"),
        unit: "s",
        ours: Vec::new(),
        baseline: Vec::new(),
        target: "<= 1.10".into(),
    };
    for r in 0..runs {
        let stream = format!("bench-{}-{label}-{r}", std::process::id()).replace(['/', ' '], "-");
        fig.ours.push(cluster.push(input, &stream)?);
        fig.baseline.push(cli()?);
        eprintln!(
            "  run {}: castwork {:.2} s, ffmpeg {:.2} s",
            r + 1,
            fig.ours[r],
            fig.baseline[r]
        );
    }
    Ok(fig)
}
