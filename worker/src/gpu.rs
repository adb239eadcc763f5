//! A worker's NVIDIA devices: found and tested at start (`--nvidia`), shared by its jobs
//! (`--gpu-sessions` at once on each, the least loaded first), and taken out of service when
//! they keep failing jobs that the CPU then does. A job that fails on a device is done again
//! on the CPU in the same attempt, so a GPU fault costs time, never a segment, and never
//! brings the worker down.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use castwork_media::transcode::transcode_segment_until;
use castwork_media::{CudaDevice, GpuTarget, MediaError, RenditionFile, TranscodeOptions};
use castwork_protocol::{DeviceBeat, Rung, SourceMetadata};
use tracing::{info, warn};

/// Failures in a row (each a job the CPU then did) after which a device gets no more jobs.
pub const STRIKES: u32 = 3;

/// Devices indexes probed by `--nvidia all`.
const MAX_DEVICES: u32 = 16;

/// Which devices `--nvidia` names: `all`, or indexes such as `0,1`.
pub fn parse_nvidia(spec: &str) -> Result<Option<Vec<u32>>, String> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "all" {
        return Ok(None);
    }
    spec.split(',')
        .map(|i| {
            i.trim()
                .parse::<u32>()
                .ok()
                .filter(|i| *i < MAX_DEVICES)
                .ok_or_else(|| format!("--nvidia {spec:?}: `all` or device indexes such as 0,1"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// One device and what its self-test found.
pub struct Gpu {
    device: Arc<CudaDevice>,
    nvenc: bool,
    decoders: Vec<String>,
    max: (u32, u32),
    in_use: AtomicUsize,
    strikes: AtomicU32,
    healthy: AtomicBool,
}

/// The devices a worker transcodes on.
pub struct Gpus {
    devices: Vec<Gpu>,
    sessions: usize,
    /// Encode on the device (class `nvenc`) or on the CPU (class `nvdec`).
    use_nvenc: bool,
}

/// What happened to one job on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    /// The device failed it; the CPU did it.
    Fallback,
    /// The segment is not one the device takes (codec, format, range): the CPU did it.
    NotForGpu,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Fallback => "fallback",
            Outcome::NotForGpu => "not_for_gpu",
        }
    }
}

impl Gpus {
    /// Opens the devices `which` names (every one that opens, for `None`) and runs the
    /// self-test on each in `dir`; keeps those that pass the test class `nvenc` (or `nvdec`,
    /// with `use_nvenc` false) needs. Each finding is logged.
    pub fn detect(which: Option<&[u32]>, sessions: usize, use_nvenc: bool, dir: &Path) -> Gpus {
        let indexes: Vec<u32> = match which {
            Some(list) => list.to_vec(),
            None => (0..MAX_DEVICES).collect(),
        };
        let mut devices = Vec::new();
        for index in indexes {
            let device = match CudaDevice::open(index) {
                Ok(d) => Arc::new(d),
                Err(e) => {
                    // `all` stops at the first index that does not open.
                    if which.is_some() {
                        warn!(index, error = %e, "GPU not usable");
                    } else if index == 0 {
                        info!(error = %e, "no NVIDIA GPU found");
                    }
                    if which.is_none() {
                        break;
                    }
                    continue;
                }
            };
            match self_test(&device, dir) {
                Ok(gpu) if use_nvenc && !gpu.nvenc => warn!(
                    index,
                    "GPU passed decode and scale, but has no working NVENC: not used by an \
                     nvenc-class worker (run --class nvdec for NVDEC + libx264)"
                ),
                Ok(gpu) => {
                    info!(
                        index,
                        decoders = gpu.decoders.join(","),
                        nvenc = gpu.nvenc,
                        max = format!("{}x{}", gpu.max.0, gpu.max.1),
                        sessions,
                        "GPU passed its self-test"
                    );
                    crate::metrics::GPU_HEALTHY
                        .with_label_values(&[&index.to_string()])
                        .set(1);
                    devices.push(gpu);
                }
                Err(e) => warn!(index, error = %e, "GPU failed its self-test: not used"),
            }
        }
        Gpus {
            devices,
            sessions: sessions.max(1),
            use_nvenc,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The healthy device with a free session and the fewest jobs, of those whose self-test
    /// passed for a `codec` source of `width` x `height`, taken for one job.
    fn acquire(self: &Arc<Self>, codec: &str, width: u32, height: u32) -> Option<Lease> {
        loop {
            let (i, gpu) = self
                .devices
                .iter()
                .enumerate()
                .filter(|(_, g)| {
                    g.healthy.load(Ordering::Relaxed)
                        && g.decoders.iter().any(|d| d == codec)
                        && width.max(height) <= g.max.0.max(g.max.1)
                        && width.min(height) <= g.max.0.min(g.max.1)
                })
                .min_by_key(|(_, g)| g.in_use.load(Ordering::Relaxed))?;
            let used = gpu.in_use.load(Ordering::Relaxed);
            if used >= self.sessions {
                return None;
            }
            if gpu
                .in_use
                .compare_exchange(used, used + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.set_sessions_gauge(gpu);
                return Some(Lease {
                    gpus: self.clone(),
                    i,
                });
            }
        }
    }

    fn set_sessions_gauge(&self, gpu: &Gpu) {
        crate::metrics::GPU_SESSIONS
            .with_label_values(&[&gpu.device.index().to_string()])
            .set(gpu.in_use.load(Ordering::Relaxed) as i64);
    }

    /// The devices as heartbeats carry them.
    pub fn beat(&self) -> Vec<DeviceBeat> {
        self.devices
            .iter()
            .map(|g| DeviceBeat {
                index: g.device.index(),
                healthy: g.healthy.load(Ordering::Relaxed),
                sessions: self.sessions,
                sessions_used: g.in_use.load(Ordering::Relaxed),
                decoders: g.decoders.clone(),
                nvenc: g.nvenc,
                max_width: g.max.0,
                max_height: g.max.1,
            })
            .collect()
    }
}

/// One job's hold on a device (given back when dropped).
struct Lease {
    gpus: Arc<Gpus>,
    i: usize,
}

impl Lease {
    fn gpu(&self) -> &Gpu {
        &self.gpus.devices[self.i]
    }

    fn target(&self) -> GpuTarget {
        GpuTarget {
            device: self.gpu().device.clone(),
            nvenc: self.gpus.use_nvenc,
        }
    }

    /// Counts a job's outcome; the third fallback in a row takes the device out of service.
    fn record(&self, outcome: Outcome, why: Option<&MediaError>) {
        let gpu = self.gpu();
        let index = gpu.device.index().to_string();
        crate::metrics::GPU_JOBS
            .with_label_values(&[&index, outcome.label()])
            .inc();
        match outcome {
            Outcome::Done => gpu.strikes.store(0, Ordering::Relaxed),
            Outcome::NotForGpu => {}
            Outcome::Fallback => {
                let strikes = gpu.strikes.fetch_add(1, Ordering::Relaxed) + 1;
                if strikes >= STRIKES && gpu.healthy.swap(false, Ordering::Relaxed) {
                    crate::metrics::GPU_HEALTHY
                        .with_label_values(&[&index])
                        .set(0);
                    warn!(
                        device = gpu.device.index(),
                        strikes,
                        error = why.map(|e| e.to_string()),
                        "GPU failed {STRIKES} jobs in a row that the CPU then did: taken out of \
                         service (restart the worker to test it again); its jobs run on the CPU"
                    );
                }
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let gpu = self.gpu();
        gpu.in_use.fetch_sub(1, Ordering::AcqRel);
        self.gpus.set_sessions_gauge(gpu);
    }
}

/// What one segment's transcode needs, on whichever path runs it.
pub struct Segment<'a> {
    pub src: &'a Path,
    pub rungs: &'a [Rung],
    pub meta: &'a SourceMetadata,
    pub end_us: Option<i64>,
    pub out_dir: &'a Path,
}

/// Transcodes a segment on a device when one is free and healthy (else on the CPU); a
/// device failure is logged and the segment done again on the CPU. Blocking.
pub fn transcode(
    gpus: Option<&Arc<Gpus>>,
    seg: &Segment<'_>,
    opts: &TranscodeOptions,
) -> Result<Vec<RenditionFile>, MediaError> {
    let cpu = |opts: &TranscodeOptions| {
        transcode_segment_until(seg.src, seg.rungs, seg.meta, seg.end_us, seg.out_dir, opts)
    };
    let Some(lease) =
        gpus.and_then(|g| g.acquire(&seg.meta.video_codec, seg.meta.width, seg.meta.height))
    else {
        return cpu(opts);
    };
    let on_gpu = TranscodeOptions {
        gpu: Some(lease.target()),
        ..opts.clone()
    };
    match cpu(&on_gpu) {
        Ok(files) => {
            lease.record(Outcome::Done, None);
            Ok(files)
        }
        Err(MediaError::NotForGpu(why)) => {
            lease.record(Outcome::NotForGpu, None);
            tracing::debug!(why, "segment runs on the CPU");
            drop(lease);
            cpu(opts)
        }
        Err(gpu_error) => {
            drop_partial(seg.out_dir, seg.rungs);
            let index = lease.gpu().device.index();
            // Give the session back before the CPU's turn: it may be long.
            let result = cpu(opts);
            match &result {
                Ok(_) => {
                    warn!(device = index, error = %gpu_error, "GPU failed a segment: done on the CPU");
                    lease.record(Outcome::Fallback, Some(&gpu_error));
                }
                // The input's fault, not the device's: the CPU's error is the one reported.
                Err(_) => lease.record(Outcome::NotForGpu, None),
            }
            result
        }
    }
}

/// Removes what a failed attempt wrote, so the CPU's run starts clean.
fn drop_partial(dir: &Path, rungs: &[Rung]) {
    for r in rungs {
        let _ = std::fs::remove_file(dir.join(format!("{}.ts", r.name)));
    }
}

/// The self-test of one device: H.264 decode, scale and download at 1080p must pass; HEVC
/// decode, a 4096x2160 picture and NVENC are each tried and advertised when they pass.
fn self_test(device: &Arc<CudaDevice>, dir: &Path) -> Result<Gpu, MediaError> {
    let dir: PathBuf = tempfile::Builder::new()
        .prefix("castwork-gpu-selftest-")
        .tempdir_in(dir)
        .map_err(|e| MediaError::Internal(format!("self-test directory: {e}")))?
        .keep();
    let test = |codec: &str, w: u32, h: u32, nvenc: bool| {
        let opts = TranscodeOptions {
            preset: "ultrafast".into(),
            gpu: Some(GpuTarget {
                device: device.clone(),
                nvenc,
            }),
            ..TranscodeOptions::default()
        };
        castwork_media::selftest::transcode_test_clip(&dir, codec, w, h, &opts)
    };
    let result = (|| {
        test("h264", 1920, 1080, false)?;
        let mut decoders = vec!["h264".to_string()];
        if test("hevc", 1920, 1080, false).is_ok() {
            decoders.push("hevc".into());
        }
        let max = if test("h264", 4096, 2160, false).is_ok() {
            (4096, 2160)
        } else {
            (1920, 1080)
        };
        let nvenc = test("h264", 1280, 720, true).is_ok();
        Ok(Gpu {
            device: device.clone(),
            nvenc,
            decoders,
            max,
            in_use: AtomicUsize::new(0),
            strikes: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_names_all_or_indexes() {
        assert_eq!(parse_nvidia("all"), Ok(None));
        assert_eq!(parse_nvidia(""), Ok(None));
        assert_eq!(parse_nvidia("0, 2"), Ok(Some(vec![0, 2])));
        assert!(parse_nvidia("gpu0").is_err());
        assert!(parse_nvidia("99").is_err());
    }

    #[test]
    fn a_machine_without_a_gpu_detects_none_and_runs_on_the_cpu() {
        if Path::new("/dev/nvidiactl").exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let gpus = Arc::new(Gpus::detect(None, 2, false, dir.path()));
        assert!(gpus.is_empty());
        assert!(gpus.beat().is_empty());
        assert!(gpus.acquire("h264", 320, 180).is_none());
        // The segment still transcodes, on the CPU.
        castwork_media::selftest::write_test_clip(&dir.path().join("in.ts"), "h264", 320, 180, 5)
            .unwrap();
        let rungs: Vec<Rung> = serde_json::from_value(serde_json::json!([{
            "name": "small", "width": 160, "height": 90, "bitrate": 200000,
            "max_fps": {"num": 25, "den": 1}, "gop_secs": null, "profile": "Main"
        }]))
        .unwrap();
        let meta = SourceMetadata::upright(320, 180, 25);
        let files = transcode(
            Some(&gpus),
            &Segment {
                src: &dir.path().join("in.ts"),
                rungs: &rungs,
                meta: &meta,
                end_us: None,
                out_dir: dir.path(),
            },
            &TranscodeOptions::default(),
        )
        .unwrap();
        assert_eq!(files[0].frames, 5);
    }
}
