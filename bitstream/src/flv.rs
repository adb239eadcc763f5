//! Pure Rust FLV segmenter for live ingest: turns RTMP audio/video message bodies (which are
//! FLV tag bodies) into self-contained FLV files, one per keyframe-aligned segment.
//!
//! Every segment file starts with the FLV header and the latest video and AAC sequence
//! headers, so each one decodes on its own. Timestamps are unwrapped from RTMP's 32 bits and
//! rebased so that the first video keyframe lands at the caller's `base_ms`.

use std::time::SystemTime;

/// Largest segment file kept in memory before the stream is refused.
pub const MAX_SEGMENT_BYTES: usize = 64 << 20;

/// Largest FLV tag body (the tag header stores the size in 24 bits).
const MAX_TAG_BODY: usize = 0xFF_FFFF;

/// Frame duration assumed by [`FlvSegmenter::end_ms`] before two video frames were seen.
const DEFAULT_FRAME_MS: i64 = 33;

const TAG_AUDIO: u8 = 8;
const TAG_VIDEO: u8 = 9;
const CODEC_AVC: u8 = 7;
const SOUND_AAC: u8 = 10;

/// One finished segment: a complete FLV file.
#[derive(Debug, Clone)]
pub struct FlvSegment {
    /// A complete FLV file: header, sequence-header tags, then the segment's tags.
    pub bytes: Vec<u8>,
    /// 0, 1, 2... per segmenter.
    pub seq: u64,
    /// Rebased timestamp (the DTS written in the FLV tag) of the segment's first video keyframe.
    pub start_ms: i64,
    /// Next segment's start minus this start; `None` for the final segment from `finish()`.
    pub duration_ms: Option<i64>,
    /// When the last byte of this segment arrived: when the cut was decided.
    pub arrived: SystemTime,
    /// Whether the file holds any audio tag.
    pub has_audio: bool,
}

/// Why a stream cannot be segmented; the messages tell the streamer what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    /// HEVC/AV1 sent as "enhanced RTMP", which FFmpeg 5.1's FLV demuxer cannot read.
    #[error(
        "enhanced RTMP video (HEVC or AV1) is not supported: FFmpeg 5.1 cannot read it; \
         set the encoder to H.264"
    )]
    EnhancedRtmp,
    /// A segment grew past `max_ms` without a video keyframe to cut at.
    #[error(
        "keyframe interval too long: no video keyframe for {:.1} s (a segment may last at \
         most {:.1} s); set the encoder's keyframe interval to 2 s (OBS: Settings > Output > \
         Keyframe Interval = 2; ffmpeg: -g <2 x fps> or -force_key_frames \
         \"expr:gte(t,n_forced*2)\")",
        *gap_ms as f64 / 1000.0,
        *max_ms as f64 / 1000.0
    )]
    KeyframeIntervalTooLong {
        /// Time since the segment's last keyframe.
        gap_ms: i64,
        /// The configured limit.
        max_ms: i64,
    },
    /// A message too short for the header its first byte announces.
    #[error("malformed {kind} message: {len} bytes is too short for its header")]
    Truncated {
        /// "video" or "audio".
        kind: &'static str,
        /// The body length received.
        len: usize,
    },
    /// An AVC packet type other than 0, 1 or 2.
    #[error("malformed video message: unknown AVC packet type {0}")]
    UnknownAvcPacketType(u8),
    /// A message larger than an FLV tag can hold.
    #[error("{kind} message of {len} bytes is larger than an FLV tag can hold")]
    TagTooLarge {
        /// "video" or "audio".
        kind: &'static str,
        /// The body length received.
        len: usize,
    },
    /// A segment grew past [`MAX_SEGMENT_BYTES`].
    #[error(
        "segment grew past {} MiB: lower the bitrate or set the keyframe interval to 2 s",
        MAX_SEGMENT_BYTES >> 20
    )]
    SegmentTooLarge,
}

/// The segment being filled.
struct OpenSegment {
    bytes: Vec<u8>,
    start_ms: i64,
    last_key_ms: i64,
    has_audio: bool,
}

/// Cuts a live FLV tag stream into keyframe-aligned, self-contained FLV files.
pub struct FlvSegmenter {
    target_ms: i64,
    max_ms: i64,
    base_ms: i64,
    /// Last unwrapped input timestamp, for 32-bit wrap-around.
    last_in: Option<i64>,
    /// Added to unwrapped input timestamps; known once the first keyframe arrived.
    offset: Option<i64>,
    video_header: Option<Vec<u8>>,
    audio_header: Option<Vec<u8>>,
    open: Option<OpenSegment>,
    next_seq: u64,
    /// Latest rebased timestamp kept, and the last video frame's timestamp and duration.
    last_out: Option<i64>,
    last_video: Option<i64>,
    frame_ms: i64,
}

impl FlvSegmenter {
    /// A segmenter that cuts at the first video keyframe at least `target_ms` after the
    /// segment start, refuses a stream whose segment grows past `max_ms` without a keyframe,
    /// and rebases the timeline so that the first kept tag (the first video keyframe; all
    /// earlier tags are dropped) lands at `base_ms`.
    pub fn new(target_ms: i64, max_ms: i64, base_ms: i64) -> Self {
        Self {
            target_ms,
            max_ms,
            base_ms,
            last_in: None,
            offset: None,
            video_header: None,
            audio_header: None,
            open: None,
            next_seq: 0,
            last_out: None,
            last_video: None,
            frame_ms: DEFAULT_FRAME_MS,
        }
    }

    /// Takes a video message body with its RTMP timestamp. Returns the finished segment when
    /// this keyframe closes one.
    pub fn video(&mut self, ts_ms: u32, body: &[u8]) -> Result<Option<FlvSegment>, FlvError> {
        let Some(&b0) = body.first() else {
            return Ok(None);
        };
        if b0 & 0x80 != 0 {
            return Err(FlvError::EnhancedRtmp);
        }
        check_size("video", body)?;
        let frame_type = b0 >> 4;
        let (keyframe, seq_header) = if b0 & 0x0F == CODEC_AVC {
            if body.len() < 5 {
                return Err(FlvError::Truncated {
                    kind: "video",
                    len: body.len(),
                });
            }
            match body[1] {
                0 => (false, true),
                1 => (frame_type == 1, false),
                2 => (false, false),
                other => return Err(FlvError::UnknownAvcPacketType(other)),
            }
        } else {
            (frame_type == 1, false)
        };
        let ts = self.unwrap(ts_ms);

        if seq_header {
            self.video_header = Some(body.to_vec());
            if let Some(rel) = self.rebase(ts) {
                self.write(TAG_VIDEO, rel, body)?;
            }
            return Ok(None);
        }
        if keyframe && self.offset.is_none() {
            self.offset = Some(self.base_ms - ts);
        }
        let Some(rel) = self.rebase(ts) else {
            return Ok(None);
        };
        let mut finished = None;
        if keyframe {
            let cut = match &mut self.open {
                None => true,
                Some(seg) if rel - seg.start_ms >= self.target_ms => true,
                Some(seg) => {
                    seg.last_key_ms = rel;
                    false
                }
            };
            if cut {
                let next = self.start_segment(rel);
                finished = self.close(Some(next));
            }
        }
        if self.open.is_none() {
            return Ok(None);
        }
        if let Some(prev) = self.last_video {
            if rel > prev {
                self.frame_ms = rel - prev;
            }
        }
        self.last_video = Some(rel);
        self.write(TAG_VIDEO, rel, body)?;
        Ok(finished)
    }

    /// Takes an audio message body with its RTMP timestamp; audio never cuts.
    pub fn audio(&mut self, ts_ms: u32, body: &[u8]) -> Result<(), FlvError> {
        let Some(&b0) = body.first() else {
            return Ok(());
        };
        check_size("audio", body)?;
        let ts = self.unwrap(ts_ms);
        if b0 >> 4 == SOUND_AAC {
            let Some(&packet_type) = body.get(1) else {
                return Err(FlvError::Truncated {
                    kind: "audio",
                    len: body.len(),
                });
            };
            if packet_type == 0 {
                self.audio_header = Some(body.to_vec());
            }
        }
        match self.rebase(ts) {
            // Audio stamped before the first keyframe belongs to the dropped part.
            Some(rel) if rel >= self.base_ms => self.write(TAG_AUDIO, rel, body),
            _ => Ok(()),
        }
    }

    /// The publisher stopped: returns the open segment (with `duration_ms` `None`), if any.
    pub fn finish(&mut self) -> Option<FlvSegment> {
        self.close(None)
    }

    /// End of the rebased timeline so far: the last timestamp kept plus a frame duration,
    /// or `base_ms` when nothing was kept. A reconnecting publisher continues after it.
    pub fn end_ms(&self) -> i64 {
        self.last_out.map_or(self.base_ms, |t| t + self.frame_ms)
    }

    /// Unwraps a 32-bit RTMP timestamp relative to the previous one (either direction).
    fn unwrap(&mut self, ts_ms: u32) -> i64 {
        let ts = match self.last_in {
            None => i64::from(ts_ms),
            Some(last) => last + i64::from(ts_ms.wrapping_sub(last as u32) as i32),
        };
        self.last_in = Some(ts);
        ts
    }

    fn rebase(&self, ts: i64) -> Option<i64> {
        self.offset.map(|o| ts + o)
    }

    fn start_segment(&self, start_ms: i64) -> OpenSegment {
        let mut bytes = Vec::with_capacity(1 << 20);
        bytes.extend_from_slice(b"FLV\x01\x01\x00\x00\x00\x09\x00\x00\x00\x00");
        let mut seg = OpenSegment {
            bytes,
            start_ms,
            last_key_ms: start_ms,
            has_audio: false,
        };
        if let Some(h) = &self.video_header {
            write_tag(&mut seg.bytes, TAG_VIDEO, start_ms, h);
        }
        if let Some(h) = &self.audio_header {
            write_tag(&mut seg.bytes, TAG_AUDIO, start_ms, h);
            seg.has_audio = true;
        }
        seg
    }

    /// Appends a tag to the open segment (if any), enforcing the duration and size limits.
    fn write(&mut self, tag_type: u8, rel: i64, body: &[u8]) -> Result<(), FlvError> {
        let Some(seg) = &mut self.open else {
            return Ok(());
        };
        if rel - seg.start_ms > self.max_ms {
            let gap_ms = rel - seg.last_key_ms;
            // The open segment is already too long for the playlists: it is dropped.
            self.open = None;
            return Err(FlvError::KeyframeIntervalTooLong {
                gap_ms,
                max_ms: self.max_ms,
            });
        }
        if seg.bytes.len() + body.len() + 15 > MAX_SEGMENT_BYTES {
            return Err(FlvError::SegmentTooLarge);
        }
        write_tag(&mut seg.bytes, tag_type, rel, body);
        seg.has_audio |= tag_type == TAG_AUDIO;
        self.last_out = Some(self.last_out.map_or(rel, |t| t.max(rel)));
        Ok(())
    }

    /// Closes the open segment, replacing it with `next` (whose start gives the duration).
    fn close(&mut self, next: Option<OpenSegment>) -> Option<FlvSegment> {
        let duration_ms = next.as_ref().map(|n| n.start_ms);
        let mut seg = std::mem::replace(&mut self.open, next)?;
        if seg.has_audio {
            seg.bytes[4] |= 0x04;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Some(FlvSegment {
            bytes: seg.bytes,
            seq,
            start_ms: seg.start_ms,
            duration_ms: duration_ms.map(|next_start| next_start - seg.start_ms),
            arrived: SystemTime::now(),
            has_audio: seg.has_audio,
        })
    }
}

fn check_size(kind: &'static str, body: &[u8]) -> Result<(), FlvError> {
    if body.len() > MAX_TAG_BODY {
        return Err(FlvError::TagTooLarge {
            kind,
            len: body.len(),
        });
    }
    Ok(())
}

/// Writes one FLV tag: header, body and the trailing previous-tag size.
fn write_tag(out: &mut Vec<u8>, tag_type: u8, ts_ms: i64, body: &[u8]) {
    // The timeline is non-negative by construction; FLV timestamps are 32-bit and wrap.
    let ts = ts_ms.max(0) as u32;
    let len = body.len() as u32;
    out.push(tag_type);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&ts.to_be_bytes()[1..]);
    out.push((ts >> 24) as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(body);
    out.extend_from_slice(&(11 + len).to_be_bytes());
}

/// Walks a whole FLV file (what [`FlvSegmenter`] hands out): the 9-byte header and the
/// first previous-tag-size, then tags whose 11-byte headers, bodies and trailing
/// previous-tag-sizes agree, to the last byte. Returns the number of tags, or where the
/// file goes wrong.
pub fn check_file(bytes: &[u8]) -> Result<usize, String> {
    if bytes.len() < 13 || &bytes[..3] != b"FLV" {
        return Err("no FLV header".into());
    }
    let (mut at, mut tags) = (13, 0);
    while at < bytes.len() {
        let head = bytes
            .get(at..at + 11)
            .ok_or_else(|| format!("truncated tag header at {at}"))?;
        let size = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
        let end = at + 11 + size;
        let prev = bytes
            .get(end..end + 4)
            .ok_or_else(|| format!("truncated tag at {at}"))?;
        if u32::from_be_bytes([prev[0], prev[1], prev[2], prev[3]]) as usize != size + 11 {
            return Err(format!("tag at {at}: its previous-tag-size disagrees"));
        }
        at = end + 4;
        tags += 1;
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tag read back from a produced file.
    #[derive(Debug, PartialEq)]
    struct Tag {
        kind: u8,
        ts: u32,
        body: Vec<u8>,
    }

    /// Parses a whole FLV file, checking the header and every previous-tag size.
    fn parse(file: &[u8]) -> (u8, Vec<Tag>) {
        assert_eq!(&file[..3], b"FLV");
        assert_eq!(file[3], 1);
        assert_eq!(&file[5..13], &[0, 0, 0, 9, 0, 0, 0, 0]);
        let mut tags = Vec::new();
        let mut rest = &file[13..];
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
            let ts = u32::from_be_bytes([rest[7], rest[4], rest[5], rest[6]]);
            assert_eq!(&rest[8..11], &[0, 0, 0]);
            let body = rest[11..11 + len].to_vec();
            let prev = &rest[11 + len..15 + len];
            assert_eq!(
                u32::from_be_bytes(prev.try_into().unwrap()) as usize,
                11 + len
            );
            tags.push(Tag {
                kind: rest[0],
                ts,
                body,
            });
            rest = &rest[15 + len..];
        }
        (file[4], tags)
    }

    const AVC_HDR: &[u8] = &[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f];
    const AAC_HDR: &[u8] = &[0xAF, 0, 0x12, 0x10];

    fn key(n: u8) -> Vec<u8> {
        vec![0x17, 1, 0, 0, 0, n]
    }
    fn inter(n: u8) -> Vec<u8> {
        vec![0x27, 1, 0, 0, 0, n]
    }
    fn aac(n: u8) -> Vec<u8> {
        vec![0xAF, 1, n]
    }

    /// Feeds 30 fps video (keyframe every `gop` frames) with one AAC frame per video frame.
    fn feed(s: &mut FlvSegmenter, t0: u32, frames: u32, gop: u32) -> Vec<FlvSegment> {
        let mut out = Vec::new();
        for i in 0..frames {
            let ts = t0.wrapping_add(i * 1000 / 30);
            let body = if i % gop == 0 {
                key(i as u8)
            } else {
                inter(i as u8)
            };
            out.extend(s.video(ts, &body).unwrap());
            s.audio(ts, &aac(i as u8)).unwrap();
        }
        out
    }

    fn headers(s: &mut FlvSegmenter, ts: u32) {
        s.video(ts, AVC_HDR).unwrap();
        s.audio(ts, AAC_HDR).unwrap();
    }

    #[test]
    fn cuts_at_the_first_keyframe_after_the_target() {
        let mut s = FlvSegmenter::new(2000, 10_000, 0);
        headers(&mut s, 0);
        // Keyframes every 0.9 s: cuts at 2.7 s, 5.4 s.
        let segs = feed(&mut s, 0, 190, 27);
        let last = s.finish().unwrap();
        let starts: Vec<_> = segs.iter().map(|s| s.start_ms).collect();
        assert_eq!(starts, [0, 2700]);
        assert_eq!(segs[0].duration_ms, Some(2700));
        assert_eq!(segs[1].duration_ms, Some(2700));
        assert_eq!((last.seq, last.start_ms, last.duration_ms), (2, 5400, None));
        assert!(segs.iter().all(|s| s.has_audio));
        // Every frame ends up in exactly one segment.
        let frames: usize = segs
            .iter()
            .chain([&last])
            .map(|s| {
                parse(&s.bytes)
                    .1
                    .iter()
                    .filter(|t| t.body[0] & 0x0F == 7 && t.body[1] == 1)
                    .count()
            })
            .sum();
        assert_eq!(frames, 190);
        assert_eq!(s.end_ms(), 189 * 1000 / 30 + (6300 - 6266));
    }

    #[test]
    fn every_file_starts_with_the_sequence_headers() {
        let mut s = FlvSegmenter::new(1000, 10_000, 0);
        headers(&mut s, 0);
        let segs = feed(&mut s, 0, 95, 30);
        assert_eq!(segs.len(), 3);
        for seg in segs.iter().chain(s.finish().as_ref()) {
            let (flags, tags) = parse(&seg.bytes);
            assert_eq!(flags, 0x05);
            let start = seg.start_ms as u32;
            assert_eq!(
                tags[0],
                Tag {
                    kind: 9,
                    ts: start,
                    body: AVC_HDR.to_vec()
                }
            );
            assert_eq!(
                tags[1],
                Tag {
                    kind: 8,
                    ts: start,
                    body: AAC_HDR.to_vec()
                }
            );
            assert_eq!(tags[2].kind, 9);
            assert_eq!(tags[2].body[0], 0x17);
            assert_eq!(tags[2].ts, start);
        }
    }

    #[test]
    fn mid_stream_sequence_header_is_written_inline_and_repeated() {
        let mut s = FlvSegmenter::new(1000, 10_000, 0);
        headers(&mut s, 0);
        feed(&mut s, 0, 10, 30);
        let new_hdr = [0x17, 0, 0, 0, 0, 2, 0x4d];
        s.video(400, &new_hdr).unwrap();
        let segs = feed(&mut s, 433, 40, 30);
        let (_, first) = parse(&segs[0].bytes);
        assert!(first.iter().any(|t| t.body == new_hdr && t.ts == 400));
        assert_eq!(segs.len(), 1);
        let (_, second) = parse(&s.finish().unwrap().bytes);
        assert_eq!(second[0].body, new_hdr);
    }

    #[test]
    fn drops_everything_before_the_first_keyframe_and_rebases() {
        let mut s = FlvSegmenter::new(1000, 10_000, 50_000);
        headers(&mut s, 7000);
        s.audio(7000, &aac(1)).unwrap();
        assert!(s.video(7010, &inter(1)).unwrap().is_none());
        s.audio(7020, &aac(2)).unwrap();
        s.video(7100, &key(2)).unwrap();
        // Audio stamped before the keyframe but arriving after it is dropped too.
        s.audio(7090, &aac(3)).unwrap();
        s.audio(7110, &aac(4)).unwrap();
        s.video(7133, &inter(3)).unwrap();
        let seg = s.finish().unwrap();
        assert_eq!(seg.start_ms, 50_000);
        let (_, tags) = parse(&seg.bytes);
        let got: Vec<_> = tags
            .iter()
            .map(|t| (t.kind, t.ts, t.body.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (9, 50_000, AVC_HDR.to_vec()),
                (8, 50_000, AAC_HDR.to_vec()),
                (9, 50_000, key(2)),
                (8, 50_010, aac(4)),
                (9, 50_033, inter(3)),
            ]
        );
        assert_eq!(s.end_ms(), 50_033 + 33);
    }

    #[test]
    fn long_keyframe_interval_is_refused_with_advice() {
        let mut s = FlvSegmenter::new(2000, 5000, 0);
        headers(&mut s, 0);
        let mut err = None;
        for i in 0..300u32 {
            let body = if i % 240 == 0 { key(0) } else { inter(0) };
            if let Err(e) = s.video(i * 1000 / 30, &body) {
                err = Some(e);
                break;
            }
        }
        let msg = err.expect("refused").to_string();
        assert!(msg.contains("keyframe interval too long"), "{msg}");
        assert!(msg.contains("no video keyframe for 5.0 s"), "{msg}");
        assert!(msg.contains("Keyframe Interval = 2"), "{msg}");
        assert!(msg.contains("-g <2 x fps>"), "{msg}");
    }

    #[test]
    fn enhanced_rtmp_is_refused() {
        let mut s = FlvSegmenter::new(2000, 5000, 0);
        // IsExHeader | keyframe, PacketTypeSequenceStart, FourCC "hvc1".
        let err = s.video(0, b"\x90hvc1\x01").unwrap_err();
        assert_eq!(err, FlvError::EnhancedRtmp);
        assert!(err.to_string().contains("set the encoder to H.264"));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let mut s = FlvSegmenter::new(2000, 5000, 0);
        assert!(s.video(0, &[]).unwrap().is_none());
        s.audio(0, &[]).unwrap();
        assert!(matches!(
            s.video(0, &[0x17, 1]),
            Err(FlvError::Truncated { .. })
        ));
        assert!(matches!(
            s.audio(0, &[0xAF]),
            Err(FlvError::Truncated { .. })
        ));
        assert!(matches!(
            s.video(0, &[0x17, 9, 0, 0, 0]),
            Err(FlvError::UnknownAvcPacketType(9))
        ));
        let huge = vec![0x27; MAX_TAG_BODY + 1];
        assert!(matches!(
            s.video(0, &huge),
            Err(FlvError::TagTooLarge { .. })
        ));
        // Other classic codecs pass through, keyed by the frame type.
        s.video(0, &[0x12, 0xAA]).unwrap();
        assert_eq!(s.finish().unwrap().start_ms, 0);
    }

    #[test]
    fn oversized_segment_is_refused() {
        let mut s = FlvSegmenter::new(2000, 100_000, 0);
        s.video(0, &key(0)).unwrap();
        let mut big = vec![0x27, 1, 0, 0, 0];
        big.resize(8 << 20, 0);
        let result = (1..10).try_for_each(|i| s.video(i * 33, &big).map(drop));
        assert_eq!(result, Err(FlvError::SegmentTooLarge));
    }

    #[test]
    fn timestamps_unwrap_across_32_bits() {
        let mut s = FlvSegmenter::new(1000, 10_000, 0);
        headers(&mut s, u32::MAX - 1500);
        let segs = feed(&mut s, u32::MAX - 1500, 120, 30);
        let starts: Vec<_> = segs.iter().map(|s| s.start_ms).collect();
        assert_eq!(starts, [0, 1000, 2000]);
        let (_, tags) = parse(&s.finish().unwrap().bytes);
        assert_eq!(tags[0].ts, 3000);
        assert!(tags.windows(2).all(|w| w[0].ts <= w[1].ts));
    }

    #[test]
    fn segments_continue_a_timeline() {
        let mut s = FlvSegmenter::new(1000, 10_000, 0);
        headers(&mut s, 100);
        feed(&mut s, 100, 60, 30);
        let end = s.end_ms();
        assert_eq!(end, 1966 + 33);
        let mut next = FlvSegmenter::new(1000, 10_000, end);
        headers(&mut next, 0);
        feed(&mut next, 0, 10, 30);
        assert_eq!(next.finish().unwrap().start_ms, end);
    }
}
