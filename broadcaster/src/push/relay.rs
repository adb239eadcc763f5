//! Where a push's segments go: the orchestrator that admitted the stream and, over HTTP,
//! the spare orchestrators to move to.
//!
//! Before any segment is sent, an orchestrator that refuses the stream, does not admit it
//! in time or does not answer is left for the next spare. With an output directory
//! ([`super::output`]) the push also moves mid-stream: it copies every rendition as soon as
//! its segment is transcoded and keeps each source segment until then, so when the
//! orchestrator stops answering (for `--failover-after`), fails the stream, fails a
//! segment after its own retries, calls the stream complete without some of its segments
//! or serves a rendition that is not what its event named, the push starts the stream on
//! the next spare and sends it the segments not yet copied, then the rest. There they are
//! numbered from 0 in time order; the renditions keep the source's timestamps, so the
//! playlists written over the copy run on across the move without a discontinuity.
//! A segment two orchestrators failed is failed for good.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use castwork_cluster::telemetry::Span;
use castwork_cluster::Storage;
use castwork_media::CutSegment;
use castwork_protocol::{
    FailedSegment, IngestMessage, ObjectRef, Rung, SegmentReady, SkippedRung, StoreIdentity,
    StreamEnded, StreamEvent, StreamStarted,
};
use uuid::Uuid;

use super::ending::abort;
use super::output::Output;
use super::PushRequest;
use crate::link::{Link, HTTP_RETRY_FOR};
use crate::payer::{Payer, TestTickets};

/// An orchestrator a push may go to over HTTP: its address, this broadcaster's key there
/// and, on-chain, the payer of its tickets.
#[derive(Debug, Clone)]
pub struct Route {
    pub url: String,
    pub key: String,
    pub payer: Option<Arc<Payer>>,
}

/// What an orchestrator answered when it admitted the stream.
pub(super) struct Admission {
    pub rungs: Vec<Rung>,
    pub skipped: Vec<SkippedRung>,
    pub playback_url: Option<String>,
    pub store: Option<StoreIdentity>,
}

/// A segment sent and not yet copied.
struct Open {
    seg: CutSegment,
    /// When its cut began and ended, for its trace.
    cut: (SystemTime, SystemTime),
    /// Its source object at the orchestrator it was last sent to.
    object: Option<ObjectRef>,
    /// Whether it was sent to the orchestrator the push is with now.
    here: bool,
    /// How many orchestrators failed it.
    failures: u32,
}

pub(super) struct Relay {
    pub link: Link,
    /// The push's session at the orchestrator it is with now.
    pub session: Uuid,
    /// The stream's start, sent again (under a new session) wherever it moves.
    start: StreamStarted,
    spares: VecDeque<Route>,
    payer: Option<Arc<Payer>>,
    storage: Option<Storage>,
    rungs: Vec<Rung>,
    admit_timeout: Duration,
    failover_after: Duration,
    /// The stream's number of each segment sent to this orchestrator, by its number here.
    here: Vec<u64>,
    /// With a copy: the segments sent and not yet copied, by the stream's number.
    open: BTreeMap<u64, Open>,
    out: Option<Output>,
    ext: &'static str,
    fps: f64,
    /// Segments in the stream, once it is cut; and whether this orchestrator was told.
    total: Option<u64>,
    ended_here: bool,
}

impl Relay {
    /// Starts the stream (`start`, whose session is set here) at the first orchestrator of
    /// `req` that admits it, and answers its admission.
    pub async fn start(
        req: &PushRequest,
        start: StreamStarted,
        (ext, fps): (&'static str, f64),
    ) -> anyhow::Result<(Relay, Admission)> {
        let out = match &req.output_dir {
            Some(dir) => Some(Output::new(dir, &req.stream)?),
            None => None,
        };
        let mut spares: VecDeque<Route> = req.spares.iter().cloned().collect();
        let (link, session, admission, payer) = match (&req.http_ingest, &req.storage) {
            (Some((url, key)), _) => {
                let mut route = Route {
                    url: url.clone(),
                    key: key.clone(),
                    payer: req.payer.clone(),
                };
                loop {
                    let retry = retry_for(out.is_some(), &spares, req.failover_after);
                    match open_route(&route, &start, retry, req.admit_timeout).await {
                        Ok((link, session, a)) => break (link, session, a, route.payer),
                        Err(e) => match spares.pop_front() {
                            Some(next) => {
                                eprintln!(
                                    "orchestrator {}: left out: {e:#}; trying {}",
                                    route.url, next.url
                                );
                                route = next;
                            }
                            None => return Err(e),
                        },
                    }
                }
            }
            (None, Some(_)) => {
                let session = Uuid::now_v7();
                let mut link = Link::open(&req.amqp_url, &req.stream, session).await?;
                let a = admit_at(&mut link, &start, session, req.admit_timeout).await?;
                (link, session, a, req.payer.clone())
            }
            (None, None) => bail!("no object store for the source segments"),
        };
        let mut out = out;
        if let Some(o) = &mut out {
            o.set_rungs(&admission.rungs);
        }
        let relay = Relay {
            link,
            session,
            start,
            spares,
            payer,
            storage: req.storage.clone(),
            rungs: admission.rungs.clone(),
            admit_timeout: req.admit_timeout,
            failover_after: req.failover_after,
            here: Vec::new(),
            open: BTreeMap::new(),
            out,
            ext,
            fps,
            total: None,
            ended_here: false,
        };
        Ok((relay, admission))
    }

    /// Whether the push keeps its own copy (and so may move mid-stream).
    pub fn keeps_copy(&self) -> bool {
        self.out.is_some()
    }

    fn can_move(&self) -> bool {
        self.out.is_some() && !self.spares.is_empty()
    }

    /// Sends segment `seg`, cut between `cut.0` and `cut.1`; answers its source object.
    /// Its file goes once sent or, with a copy, once its renditions are copied.
    pub async fn send(
        &mut self,
        seg: CutSegment,
        cut: (SystemTime, SystemTime),
    ) -> anyhow::Result<ObjectRef> {
        if self.out.is_none() {
            let data = Bytes::from(tokio::fs::read(&seg.path).await?);
            let _ = tokio::fs::remove_file(&seg.path).await;
            return self.send_here(&seg, data, cut).await;
        }
        let seq = seg.seq;
        self.open.insert(
            seq,
            Open {
                seg,
                cut,
                object: None,
                here: false,
                failures: 0,
            },
        );
        self.settle().await?;
        self.open
            .get(&seq)
            .and_then(|o| o.object.clone())
            .context("the segment was not sent")
    }

    /// The cut is done: `total` segments. Tells the orchestrator how many it has.
    pub async fn end(&mut self, total: u64) -> anyhow::Result<()> {
        self.total = Some(total);
        self.settle().await
    }

    /// Sends what this orchestrator lacks (and the stream's end, once cut), moving on to
    /// the next spare while that fails and one is left.
    async fn settle(&mut self) -> anyhow::Result<()> {
        loop {
            match self.flush().await {
                Ok(()) => return Ok(()),
                Err(e) if self.can_move() => self.move_on(format!("{e:#}")).await?,
                Err(e) => return Err(e),
            }
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        let unsent: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, o)| !o.here)
            .map(|(s, _)| *s)
            .collect();
        for seq in unsent {
            let Some(o) = self.open.get(&seq) else {
                continue;
            };
            let (seg, cut) = (o.seg.clone(), o.cut);
            let data = tokio::fs::read(&seg.path)
                .await
                .with_context(|| format!("reading the kept segment {}", seg.path.display()))?;
            let object = self.send_here(&seg, Bytes::from(data), cut).await?;
            if let Some(o) = self.open.get_mut(&seq) {
                o.object = Some(object);
                o.here = true;
            }
        }
        if let (Some(_), false) = (self.total, self.ended_here) {
            self.link
                .publish(&IngestMessage::StreamEnded(StreamEnded {
                    stream: self.start.stream.clone(),
                    session: self.session,
                    segments: self.here.len() as u64,
                    secret: String::new(),
                }))
                .await?;
            self.ended_here = true;
        }
        Ok(())
    }

    async fn send_here(
        &mut self,
        seg: &CutSegment,
        data: Bytes,
        cut: (SystemTime, SystemTime),
    ) -> anyhow::Result<ObjectRef> {
        let payment = match &self.payer {
            Some(p) => p
                .pay(&self.rungs, seg.frames, self.fps)
                .await
                .context("signing the segment's tickets")?,
            None => None,
        };
        let twice = seg.seq == 0
            && self.payer.as_ref().and_then(|p| p.test_tickets) == Some(TestTickets::Reuse);
        let object = upload_segment(
            &mut self.link,
            self.storage.as_ref(),
            (&self.start.stream, self.session),
            (self.here.len() as u64, self.ext),
            (seg, data),
            cut,
            Pay { payment, twice },
        )
        .await?;
        self.here.push(seg.seq);
        Ok(object)
    }

    /// Leaves this orchestrator (for `why`) for the first spare that admits the stream;
    /// what it lacks is sent by the next [`Relay::settle`].
    async fn move_on(&mut self, mut why: String) -> anyhow::Result<()> {
        let mut from = self
            .link
            .orchestrator()
            .unwrap_or("the orchestrator")
            .to_string();
        loop {
            let Some(next) = self.spares.pop_front() else {
                bail!("{why}; no other orchestrator is left to move the stream to");
            };
            eprintln!(
                "orchestrator {from}: {why}; moving the stream to {} ({} segments not yet \
                 copied go again)",
                next.url,
                self.open.len()
            );
            let retry = retry_for(true, &self.spares, self.failover_after);
            let opened = open_route(&next, &self.start, retry, self.admit_timeout).await;
            let (link, session, admission) = match opened {
                Ok(o) => o,
                Err(e) => {
                    (from, why) = (next.url, format!("{e:#}"));
                    continue;
                }
            };
            if admission.rungs != self.rungs {
                retire(link, &self.start.stream, session, "another ladder");
                (from, why) = (
                    next.url,
                    "it planned another ladder than the stream's".to_string(),
                );
                continue;
            }
            let old = std::mem::replace(&mut self.link, link);
            let old_session = std::mem::replace(&mut self.session, session);
            retire(
                old,
                &self.start.stream,
                old_session,
                &format!("moved to {}", next.url),
            );
            self.payer = next.payer.clone();
            self.here.clear();
            self.ended_here = false;
            for o in self.open.values_mut() {
                o.here = false;
                o.object = None;
            }
            return Ok(());
        }
    }

    /// The stream's next event (its segment numbers the stream's own), copying renditions
    /// and moving on as the module says.
    pub async fn next_event(&mut self) -> anyhow::Result<StreamEvent> {
        loop {
            let taken = match self.link.next_event().await {
                Ok(e) => self.take(e).await,
                Err(e) => Err(e),
            };
            if let Some(e) = self.handled(taken).await? {
                return Ok(e);
            }
        }
    }

    /// An event if one is waiting, as [`Relay::next_event`].
    pub async fn try_event(&mut self) -> anyhow::Result<Option<StreamEvent>> {
        while let Some(e) = self.link.try_event().await {
            let taken = self.take(e).await;
            if let Some(e) = self.handled(taken).await? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// The event to hand out, or none after moving on from a failure.
    async fn handled(
        &mut self,
        taken: anyhow::Result<Option<StreamEvent>>,
    ) -> anyhow::Result<Option<StreamEvent>> {
        match taken {
            Ok(e) => Ok(e),
            Err(e) if self.can_move() => {
                self.move_on(format!("{e:#}")).await?;
                self.settle().await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes one event of this orchestrator: renumbers it, copies what it names, and says
    /// (as an error) why to move on.
    async fn take(&mut self, e: StreamEvent) -> anyhow::Result<Option<StreamEvent>> {
        let here = |seq: u64| self.here.get(usize::try_from(seq).ok()?).copied();
        match e {
            StreamEvent::SegmentTranscoded {
                stream,
                seq,
                renditions,
                claim,
            } => {
                let Some(seq) = here(seq) else {
                    tracing::warn!(seq, "an event about a segment never sent there ignored");
                    return Ok(None);
                };
                if let Some(out) = &mut self.out {
                    let Some(open) = self.open.get(&seq) else {
                        return Ok(None);
                    };
                    let mut copies = Vec::new();
                    for r in &renditions {
                        copies.push((r.clone(), self.link.fetch_output(&r.key).await?));
                    }
                    out.keep(seq, open.seg.duration_us, copies).await?;
                    if let Some(o) = self.open.remove(&seq) {
                        let _ = tokio::fs::remove_file(&o.seg.path).await;
                    }
                }
                Ok(Some(StreamEvent::SegmentTranscoded {
                    stream,
                    seq,
                    renditions,
                    claim,
                }))
            }
            StreamEvent::SegmentFailed {
                stream,
                seq,
                message,
            } => {
                let Some(seq) = here(seq) else {
                    return Ok(None);
                };
                let can_move = self.can_move();
                if let Some(o) = self.open.get_mut(&seq) {
                    o.failures += 1;
                    if o.failures == 1 && can_move {
                        bail!("segment {seq} failed there: {message}");
                    }
                    if let Some(o) = self.open.remove(&seq) {
                        let _ = tokio::fs::remove_file(&o.seg.path).await;
                    }
                }
                Ok(Some(StreamEvent::SegmentFailed {
                    stream,
                    seq,
                    message,
                }))
            }
            StreamEvent::StreamCompleted {
                stream,
                segments,
                master_playlist,
                failed,
            } => {
                let failed: Vec<FailedSegment> = failed
                    .into_iter()
                    .filter_map(|f| {
                        Some(FailedSegment {
                            seq: here(f.seq)?,
                            message: f.message,
                        })
                    })
                    .collect();
                let Some(out) = &self.out else {
                    return Ok(Some(StreamEvent::StreamCompleted {
                        stream,
                        segments,
                        master_playlist,
                        failed,
                    }));
                };
                for f in &failed {
                    if let Some(o) = self.open.remove(&f.seq) {
                        let _ = tokio::fs::remove_file(&o.seg.path).await;
                    }
                }
                if !self.open.is_empty() {
                    bail!(
                        "it called the stream complete without {} of its segments",
                        self.open.len()
                    );
                }
                let total = self.total.unwrap_or(segments);
                let master = out.write(total)?;
                Ok(Some(StreamEvent::StreamCompleted {
                    stream,
                    segments: total,
                    master_playlist: master.display().to_string(),
                    failed,
                }))
            }
            StreamEvent::StreamFailed { reason, .. } if self.can_move() => {
                bail!("it failed the stream: {reason}")
            }
            other => Ok(Some(other)),
        }
    }
}

/// How long a request to an orchestrator is retried: the push's `--failover-after` while it
/// can move on from there, else long.
fn retry_for(copy: bool, spares: &VecDeque<Route>, failover_after: Duration) -> Duration {
    match copy && !spares.is_empty() {
        true => failover_after,
        false => HTTP_RETRY_FOR,
    }
}

/// Starts the stream at `route` under a new session: its link, session and admission.
async fn open_route(
    route: &Route,
    start: &StreamStarted,
    retry: Duration,
    admit_timeout: Duration,
) -> anyhow::Result<(Link, Uuid, Admission)> {
    let session = Uuid::now_v7();
    let mut link = Link::open_http(&route.url, &route.key, session, retry)?;
    match admit_at(&mut link, start, session, admit_timeout).await {
        Ok(a) => Ok((link, session, a)),
        Err(e) => {
            retire(link, &start.stream, session, &format!("{e:#}"));
            Err(e)
        }
    }
}

/// Aborts the stream at an orchestrator the push leaves, and closes the link, in the
/// background (one that does not answer is not waited for).
fn retire(mut link: Link, stream: &str, session: Uuid, reason: &str) {
    let (stream, reason) = (stream.to_string(), reason.to_string());
    tokio::spawn(async move {
        abort(&mut link, &stream, session, &reason).await;
        link.close().await;
    });
}

/// Publishes `start` (under `session`) and waits for the orchestrator's answer.
async fn admit_at(
    link: &mut Link,
    start: &StreamStarted,
    session: Uuid,
    timeout: Duration,
) -> anyhow::Result<Admission> {
    let mut start = start.clone();
    start.session = session;
    link.publish(&IngestMessage::StreamStarted(start)).await?;
    let admitted = tokio::time::timeout(timeout, async {
        loop {
            match link.next_event().await? {
                // Events of another push under the same name are not ours.
                StreamEvent::StreamAdmitted {
                    rungs,
                    skipped,
                    session: s,
                    playback_url,
                    store,
                    ..
                } if s == session => {
                    return Ok(Admission {
                        rungs,
                        skipped,
                        playback_url,
                        store,
                    })
                }
                StreamEvent::StreamRejected {
                    message,
                    session: s,
                    ..
                } if s == session => {
                    bail!("the orchestrator refused the stream: {message}")
                }
                _ => {}
            }
        }
    })
    .await;
    admitted.map_err(|_| {
        anyhow::anyhow!(
            "no orchestrator answered within {} s: is one running on this broker?",
            timeout.as_secs()
        )
    })?
}

/// What pays for a segment, and (tests only) whether to submit it twice.
struct Pay {
    payment: Option<castwork_protocol::payment::Payment>,
    twice: bool,
}

/// Stores segment `seg` (its bytes `data`) as number `seq` of the stream at the
/// orchestrator, and publishes its `segment_ready`; answers its source object.
async fn upload_segment(
    link: &mut Link,
    storage: Option<&Storage>,
    (stream, session): (&str, Uuid),
    (seq, ext): (u64, &str),
    (seg, data): (&CutSegment, Bytes),
    (cut_from, cut_to): (SystemTime, SystemTime),
    pay: Pay,
) -> anyhow::Result<ObjectRef> {
    // The segment's trace starts with its cut; its spans continue in the orchestrator and
    // the worker through the message headers.
    let span = Span::root(
        "segment",
        Some(cut_from),
        &[("stream", stream.to_string()), ("seq", seq.to_string())],
    );
    span.record(
        "cut",
        cut_from,
        cut_to,
        &[("frames", seg.frames.to_string())],
    );
    let upload = span.child("upload source", &[]);
    let object = link.store_source(storage, stream, (seq, ext), data).await?;
    upload.set("bytes", object.size.to_string());
    drop(upload);
    let publish = span.child("publish segment", &[]);
    let msg = IngestMessage::SegmentReady(SegmentReady {
        stream: stream.to_string(),
        session,
        seq,
        start_us: seg.start_us,
        duration_us: seg.duration_us,
        last_pts_us: seg.last_pts_us,
        frames: seg.frames,
        has_audio: seg.audio_packets > 0,
        object: object.clone(),
        arrived_unix_ms: None,
        discontinuity: false,
        payment: pay.payment,
        secret: String::new(),
    });
    link.publish_in(&msg, &publish).await?;
    if pay.twice {
        // Tests only: the same submission twice, as a broker redelivery would.
        link.publish_in(&msg, &publish).await?;
    }
    Ok(object)
}
