//! Live playlists: segments are listed strictly in order as they complete, a missing one
//! holds back later ones until its deadline (or, if it never arrived, for the hold bound)
//! and is then left out with a discontinuity. Media playlists only ever grow at the end and
//! lose lines at the front (a sliding window with `EXT-X-MEDIA-SEQUENCE` and
//! `EXT-X-DISCONTINUITY-SEQUENCE`); their target duration is fixed when the stream starts.
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

/// Target duration of a live stream whose broadcaster did not say.
pub const DEFAULT_TARGET_DURATION_SECS: u64 = 6;

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
        let win = window(&entries, self.live_window);
        let seqs: Vec<u64> = win.segments.iter().map(|(s, _)| *s).collect();
        let mut records = self.state.segments_by_seq(stream, &seqs).await?;
        for (r, (_, disc)) in records.iter_mut().zip(&win.segments) {
            if let Some(r) = r.as_mut() {
                r.discontinuity = *disc;
            }
        }
        if !records.is_empty() {
            let spec = Spec {
                name: "index",
                header: MediaPlaylist {
                    vod: false,
                    ended,
                    media_sequence: win.media_sequence,
                    discontinuity_sequence: win.discontinuity_sequence,
                    fixed_target_duration: Some(
                        rec.target_duration_secs
                            .unwrap_or(DEFAULT_TARGET_DURATION_SECS),
                    ),
                    segments: Vec::new(),
                },
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
    fn percentiles_of_a_sample() {
        assert_eq!(percentiles(vec![]), None);
        assert_eq!(percentiles(vec![5]), Some((5, 5)));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentiles(v), Some((51, 95)));
    }
}
