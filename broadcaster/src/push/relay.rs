//! Where a push's segments go: the orchestrator that admitted the stream and, over HTTP,
//! the spare orchestrators to move to.
//!
//! Before any segment is sent, an orchestrator that refuses the stream, does not admit it
//! in time or does not answer is left for the next spare. With an output directory
//! ([`super::output`]) the push also moves mid-stream: it copies every rendition as soon as
//! its segment is transcoded and keeps each source segment until then, so when the
//! orchestrator stops answering (for `--failover-after`), resolves none of the waiting
//! segments (for `--stall-after`), fails the stream, fails a
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
use castwork_cluster::Storage;
use castwork_media::CutSegment;
use castwork_protocol::{
    FailedSegment, IngestMessage, ObjectRef, Rung, StreamEnded, StreamEvent, StreamStarted,
};
use uuid::Uuid;

use super::output::Output;
use super::route::{
    admit_at, open_route, retire, retry_for, upload_segment, Admission, Failover, Pay, Route,
};
use super::PushRequest;
use crate::history::History;
use crate::link::Link;
use crate::payer::{Payer, TestTickets};

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
    failover: Failover,
    /// When a segment there was last resolved (or the push got there).
    progressed: tokio::time::Instant,
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
    history: Option<History>,
}

impl Relay {
    /// Starts the stream (`start`, whose session is set here) at the first orchestrator of
    /// `req` that admits it, and answers its admission.
    pub async fn start(
        req: &PushRequest,
        start: StreamStarted,
        (ext, fps): (&'static str, f64),
    ) -> anyhow::Result<(Relay, Admission)> {
        let mut out = match &req.copy_to {
            Some(store) => Some(Output::new(store, &req.stream).await?),
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
                    let retry = retry_for(out.is_some(), &spares, &req.failover);
                    match open_route(&route, &start, retry, req.admit_timeout).await {
                        Ok((link, session, a)) => break (link, session, a, route.payer),
                        Err(e) => {
                            if let Some(h) = &req.history {
                                h.record(&route.url, false);
                            }
                            let Some(next) = spares.pop_front() else {
                                return Err(e);
                            };
                            eprintln!(
                                "orchestrator {}: left out: {e:#}; trying {}",
                                route.url, next.url
                            );
                            route = next;
                        }
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
        if let Some(o) = &mut out {
            o.set_rungs(&admission.rungs)?;
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
            failover: req.failover,
            progressed: tokio::time::Instant::now(),
            here: Vec::new(),
            open: BTreeMap::new(),
            out,
            ext,
            fps,
            total: None,
            ended_here: false,
            history: req.history.clone(),
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
            let sent = self.send_here(&seg, data, cut).await;
            return sent.map_err(|e| self.gave_up(e));
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
                Err(e) => return Err(self.gave_up(e)),
            }
        }
    }

    /// A failure the push cannot move on from, counted against the orchestrator.
    fn gave_up(&self, e: anyhow::Error) -> anyhow::Error {
        if let Some(url) = self.link.orchestrator() {
            self.count(url, false);
        }
        e
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
            self.count(&from, false);
            let Some(next) = self.spares.pop_front() else {
                bail!("{why}; no other orchestrator is left to move the stream to");
            };
            eprintln!(
                "orchestrator {from}: {why}; moving the stream to {} ({} segments not yet \
                 copied go again)",
                next.url,
                self.open.len()
            );
            let retry = retry_for(true, &self.spares, &self.failover);
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
            self.progressed = tokio::time::Instant::now();
            for o in self.open.values_mut() {
                o.here = false;
                o.object = None;
            }
            return Ok(());
        }
    }

    /// Forgets open segment `seq` (copied, or failed for good) and the source kept for it.
    async fn forget(&mut self, seq: u64) {
        if let Some(o) = self.open.remove(&seq) {
            let _ = tokio::fs::remove_file(&o.seg.path).await;
        }
    }

    /// Counts a push completed at `url`, or one that left it, in the history.
    fn count(&self, url: &str, completed: bool) {
        if let (Some(h), true) = (&self.history, self.link.is_http()) {
            h.record(url, completed);
        }
    }

    /// The stream's next event (its segment numbers the stream's own), copying renditions
    /// and moving on as the module says. With a copy it is not cancel-safe (an event taken
    /// and half copied would be lost): the push stops waiting on it only to end.
    pub async fn next_event(&mut self) -> anyhow::Result<StreamEvent> {
        loop {
            let taken = match self.next_or_stalled().await {
                Ok(e) => self.take(e).await,
                Err(e) => Err(e),
            };
            if let Some(e) = self.handled(taken).await? {
                return Ok(e);
            }
        }
    }

    /// The link's next event or, with a copy and spares, an error once the push's
    /// segments there have waited [`Failover::stalled`] without one resolved.
    async fn next_or_stalled(&mut self) -> anyhow::Result<StreamEvent> {
        let stall = match self.failover.stalled {
            Some(s) if self.can_move() && !self.open.is_empty() => s,
            _ => return self.link.next_event().await,
        };
        // Cancelling a read of the link loses nothing: over HTTP its events are read by
        // index, and only one taken whole is handed out.
        match tokio::time::timeout_at(self.progressed + stall, self.link.next_event()).await {
            Ok(e) => e,
            Err(_) => bail!(
                "none of the {} segments waiting there was transcoded in {} s",
                self.open.len(),
                stall.as_secs()
            ),
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
            Err(e) => Err(self.gave_up(e)),
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
                    // Checked before anything is fetched: at most one rendition per rung.
                    if let Some(why) = out.unplanned(&renditions) {
                        bail!("segment {seq}: its event names {why}");
                    }
                    let mut copies = Vec::new();
                    for r in &renditions {
                        copies.push((r.clone(), self.link.fetch_output(&r.key).await?));
                    }
                    out.keep(seq, open.seg.duration_us, copies).await?;
                    self.progressed = tokio::time::Instant::now();
                    self.forget(seq).await;
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
                self.progressed = tokio::time::Instant::now();
                if let Some(o) = self.open.get_mut(&seq) {
                    o.failures += 1;
                    if o.failures == 1 && can_move {
                        bail!("segment {seq} failed there: {message}");
                    }
                    self.forget(seq).await;
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
                // (Without a copy nothing is open.)
                for f in &failed {
                    self.forget(f.seq).await;
                }
                let Some(out) = &self.out else {
                    if let Some(url) = self.link.orchestrator() {
                        self.count(url, true);
                    }
                    return Ok(Some(StreamEvent::StreamCompleted {
                        stream,
                        segments,
                        master_playlist,
                        failed,
                    }));
                };
                if !self.open.is_empty() {
                    bail!(
                        "it called the stream complete without {} of its segments",
                        self.open.len()
                    );
                }
                if let Some(url) = self.link.orchestrator() {
                    self.count(url, true);
                }
                let total = self.total.unwrap_or(segments);
                let master = out.write(total).await?;
                Ok(Some(StreamEvent::StreamCompleted {
                    stream,
                    segments: total,
                    master_playlist: master,
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
