//! Live playlists: segments are listed strictly in order as they complete, a missing one
//! holds back later ones until its deadline (or, if it never arrived, for the hold bound)
//! and is then left out with a discontinuity. Media playlists only ever grow at the end and
//! lose lines at the front (a sliding window with `EXT-X-MEDIA-SEQUENCE` and
//! `EXT-X-DISCONTINUITY-SEQUENCE`). As RFC 8216 asks, the target duration is the longest
//! listed segment rounded to the nearest second (a 2 s GOP gives 2; it only ever grows, so
//! no listed `EXTINF` exceeds it), the window holds at least three target durations (players
//! hold back three from the live edge), and every segment carries
//! `EXT-X-PROGRAM-DATE-TIME`.
//! When the stream ends they get `EXT-X-ENDLIST`, and the whole recording is written as an
//! on-demand playlist set beside them.

use std::sync::Arc;
use std::time::Duration;

use castwork_protocol::{playlist::MediaPlaylist, StreamEvent};
use tracing::{info, warn};

use crate::metrics;
use crate::playlists::{self, Spec, RECORDING};
use crate::service::{HandleError, Orchestrator};
use crate::state::{now_unix_ms, SegmentRecord, StreamRecord};

/// How long a playlist writer may hold a stream's lock if it dies holding it.
const PLAYLIST_LOCK_TTL_MS: u64 = 20_000;

/// Listed segments read to fit a window of three target durations, beyond `--live-window`.
const WINDOW_REACH: usize = 30;

/// Target durations a live window holds at least (RFC 8216 6.2.2).
pub const WINDOW_TARGETS: u64 = 3;

/// The part of a live listing a media playlist shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Listed segments before the window.
    pub media_sequence: u64,
    /// Discontinuities attached to segments before the window.
    pub discontinuity_sequence: u64,
    /// Sequence numbers in the window, each with whether a discontinuity precedes it.
    pub segments: Vec<(u64, bool)>,
}

/// Computes the last `size` listed segments of a listing (see
/// [`crate::state::listed_key`]).
pub fn window(entries: &[String], size: usize) -> Window {
    let mut listed: Vec<(u64, bool)> = Vec::new();
    let mut gap = false;
    for e in entries {
        if e.starts_with('-') {
            gap = true;
            continue;
        }
        let mut parts = e.split(' ');
        let Some(seq) = parts.next().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let reconnect = parts.next() == Some("d");
        listed.push((seq, (gap && !listed.is_empty()) || reconnect));
        gap = false;
    }
    let start = listed.len().saturating_sub(size.max(1));
    Window {
        media_sequence: start as u64,
        discontinuity_sequence: listed[..start].iter().filter(|(_, d)| *d).count() as u64,
        segments: listed[start..].to_vec(),
    }
}

/// Where a live window starts among `durations` (seconds, oldest first): the shortest
/// suffix with at least `min_count` segments and `min_secs` seconds (all of them when there
/// are not that many yet), never before `floor` (a window only moves on).
pub fn fit_window(durations: &[f64], min_count: usize, min_secs: f64, floor: usize) -> usize {
    let (mut start, mut secs) = (durations.len(), 0.0);
    while start > floor && (durations.len() - start < min_count || secs < min_secs) {
        start -= 1;
        secs += durations[start];
    }
    start
}

/// `EXT-X-TARGETDURATION` for segments of these durations: the longest rounded to the
/// nearest second (RFC 8216 4.3.3.1), at least `floor` (a live one never shrinks) and 1.
pub fn target_duration(durations: &[f64], floor: u64) -> u64 {
    durations
        .iter()
        .map(|d| d.round() as u64)
        .fold(floor.max(1), u64::max)
}

/// Median and 95th percentile of a sample, in its unit.
pub fn percentiles(mut v: Vec<u64>) -> Option<(u64, u64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Some((at(0.5), at(0.95)))
}

impl Orchestrator {
    fn live_lock(&self, stream: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.live_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(stream.to_string()).or_default().clone()
    }

    /// Lists whatever can be listed of a live stream and rewrites its live playlists if
    /// anything changed. Playlist writes of one stream are serialised, so a slower writer
    /// never puts back an older playlist.
    pub async fn advance_live(&self, stream: &str) -> Result<(), HandleError> {
        let lock = self.live_lock(stream);
        let _guard = lock.lock().await;
        let Some(rec) = self.state.stream(stream).await? else {
            return Ok(());
        };
        if rec.state != "active" {
            return Ok(());
        }
        self.advance_locked(&rec, false).await
    }

    /// Advances and writes under the stream's lock in Redis, so orchestrators sharing the
    /// stream never write an older playlist over a newer one.
    async fn advance_locked(&self, rec: &StreamRecord, ended: bool) -> Result<(), HandleError> {
        let name = format!("playlists:{}", rec.stream);
        let Some(token) = self
            .state
            .lock(&name, PLAYLIST_LOCK_TTL_MS, Duration::from_secs(15))
            .await?
        else {
            return Err(HandleError::Retry(format!(
                "the playlist lock of {} stayed taken",
                rec.stream
            )));
        };
        let outcome = self.advance_and_write(rec, ended, (&name, &token)).await;
        self.state.unlock(&name, &token).await?;
        outcome
    }

    /// Lists and writes under the Redis lock `lock` (name, token), which is checked and
    /// renewed right before the playlists are put: a writer paused past the lock's TTL
    /// (another took over and wrote newer playlists) stops instead of putting back an older
    /// one.
    async fn advance_and_write(
        &self,
        rec: &StreamRecord,
        ended: bool,
        lock: (&str, &str),
    ) -> Result<(), HandleError> {
        let stream = rec.stream.as_str();
        let hold_ms = self.live_deadline.as_millis() as u64;
        let (listed, skipped) = self
            .state
            .advance_live(stream, now_unix_ms(), hold_ms)
            .await?;
        for seq in &skipped {
            warn!(stream, seq, "live segment skipped: it missed its deadline");
            metrics::SEGMENTS.with_label_values(&["skipped"]).inc();
            self.event(
                stream,
                &StreamEvent::SegmentSkipped {
                    stream: stream.to_string(),
                    seq: *seq,
                    reason: "missed its deadline".into(),
                },
            )
            .await?;
        }
        if listed.is_empty() && skipped.is_empty() && !ended {
            return Ok(());
        }
        let entries = self.state.listed(stream).await?;
        // Candidates: the newest listed segments, more than the window needs.
        let reach = window(&entries, self.live_window.max(WINDOW_REACH));
        let seqs: Vec<u64> = reach.segments.iter().map(|(s, _)| *s).collect();
        let mut records = self.state.segments_by_seq(stream, &seqs).await?;
        for (r, (_, disc)) in records.iter_mut().zip(&reach.segments) {
            if let Some(r) = r.as_mut() {
                r.discontinuity = *disc;
            }
        }
        let durations: Vec<f64> = records
            .iter()
            .map(|r| r.as_ref().map_or(0.0, |r| r.duration_us as f64 / 1e6))
            .collect();
        let (old_target, old_first) = self.state.live_playlist_marks(stream).await?;
        let target = target_duration(&durations, old_target.unwrap_or(0));
        let floor = usize::try_from(old_first.unwrap_or(0).saturating_sub(reach.media_sequence))
            .unwrap_or(usize::MAX)
            .min(durations.len());
        let start = fit_window(
            &durations,
            self.live_window,
            (WINDOW_TARGETS * target) as f64,
            floor,
        );
        let records = records.split_off(start);
        let first = reach.media_sequence + start as u64;
        let discontinuity_sequence = reach.discontinuity_sequence
            + reach.segments[..start].iter().filter(|(_, d)| *d).count() as u64;
        if !records.is_empty() {
            let spec = Spec {
                name: "index",
                header: MediaPlaylist {
                    vod: false,
                    ended,
                    media_sequence: first,
                    discontinuity_sequence,
                    fixed_target_duration: Some(target),
                    segments: Vec::new(),
                },
                dated: true,
            };
            if !self
                .state
                .renew_lock(lock.0, lock.1, PLAYLIST_LOCK_TTL_MS)
                .await?
            {
                return Err(HandleError::Retry(format!(
                    "lost the playlist lock of {stream} (this writer was held up past its \
                     {PLAYLIST_LOCK_TTL_MS} ms): not writing a playlist that may be older"
                )));
            }
            playlists::write(&self.storage, rec, &records, &spec).await?;
            self.state
                .set_live_playlist_marks(stream, target, first)
                .await?;
        }
        let now = now_unix_ms();
        for s in records.iter().flatten().filter(|s| listed.contains(&s.seq)) {
            observe_latency(stream, s, now);
        }
        Ok(())
    }

    /// Closes a live stream whose segments are all resolved: lists the rest, ends the live
    /// playlists and writes the whole recording as on-demand playlists. Returns the
    /// recording's master playlist key.
    pub async fn finish_live(&self, rec: &StreamRecord) -> Result<String, HandleError> {
        let lock = self.live_lock(&rec.stream);
        let _guard = lock.lock().await;
        self.advance_locked(rec, true).await?;
        let segments = self.state.segments(&rec.stream).await?;
        let master = playlists::write(&self.storage, rec, &segments, &Spec::vod(RECORDING)).await?;
        info!(
            stream = rec.stream,
            master, "live stream ended: recording written"
        );
        Ok(master)
    }

    /// Makes room for a new broadcast under the name of an ended live stream: its recording
    /// playlists are kept as `recording-SESSION.m3u8` (the segments they list stay where they
    /// are) and its state in Redis is forgotten.
    pub async fn archive_live(&self, old: &StreamRecord) -> Result<(), HandleError> {
        let tag = format!("{RECORDING}-{}", old.session);
        let base = format!("streams/{}", old.stream);
        for rung in &old.plan.rungs {
            self.copy_playlist(
                &format!("{base}/{}/{RECORDING}.m3u8", rung.name),
                &format!("{base}/{}/{tag}.m3u8", rung.name),
                None,
            )
            .await?;
        }
        let (from_uri, to_uri) = (format!("/{RECORDING}.m3u8"), format!("/{tag}.m3u8"));
        self.copy_playlist(
            &format!("{base}/{RECORDING}.m3u8"),
            &format!("{base}/{tag}.m3u8"),
            Some((&from_uri, &to_uri)),
        )
        .await?;
        if self.state.forget_stream(&old.stream, &old.session).await? {
            info!(
                stream = old.stream,
                archived = format!("{base}/{tag}.m3u8"),
                "the ended broadcast's recording is archived; a new broadcast takes the name"
            );
        }
        Ok(())
    }

    /// Copies a playlist, replacing `rewrite.0` by `rewrite.1` in it; a missing one is
    /// skipped.
    async fn copy_playlist(
        &self,
        from: &str,
        to: &str,
        rewrite: Option<(&str, &str)>,
    ) -> Result<(), castwork_cluster::StorageError> {
        let bytes = match self.storage.get(from).await {
            Ok(b) => b,
            Err(castwork_cluster::StorageError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let bytes = match rewrite {
            Some((a, b)) => String::from_utf8_lossy(&bytes).replace(a, b).into(),
            None => bytes,
        };
        self.storage.put(to, bytes).await
    }

    /// Forgets the playlist lock of a finished stream.
    pub fn drop_live_lock(&self, stream: &str) {
        let mut locks = self.live_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.remove(stream);
    }
}

fn observe_latency(stream: &str, s: &SegmentRecord, now: u64) {
    let Some(arrived) = s.arrived_ms else { return };
    let total = now.saturating_sub(arrived);
    let transcode = s.transcode_ms.unwrap_or(0).min(total);
    metrics::LIVE_LATENCY
        .with_label_values(&["total"])
        .observe(total as f64 / 1000.0);
    metrics::LIVE_LATENCY
        .with_label_values(&["transcode"])
        .observe(transcode as f64 / 1000.0);
    metrics::LIVE_LATENCY
        .with_label_values(&["overhead"])
        .observe((total - transcode) as f64 / 1000.0);
    tracing::debug!(
        stream,
        seq = s.seq,
        latency_ms = total,
        transcode_ms = transcode,
        "live segment listed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn window_counts_what_slid_out() {
        let e = entries(&["0", "1", "-2", "3", "4 d", "5", "-6", "-7", "8"]);
        let w = window(&e, 3);
        assert_eq!(w.media_sequence, 3, "0, 1 and 3 slid out");
        assert_eq!(w.discontinuity_sequence, 1, "the gap before 3 slid out");
        assert_eq!(w.segments, vec![(4, true), (5, false), (8, true)]);
        let all = window(&e, 100);
        assert_eq!(all.media_sequence, 0);
        assert_eq!(all.segments.len(), 6);
    }

    #[test]
    fn leading_gaps_need_no_discontinuity() {
        let w = window(&entries(&["-0", "-1", "2", "3"]), 5);
        assert_eq!(w.segments, vec![(2, false), (3, false)]);
        assert_eq!(window(&[], 5).segments, vec![]);
    }

    #[test]
    fn a_growing_listing_only_appends_lines() {
        // Each rendering of a longer listing keeps every line of the previous one after the
        // lines that slid out.
        let mut e = Vec::new();
        let mut last: Vec<(u64, bool)> = Vec::new();
        for i in 0..20u64 {
            e.push(if i % 7 == 3 {
                format!("-{i}")
            } else {
                i.to_string()
            });
            let w = window(&e, 4);
            let shown = &w.segments;
            let kept: Vec<_> = last.iter().filter(|x| shown.contains(x)).cloned().collect();
            assert_eq!(&shown[..kept.len()], &kept[..], "{i}");
            last = shown.clone();
        }
    }

    #[test]
    fn a_window_holds_three_target_durations_and_only_moves_on() {
        let twos = [2.0; 10];
        // Six 2 s segments cover 3 x 2 s; the window keeps --live-window of them anyway.
        assert_eq!(fit_window(&twos, 6, 6.0, 0), 4);
        assert_eq!(fit_window(&twos, 3, 6.0, 0), 7);
        // A 6 s target needs nine 2 s segments, whatever the count asks.
        assert_eq!(fit_window(&twos, 3, 18.0, 0), 1);
        // Not that many yet: all of them.
        assert_eq!(fit_window(&twos[..2], 3, 6.0, 0), 0);
        // Never back before what was already dropped.
        assert_eq!(fit_window(&twos, 3, 18.0, 5), 5);
        assert_eq!(fit_window(&[], 3, 6.0, 0), 0);
    }

    #[test]
    fn target_duration_is_the_longest_segment_rounded_and_never_shrinks() {
        // A 2 s GOP with millisecond jitter stays at 2.
        assert_eq!(target_duration(&[2.0, 2.001, 1.999, 2.033], 0), 2);
        assert_eq!(target_duration(&[2.0, 3.6], 0), 4);
        assert_eq!(target_duration(&[2.0], 4), 4);
        assert_eq!(target_duration(&[], 0), 1);
    }

    #[test]
    fn percentiles_of_a_sample() {
        assert_eq!(percentiles(vec![]), None);
        assert_eq!(percentiles(vec![5]), Some((5, 5)));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentiles(v), Some((51, 95)));
    }
}
