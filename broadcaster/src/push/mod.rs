//! `broadcaster push`: probe a file, cut it into source segments, store and enqueue them,
//! and (with `--wait`) follow the orchestrator's events until every rendition is done.

use std::time::SystemTime;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use castwork_cluster::Storage;
use castwork_media::{CutSegment, MediaError, SegmentOptions};
use castwork_protocol::{validate_stream_name, Profile, StreamEvent, StreamMode, StreamStarted};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::progress::Progress;

mod ending;
mod output;
mod relay;
mod route;
use ending::{
    abort, aborted, check_store, completed_at, cut_failure, end_early, note_event, playback_url,
    sleep_until, STATUS_POLL,
};
use relay::Relay;
use route::Admission;
pub use route::{Failover, Route};

/// What to push.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub input: PathBuf,
    pub stream: String,
    pub ladder: Vec<Profile>,
    pub segment_secs: f64,
    pub wait: bool,
    pub amqp_url: String,
    /// Where the source segments go; none over HTTP.
    pub storage: Option<Storage>,
    /// Push through this orchestrator's HTTP ingest API instead of `amqp_url` and
    /// `storage`: its URL, and the broadcaster key it gave us.
    pub http_ingest: Option<(String, String)>,
    /// Over HTTP: the orchestrators to go to, in order, when that one does not admit the
    /// stream or (with `copy_to`) fails mid-stream.
    pub spares: Vec<Route>,
    /// Over HTTP: keep a copy of every rendition and the playlists in this store
    /// (`streams/NAME/`), as each segment is transcoded: what lets a push move mid-stream.
    /// The outcome's master playlist is then the copy's.
    pub copy_to: Option<Storage>,
    /// When the push moves on (while it can).
    pub failover: Failover,
    /// Over HTTP: where to count each orchestrator's completed pushes and the times a
    /// push left it.
    pub history: Option<crate::history::History>,
    /// Base URL of the playback server, in place of the one the orchestrator names (its
    /// `--playback-url`), for the playback URL printed at the end.
    pub playback_url: Option<String>,
    /// Local directory of a `file://` object store, for the output path printed at the end.
    pub local_dir: Option<PathBuf>,
    /// How long to wait for an orchestrator to admit the stream.
    pub admit_timeout: Duration,
    /// The account that pays a priced orchestrator.
    pub broadcaster: Option<String>,
    /// On-chain mode: signs the tickets attached to every segment.
    pub payer: Option<std::sync::Arc<crate::payer::Payer>>,
    /// With `wait`: the broadcaster's own check of a sample of segments, and the penalty
    /// of a failure.
    pub verify: Option<(crate::verify::VerifyPolicy, crate::verify::Penalty, String)>,
    /// With `wait`: give up waiting after this long (the cluster goes on).
    pub wait_timeout: Option<Duration>,
    /// With `wait`: the orchestrator's HTTP address, whose `GET /streams/NAME` is read now
    /// and then, so a completion whose event was lost is still seen.
    pub orchestrator_url: Option<String>,
    /// Only these demuxers may open the input, with local file access only (an input from
    /// the network: [`castwork_media::NETWORK_INPUT_FORMATS`]); `None` opens any file FFmpeg
    /// reads, as for the operator's own files.
    pub formats: Option<&'static str>,
    /// Cancels the push: unlike a shutdown, which leaves the cluster to finish what was
    /// sent, a cancel aborts the stream (the orchestrator marks it failed and deletes what
    /// it stored).
    pub cancel: Option<CancellationToken>,
    /// Told how far the push is, as it goes.
    pub progress: Option<tokio::sync::watch::Sender<PushProgress>>,
}

/// How far a push is: segments cut (once the whole file is), sent, transcoded (every
/// rendition of a segment is made together, so this is each rendition's count) and failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PushProgress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<u64>,
    pub sent: u64,
    pub transcoded: u64,
    pub failed: u64,
}

/// Tells `to` (if anyone listens) the push's counts now.
fn report(
    to: &Option<tokio::sync::watch::Sender<PushProgress>>,
    segments: Option<u64>,
    sent: u64,
    outputs: &crate::verify::Outputs,
    failed: &[(u64, String)],
) {
    if let Some(tx) = to {
        let now = PushProgress {
            segments,
            sent,
            transcoded: outputs.values().filter(|o| !o.1.is_empty()).count() as u64,
            failed: failed.len() as u64,
        };
        tx.send_if_modified(|p| {
            let changed = *p != now;
            *p = now.clone();
            changed
        });
    }
}

/// Resolves when `cancel` is cancelled; never without one.
async fn cancelled(cancel: &Option<CancellationToken>) {
    match cancel {
        Some(c) => c.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Refuses an orchestrator whose advertised price (`GET URL/price`) is above `max`;
/// returns its offer (with ticket parameters for `sender`, on-chain).
pub async fn check_price(
    url: &str,
    max: &castwork_protocol::Price,
    sender: Option<castwork_chain::Address>,
) -> anyhow::Result<castwork_protocol::payment::PriceOffer> {
    let offer = crate::payer::fetch_offer(url, sender).await?;
    if let Err(m) = crate::payer::within_max(&offer.price, max) {
        bail!("{m}: nothing was sent");
    }
    Ok(offer)
}

/// How a push ended.
#[derive(Debug)]
pub struct PushOutcome {
    pub segments: u64,
    /// Failed segments with their messages (only known with `wait`).
    pub failed: Vec<(u64, String)>,
    pub master_playlist: Option<String>,
    /// Where viewers play the stream (once complete), when known.
    pub playback_url: Option<String>,
    /// With verification: segments checked, and the renditions that failed.
    pub verified: usize,
    pub evidence: Vec<crate::verify::Evidence>,
}

/// `push --wait`'s exit status when the stream ended incomplete: some of its segments
/// failed (the playlists list the others). Any other failure exits 1, and a bad command
/// line 2.
pub const EXIT_INCOMPLETE: u8 = 3;

impl PushOutcome {
    /// Whether the stream ended with segments missing from its output. An on-demand
    /// stream's segments are never skipped (only a live segment that misses its deadline
    /// is), so its failed segments are all that can be missing.
    pub fn is_incomplete(&self) -> bool {
        !self.failed.is_empty()
    }

    /// What `push --wait` prints when `stream` ended incomplete: how many segments failed,
    /// and why each did.
    pub fn incomplete_report(&self, stream: &str) -> String {
        let failed = self.failed.len() as u64;
        let mut report = format!(
            "stream {stream} is incomplete: {failed} of {} segments failed, so its playlists \
             list only the other {}:",
            self.segments,
            self.segments.saturating_sub(failed)
        );
        for (seq, message) in &self.failed {
            report.push_str(&format!("\n  segment {seq}: {message}"));
        }
        report
    }
}

/// Pushes one file as an on-demand stream.
///
/// On `shutdown` (SIGTERM, Ctrl-C) while uploading, it closes the stream with the segments
/// already sent and fails; while waiting, it leaves the cluster to finish and fails.
///
/// Any other failure after admission (the file cannot be cut, a segment cannot be stored
/// or paid for) aborts the stream: the orchestrator marks it failed with the reason and
/// deletes what it had stored (`streams/NAME/`), so nothing is left active or half-made.
pub async fn push(req: PushRequest, shutdown: CancellationToken) -> anyhow::Result<PushOutcome> {
    validate_stream_name(&req.stream).map_err(anyhow::Error::msg)?;
    let (input, formats) = (req.input.clone(), req.formats);
    let probed = tokio::task::spawn_blocking(move || match formats {
        Some(f) => castwork_media::probe_restricted(&input, f),
        None => castwork_media::probe(&input),
    })
    .await?
    .map_err(|e| anyhow::anyhow!("cannot push {}: {e}", req.input.display()))?;
    let meta = &probed.metadata;
    eprintln!(
        "{}: {} {}x{} {:.3} fps{}{}, {}",
        req.input.display(),
        meta.video_codec,
        meta.width,
        meta.height,
        meta.frame_rate.as_f64(),
        if meta.rotation != 0 {
            format!(", rotated {}°", meta.rotation)
        } else {
            String::new()
        },
        probed
            .audio_codec
            .as_ref()
            .map_or(", no audio".to_string(), |a| format!(", {a} audio")),
        meta.duration_us
            .map_or("unknown duration".to_string(), |d| format!(
                "{:.1} s",
                d as f64 / 1e6
            )),
    );
    let started = StreamStarted {
        stream: req.stream.clone(),
        session: Uuid::nil(),
        mode: StreamMode::Vod,
        ladder: req.ladder.clone(),
        source: probed.metadata.clone(),
        broadcaster: req
            .payer
            .as_ref()
            .map(|p| p.address().to_string())
            .or(req.broadcaster.clone()),
        target_duration_secs: None,
        secret: String::new(),
    };
    let (ext, fps) = (probed.container.extension(), meta.frame_rate.as_f64());
    let (mut relay, admission) = Relay::start(&req, started, (ext, fps)).await?;
    let Admission {
        rungs,
        skipped,
        playback_url: cluster_playback,
        store,
    } = admission;
    // Over HTTP the orchestrator stores the sources itself.
    let checked = match &req.storage {
        Some(s) if !relay.link.is_http() => check_store(s, store.as_ref()).await,
        _ => Ok(()),
    };
    if let Err(e) = checked {
        abort(
            &mut relay.link,
            &req.stream,
            relay.session,
            &format!("{e:#}"),
        )
        .await;
        relay.link.close().await;
        return Err(e);
    }
    // With a copy, the stream may end up at another orchestrator: what it plays from is the
    // copy, served wherever --playback-url says.
    let cluster_playback = cluster_playback.filter(|_| !relay.keeps_copy());
    let playback_url = playback_url(req.playback_url.as_deref(), cluster_playback, &req.stream);
    for r in &rungs {
        eprintln!(
            "rendition {}: {}x{} at {} kbit/s, up to {:.3} fps",
            r.name,
            r.width,
            r.height,
            r.bitrate / 1000,
            r.max_fps.as_f64()
        );
    }
    for s in &skipped {
        eprintln!("skipped {}: {}", s.name, s.reason);
    }

    let target_us = (req.segment_secs * 1e6) as i64;
    let estimate = meta
        .duration_us
        .map_or(1, |d| (d / target_us.max(1)).max(1) as u64);
    let mut progress = Progress::new(estimate);
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    // Each segment comes with the time its cut began (when the previous one was done).
    let (tx, mut rx) = mpsc::channel::<(CutSegment, (SystemTime, SystemTime))>(4);
    let (input, seg_dir, probed2) = (req.input.clone(), dir.path().to_path_buf(), probed.clone());
    let cutter = tokio::task::spawn_blocking(move || {
        let opts = SegmentOptions {
            formats,
            ..SegmentOptions::new(target_us, seg_dir)
        };
        let mut cut_from = SystemTime::now();
        castwork_media::segment_file(&input, &probed2, &opts, |seg| {
            let now = SystemTime::now();
            let from = std::mem::replace(&mut cut_from, now);
            tx.blocking_send((seg, (from, now)))
                .map_err(|_| MediaError::Internal("upload stopped".into()))
        })
    });
    let mut uploaded = 0u64;
    // How much of the source the segments sent so far cover.
    let mut read_us = 0i64;
    let mut failed = Vec::new();
    let mut completed: Option<String> = None;
    // What was sent and received per segment, for the broadcaster's own check.
    let mut outputs: crate::verify::Outputs = Default::default();
    loop {
        let (seg, cut_from) = tokio::select! {
            seg = rx.recv() => match seg {
                Some(s) => s,
                None => break,
            },
            () = cancelled(&req.cancel) => {
                progress.finish();
                return Err(aborted(relay.link, &req.stream, relay.session, uploaded, anyhow::anyhow!("cancelled")).await);
            }
            _ = shutdown.cancelled() => {
                progress.finish();
                if uploaded == 0 {
                    abort(&mut relay.link, &req.stream, relay.session, "interrupted before any segment was sent").await;
                    bail!("interrupted: stream {} was closed before any segment was sent", req.stream);
                }
                end_early(&mut relay.link, &req.stream, relay.session, uploaded).await;
                bail!("interrupted: stream {} was closed with the {uploaded} segments already sent", req.stream);
            }
        };
        let (seq, duration_us) = (seg.seq, seg.duration_us);
        match relay.send(seg, cut_from).await {
            Ok(object) => {
                outputs.insert(seq, (object, Vec::new(), None));
            }
            Err(e) => {
                progress.finish();
                return Err(aborted(relay.link, &req.stream, relay.session, uploaded, e).await);
            }
        }
        uploaded += 1;
        read_us += duration_us;
        progress.uploaded(seq, duration_us as f64 / 1e6);
        // Keep up with events so the transcoded bar moves while we upload.
        loop {
            match relay.try_event().await {
                Ok(Some(e)) => {
                    note_event(&e, &mut progress, &mut failed, &mut completed, &mut outputs)
                }
                Ok(None) => break,
                Err(e) => {
                    progress.finish();
                    return Err(aborted(relay.link, &req.stream, relay.session, uploaded, e).await);
                }
            }
        }
        report(&req.progress, None, uploaded, &outputs, &failed);
    }
    let summary = match cutter.await? {
        Ok(s) => s,
        Err(e) => {
            progress.finish();
            let e = anyhow::anyhow!(cut_failure(
                &req.input.display().to_string(),
                &e.to_string(),
                read_us,
                meta.duration_us
            ));
            return Err(aborted(relay.link, &req.stream, relay.session, uploaded, e).await);
        }
    };
    progress.set_total(summary.segments);
    report(
        &req.progress,
        Some(summary.segments),
        uploaded,
        &outputs,
        &failed,
    );
    if summary.sparse_keyframes {
        progress.println(&format!(
            "note: keyframes are sparse, so segments run up to {:.1} s instead of {:.1} s; encode the source with a keyframe every {:.0} s for even segments",
            summary.longest_us as f64 / 1e6,
            req.segment_secs,
            req.segment_secs
        ));
    }
    if summary.dropped_frames > 0 {
        progress.println(&format!(
            "note: dropped {} frames before the first point a decoder can start from (they \
             cannot be decoded)",
            summary.dropped_frames
        ));
    }
    if summary.refused_cuts > 0 {
        progress.println(&format!(
            "note: {} keyframes are not clean starting points (a decoder starting there \
             reports errors), so the segments before them run longer",
            summary.refused_cuts
        ));
    }
    if let Err(e) = relay.end(summary.segments).await {
        progress.finish();
        return Err(aborted(relay.link, &req.stream, relay.session, uploaded, e).await);
    }
    if !req.wait {
        progress.finish();
        relay.link.close().await;
        return Ok(PushOutcome {
            segments: uploaded,
            failed,
            master_playlist: None,
            playback_url,
            verified: 0,
            evidence: Vec::new(),
        });
    }
    let give_up = req.wait_timeout.map(|t| tokio::time::Instant::now() + t);
    let mut poll = tokio::time::interval(STATUS_POLL);
    poll.tick().await;
    while completed.is_none() {
        let e = tokio::select! {
            e = relay.next_event() => e?,
            () = cancelled(&req.cancel) => {
                progress.finish();
                return Err(aborted(relay.link, &req.stream, relay.session, uploaded, anyhow::anyhow!("cancelled")).await);
            }
            _ = shutdown.cancelled() => {
                progress.finish();
                bail!("interrupted while waiting: the cluster goes on transcoding stream {}", req.stream);
            }
            () = sleep_until(give_up) => {
                progress.finish();
                bail!(
                    "gave up waiting after {} s (--timeout): the cluster goes on transcoding \
                     stream {}; `orchestrator status` shows how far it is",
                    req.wait_timeout.unwrap_or_default().as_secs(),
                    req.stream
                );
            }
            // With a copy, completion is when everything is copied.
            _ = poll.tick(), if req.orchestrator_url.is_some() && !relay.keeps_copy() => {
                let url = req.orchestrator_url.as_deref().unwrap_or_default();
                if let Some((master, lost)) = completed_at(url, &req.stream, relay.session).await {
                    completed = Some(master);
                    failed = lost;
                }
                continue;
            }
        };
        if let StreamEvent::StreamFailed { reason, .. } = &e {
            progress.finish();
            relay.link.close().await;
            bail!(
                "stream {} failed: {reason}; the cluster deleted its segments and renditions",
                req.stream
            );
        }
        note_event(&e, &mut progress, &mut failed, &mut completed, &mut outputs);
        report(
            &req.progress,
            Some(summary.segments),
            uploaded,
            &outputs,
            &failed,
        );
    }
    progress.finish();
    relay.link.close().await;
    let (evidence, verified) = match (&req.verify, &req.storage) {
        (Some((policy, penalty, orchestrator)), Some(storage)) => {
            crate::verify::verify(
                storage,
                &req.stream,
                &outputs,
                probed.metadata.rotation,
                *policy,
                penalty,
                orchestrator,
            )
            .await?
        }
        _ => (Vec::new(), 0),
    };
    Ok(PushOutcome {
        segments: summary.segments,
        failed,
        master_playlist: completed,
        playback_url,
        verified,
        evidence,
    })
}

#[cfg(test)]
mod completion_tests {
    use super::*;

    fn outcome(failed: Vec<(u64, String)>) -> PushOutcome {
        PushOutcome {
            segments: 3,
            failed,
            master_playlist: Some("streams/s/index.m3u8".into()),
            playback_url: None,
            verified: 0,
            evidence: Vec::new(),
        }
    }

    #[test]
    fn a_stream_with_a_failed_segment_is_reported_incomplete() {
        assert!(!outcome(Vec::new()).is_incomplete());
        let o = outcome(vec![(1, "source segment cannot be decoded".into())]);
        assert!(o.is_incomplete());
        assert_eq!(
            o.incomplete_report("s"),
            "stream s is incomplete: 1 of 3 segments failed, so its playlists list only the \
             other 2:\n  segment 1: source segment cannot be decoded"
        );
        assert_ne!(EXIT_INCOMPLETE, 1);
        assert_ne!(EXIT_INCOMPLETE, 2);
    }
}
