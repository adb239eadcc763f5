//! A worker given a source segment that does not decode cleanly on its own reports a
//! permanent failure that says so, and uploads nothing: damage is never concealed.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use castwork_cluster::telemetry::Span;
use castwork_cluster::Storage;
use castwork_media::TranscodeOptions;
use castwork_protocol::{
    parse_profiles, plan_ladder, source_key, Disposition, ObjectRef, SegmentJob, StreamMode,
    WorkerReport,
};
use castwork_worker::job::sha256_hex;
use castwork_worker::{run_job, JobContext, Slots};

fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .status()
        .unwrap();
    assert!(ok.success(), "ffmpeg {args:?}");
}

/// An open-GOP x264 stream cut by FFmpeg's segment muxer at 2 s: the second segment starts
/// at a recovery-point I picture whose leading B-pictures need the previous GOP.
fn open_gop_segments(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = dir.join("open.ts");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=30",
        "-t",
        "4",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-x264-params",
        "open-gop=1:keyint=60:scenecut=0",
        "-bf",
        "3",
        "-pix_fmt",
        "yuv420p",
        src.to_str().unwrap(),
    ]);
    let pattern = dir.join("seg_%d.ts");
    ffmpeg(&[
        "-i",
        src.to_str().unwrap(),
        "-f",
        "segment",
        "-segment_time",
        "2",
        "-c",
        "copy",
        pattern.to_str().unwrap(),
    ]);
    (dir.join("seg_0.ts"), dir.join("seg_1.ts"))
}

async fn run_segment(ctx: &JobContext, seg: &Path, seq: u64) -> WorkerReport {
    let stream = "cutcheck";
    let data = std::fs::read(seg).unwrap();
    let probed = castwork_media::probe(seg).unwrap();
    let plan = plan_ladder(&parse_profiles("P240p30fps16x9").unwrap(), &probed.metadata);
    let key = source_key(stream, seq, "ts");
    ctx.storage
        .as_ref()
        .unwrap()
        .put(&key, Bytes::from(data.clone()))
        .await
        .unwrap();
    let job = SegmentJob {
        job_id: uuid::Uuid::now_v7(),
        stream: stream.into(),
        seq,
        attempt: 1,
        mode: StreamMode::Vod,
        source: ObjectRef {
            key,
            size: data.len() as u64,
            sha256: sha256_hex(&data),
        },
        start_us: 0,
        duration_us: 2_000_000,
        frames: 60,
        rungs: plan.rungs,
        metadata: probed.metadata,
        deadline_unix_ms: None,
        exclude_workers: Vec::new(),
        // The worker reads and writes this test's directory store directly.
        objects: None,
    };
    run_job(ctx, &job, &Span::none()).await
}

#[tokio::test]
async fn a_segment_with_decoder_errors_fails_permanently_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (clean, broken) = open_gop_segments(dir.path());
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let ctx = JobContext {
        storage: Some(Storage::from_url(&format!("file://{}", store.display())).unwrap()),
        http: castwork_worker::objects::client(None).unwrap(),
        worker_id: "w-test".into(),
        options: TranscodeOptions {
            preset: "ultrafast".into(),
            ..TranscodeOptions::default()
        },
        max_segment_bytes: 64 << 20,
        tmp_dir: None,
        slots: Slots::new(1),
        job_timeout_secs: 120,
        start_notice_after: Duration::from_secs(3600),
        excluded_retry: Duration::from_secs(1),
        slots_changed: Arc::new(tokio::sync::Notify::new()),
        noop_transcode: false,
        test_only_lie_permanent: false,
        standing: Arc::default(),
        gpus: None,
    };

    match run_segment(&ctx, &clean, 0).await {
        WorkerReport::SegmentResult(r) => {
            assert_eq!(r.renditions.len(), 1);
            assert_eq!(r.renditions[0].frames, 60);
        }
        other => panic!("the clean first segment failed: {other:?}"),
    }

    let report = run_segment(&ctx, &broken, 1).await;
    let WorkerReport::SegmentFailed(f) = report else {
        panic!("a segment that does not decode cleanly was transcoded: {report:?}");
    };
    assert_eq!(f.disposition, Disposition::Permanent, "{f:?}");
    assert_eq!(f.seq, 1);
    assert!(
        f.message
            .starts_with("source segment 1 does not decode cleanly: "),
        "{}",
        f.message
    );
    assert!(f.message.contains("decoder errors: "), "{}", f.message);
    // Nothing but the two source segments and the first one's rendition was stored.
    let stored = walk(&store);
    assert_eq!(stored.len(), 3, "{stored:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
