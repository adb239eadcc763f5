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

/// What runs a segment on one device: the CUDA pipeline ([`Cuda`]), or a unit test's
/// stand-in for a card that works or fails.
trait Device: Send + Sync {
    fn index(&self) -> u32;
    fn transcode(
        &self,
        seg: &Segment<'_>,
        opts: &TranscodeOptions,
    ) -> Result<Vec<RenditionFile>, MediaError>;
}

/// An NVIDIA device: NVDEC and `scale_cuda`, then `h264_nvenc` (`nvenc`) or libx264.
struct Cuda {
    device: Arc<CudaDevice>,
    nvenc: bool,
}

impl Device for Cuda {
    fn index(&self) -> u32 {
        self.device.index()
    }

    fn transcode(
        &self,
        seg: &Segment<'_>,
        opts: &TranscodeOptions,
    ) -> Result<Vec<RenditionFile>, MediaError> {
        let on_gpu = TranscodeOptions {
            gpu: Some(GpuTarget {
                device: self.device.clone(),
                nvenc: self.nvenc,
            }),
            ..opts.clone()
        };
        seg.run(&on_gpu)
    }
}

/// One device and what its self-test found.
pub struct Gpu {
    device: Box<dyn Device>,
    nvenc: bool,
    decoders: Vec<String>,
    max: (u32, u32),
    in_use: AtomicUsize,
    /// Failures whose segments the CPU is doing again now.
    suspect: AtomicUsize,
    strikes: AtomicU32,
    healthy: AtomicBool,
}

/// The devices a worker transcodes on.
pub struct Gpus {
    devices: Vec<Gpu>,
    sessions: usize,
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
            match self_test(&device, use_nvenc, dir) {
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
        }
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Whether some device still takes jobs.
    fn any_in_service(&self) -> bool {
        self.devices
            .iter()
            .any(|g| g.healthy.load(Ordering::Relaxed))
    }

    /// The healthy device with a free session and the fewest jobs, of those whose self-test
    /// passed for a `codec` source of `width` x `height` and with no failure being redone on
    /// the CPU, taken for one job.
    fn acquire(self: &Arc<Self>, codec: &str, width: u32, height: u32) -> Option<Lease> {
        loop {
            let (i, gpu) = self
                .devices
                .iter()
                .enumerate()
                .filter(|(_, g)| {
                    g.healthy.load(Ordering::Relaxed)
                        && g.suspect.load(Ordering::Relaxed) == 0
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

    /// Counts a job's outcome; the third fallback in a row takes the device out of service.
    fn record(&self, i: usize, outcome: Outcome, why: Option<&MediaError>) {
        let gpu = &self.devices[i];
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
                    if !self.any_in_service() {
                        tracing::error!(
                            "every GPU of this worker is out of service: it does its class's \
                             jobs on the CPU, and the orchestrator sends them to other workers \
                             first; restart it once the cards are fixed"
                        );
                    }
                }
            }
        }
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

impl Segment<'_> {
    /// Runs the transcode as `opts` say: on the CPU, unless they name a device.
    fn run(&self, opts: &TranscodeOptions) -> Result<Vec<RenditionFile>, MediaError> {
        transcode_segment_until(
            self.src,
            self.rungs,
            self.meta,
            self.end_us,
            self.out_dir,
            opts,
        )
    }
}

/// Transcodes a segment on a device when one is free and healthy (else on the CPU); a
/// device failure is logged and the segment done again on the CPU. Blocking.
pub fn transcode(
    gpus: Option<&Arc<Gpus>>,
    seg: &Segment<'_>,
    opts: &TranscodeOptions,
) -> Result<Vec<RenditionFile>, MediaError> {
    transcode_with(gpus, seg, opts, || seg.run(opts))
}

/// [`transcode`], with `cpu` the run on the CPU.
fn transcode_with(
    gpus: Option<&Arc<Gpus>>,
    seg: &Segment<'_>,
    opts: &TranscodeOptions,
    cpu: impl Fn() -> Result<Vec<RenditionFile>, MediaError>,
) -> Result<Vec<RenditionFile>, MediaError> {
    let Some(lease) =
        gpus.and_then(|g| g.acquire(&seg.meta.video_codec, seg.meta.width, seg.meta.height))
    else {
        return cpu();
    };
    let on_device = lease.gpu().device.transcode(seg, opts);
    // The session goes back before any run on the CPU, which may be long.
    let (gpus, i) = (lease.gpus.clone(), lease.i);
    drop(lease);
    match on_device {
        Ok(files) => {
            gpus.record(i, Outcome::Done, None);
            Ok(files)
        }
        Err(MediaError::NotForGpu(why)) => {
            gpus.record(i, Outcome::NotForGpu, None);
            tracing::debug!(why, "segment runs on the CPU");
            drop_partial(seg.out_dir, seg.rungs);
            cpu()
        }
        Err(gpu_error) => {
            drop_partial(seg.out_dir, seg.rungs);
            // The device gets no new job until the CPU has shown whose fault this was: a
            // card that fails at once would otherwise, least loaded, take every job meanwhile.
            let result = {
                let _suspect = Suspect::of(&gpus.devices[i]);
                cpu()
            };
            match &result {
                Ok(_) => {
                    let device = gpus.devices[i].device.index();
                    warn!(device, error = %gpu_error, "GPU failed a segment: done on the CPU");
                    gpus.record(i, Outcome::Fallback, Some(&gpu_error));
                }
                // The input's fault, not the device's: the CPU's error is the one reported.
                Err(_) => gpus.record(i, Outcome::NotForGpu, None),
            }
            result
        }
    }
}

/// A device's failure awaiting the CPU's run of the same segment (given back when dropped).
struct Suspect<'a>(&'a Gpu);

impl<'a> Suspect<'a> {
    fn of(gpu: &'a Gpu) -> Self {
        gpu.suspect.fetch_add(1, Ordering::AcqRel);
        Suspect(gpu)
    }
}

impl Drop for Suspect<'_> {
    fn drop(&mut self) {
        self.0.suspect.fetch_sub(1, Ordering::AcqRel);
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
fn self_test(device: &Arc<CudaDevice>, use_nvenc: bool, dir: &Path) -> Result<Gpu, MediaError> {
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
            device: Box::new(Cuda {
                device: device.clone(),
                nvenc: use_nvenc,
            }),
            nvenc,
            decoders,
            max,
            in_use: AtomicUsize::new(0),
            suspect: AtomicUsize::new(0),
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

    const WORKS: u8 = 0;
    const FAILS: u8 = 1;
    const TURNS_AWAY: u8 = 2;

    /// A card as a test sets it: it works (the CPU's pipeline stands in for it), fails with
    /// a device error after writing part of a rendition, or turns segments away.
    struct Card {
        index: u32,
        mode: Arc<std::sync::atomic::AtomicU8>,
    }

    impl Device for Card {
        fn index(&self) -> u32 {
            self.index
        }

        fn transcode(
            &self,
            seg: &Segment<'_>,
            opts: &TranscodeOptions,
        ) -> Result<Vec<RenditionFile>, MediaError> {
            match self.mode.load(Ordering::Relaxed) {
                WORKS => seg.run(opts),
                FAILS => {
                    std::fs::write(seg.out_dir.join("small.ts"), b"half a rendition").unwrap();
                    Err(MediaError::Internal("CUDA_ERROR_LAUNCH_FAILED".into()))
                }
                _ => Err(MediaError::NotForGpu("4:4:4".into())),
            }
        }
    }

    fn card(index: u32, mode: &Arc<std::sync::atomic::AtomicU8>) -> Gpu {
        Gpu {
            device: Box::new(Card {
                index,
                mode: mode.clone(),
            }),
            nvenc: false,
            decoders: vec!["h264".into()],
            max: (1920, 1080),
            in_use: AtomicUsize::new(0),
            suspect: AtomicUsize::new(0),
            strikes: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
        }
    }

    fn small_rung() -> Vec<Rung> {
        serde_json::from_value(serde_json::json!([{
            "name": "small", "width": 160, "height": 90, "bitrate": 200000,
            "max_fps": {"num": 25, "den": 1}, "gop_secs": null, "profile": "Main"
        }]))
        .unwrap()
    }

    #[test]
    fn a_failing_device_costs_time_never_a_segment_and_leaves_service_after_three_in_a_row() {
        use std::sync::atomic::AtomicU8;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in.ts");
        castwork_media::selftest::write_test_clip(&src, "h264", 320, 180, 5).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let (rungs, meta) = (small_rung(), SourceMetadata::upright(320, 180, 25));
        let missing = dir.path().join("missing.ts");
        let seg = |src| Segment {
            src,
            rungs: &rungs,
            meta: &meta,
            end_us: None,
            out_dir: &out,
        };
        // Indexes no other test uses, so the metrics read here are this test's own.
        let (a, b) = (
            Arc::new(AtomicU8::new(WORKS)),
            Arc::new(AtomicU8::new(WORKS)),
        );
        let gpus = Arc::new(Gpus {
            devices: vec![card(14, &a), card(15, &b)],
            sessions: 1,
        });
        let run = |src| transcode(Some(&gpus), &seg(src), &TranscodeOptions::default());
        let jobs = |index: &str, outcome: &str| {
            crate::metrics::GPU_JOBS
                .with_label_values(&[index, outcome])
                .get()
        };
        let healthy = || gpus.beat().iter().map(|d| d.healthy).collect::<Vec<_>>();

        // The least loaded device takes a job, one session each here; then none is free.
        let first = gpus.acquire("h264", 320, 180).unwrap();
        let second = gpus.acquire("h264", 320, 180).unwrap();
        assert_eq!((first.i, second.i), (0, 1));
        assert!(gpus.acquire("h264", 320, 180).is_none());
        assert_eq!(gpus.beat()[1].sessions_used, 1);
        drop((first, second));
        // Nor does a device take what its self-test did not pass.
        assert!(gpus.acquire("hevc", 320, 180).is_none());
        assert!(gpus.acquire("h264", 3840, 2160).is_none());
        assert!(gpus.acquire("h264", 1080, 1920).is_some());

        // Card 14 fails every segment: each is done all the same, on the CPU, over what the
        // card left; the third failure in a row takes the card out of service. While the CPU
        // does it, the card's session is back, but the card gets no new job.
        a.store(FAILS, Ordering::Relaxed);
        let opts = TranscodeOptions::default();
        for strike in 1..=STRIKES {
            let files = transcode_with(Some(&gpus), &seg(&src), &opts, || {
                assert_eq!(gpus.beat()[0].sessions_used, 0);
                assert_eq!(gpus.acquire("h264", 320, 180).map(|l| l.i), Some(1));
                seg(&src).run(&opts)
            })
            .unwrap();
            assert_eq!(files[0].frames, 5);
            assert_eq!(healthy(), [strike < STRIKES, true]);
            let next = gpus.acquire("h264", 320, 180).map(|l| l.i);
            assert_eq!(next, Some(if strike < STRIKES { 0 } else { 1 }));
        }
        assert_eq!(jobs("14", "fallback"), 3);
        assert_eq!(gpus.beat()[0].sessions_used, 0);
        assert_eq!(jobs("15", "done"), 0);
        run(&src).unwrap();
        assert_eq!(jobs("15", "done"), 1);

        // A segment the CPU cannot do either is the input's fault, not the card's.
        b.store(FAILS, Ordering::Relaxed);
        for _ in 0..STRIKES {
            assert!(run(&missing).is_err());
        }
        assert_eq!(healthy(), [false, true]);
        // A job the card does clears its strikes; one it turns away neither adds nor clears.
        run(&src).unwrap();
        run(&src).unwrap();
        b.store(WORKS, Ordering::Relaxed);
        run(&src).unwrap();
        b.store(FAILS, Ordering::Relaxed);
        run(&src).unwrap();
        run(&src).unwrap();
        b.store(TURNS_AWAY, Ordering::Relaxed);
        assert_eq!(run(&src).unwrap()[0].frames, 5);
        assert_eq!(jobs("15", "not_for_gpu"), 4);
        assert_eq!(healthy(), [false, true]);
        assert!(gpus.any_in_service());
        b.store(FAILS, Ordering::Relaxed);
        run(&src).unwrap();
        assert_eq!(jobs("15", "fallback"), 5);

        // With every card out, the worker runs its jobs on the CPU and its heartbeats say so.
        assert_eq!(healthy(), [false, false]);
        assert!(!gpus.any_in_service());
        assert!(gpus.acquire("h264", 320, 180).is_none());
        assert_eq!(run(&src).unwrap()[0].frames, 5);
        assert_eq!(jobs("14", "fallback") + jobs("15", "fallback"), 8);
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
        let rungs = small_rung();
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
