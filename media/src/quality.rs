//! Quality check of a rendition against its source segment: the luma PSNR of pictures
//! picked over the whole rendition (its first, middle and last pictures, and more at
//! positions the checker draws at random), each against the source picture with the same
//! time, turned upright and scaled as the transcoder does. It tells a real encode
//! (30-50 dB) from garbage, black pictures or another video (under 15 dB), wherever in the
//! segment they are; it is not a perceptual score.

use std::collections::BTreeSet;
use std::path::Path;

use ffmpeg_next::{codec, format::Pixel, frame, media, software::scaling, Packet, Rational};

use crate::inspect::open_restricted;
use crate::{bad, ts_to_us, MediaError};

/// A source picture matches a rendition picture when their times differ by at most this:
/// the transcoder keeps the source's timestamps (a frame rate cap drops pictures, it does
/// not move them), and this covers the rounding of two time bases.
const SAME_TIME_US: u64 = 1_000;

/// How many pictures a check draws at random, beside the first, middle and last.
pub const RANDOM_PICTURES: usize = 3;

/// The score of one picked picture of a rendition.
#[derive(Debug, Clone, PartialEq)]
pub struct PictureScore {
    /// The picture's time, in microseconds.
    pub at_us: i64,
    /// Its luma PSNR against the source picture of the same time; `None` when the source
    /// has no picture at that time (the rendition's timestamps are not the source's).
    pub psnr_db: Option<f64>,
}

/// The scores of the picked pictures, in time order.
#[derive(Debug, Clone, Default)]
pub struct QualityScore {
    pub pictures: Vec<PictureScore>,
}

impl QualityScore {
    /// The first picture that fails `min_db` (no matching source picture, or under it).
    pub fn failure(&self, min_db: f64) -> Option<&PictureScore> {
        self.pictures
            .iter()
            .find(|p| p.psnr_db.is_none_or(|db| db < min_db))
    }

    /// The lowest score, for reports.
    pub fn worst_db(&self) -> Option<f64> {
        self.pictures
            .iter()
            .filter_map(|p| p.psnr_db)
            .min_by(f64::total_cmp)
    }

    /// Why the rendition fails `min_db`, in words, or `None` when it passes. A rendition
    /// with no picture fails.
    pub fn verdict(&self, min_db: f64) -> Option<String> {
        if self.pictures.is_empty() {
            return Some("no picture to compare".to_string());
        }
        let f = self.failure(min_db)?;
        let at = f.at_us as f64 / 1e6;
        let n = self.pictures.len();
        Some(match f.psnr_db {
            Some(db) => format!(
                "luma PSNR {db:.1} dB at {at:.3} s, under {min_db} dB ({n} pictures compared)"
            ),
            None => format!("the picture at {at:.3} s has no source picture at that time"),
        })
    }
}

/// The times of a rendition's video pictures, in microseconds, in order (read from its
/// packets: nothing is decoded).
fn picture_times(path: &Path, formats: &str) -> Result<Vec<i64>, MediaError> {
    let mut ictx = open_restricted(path, formats)?;
    let stream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| MediaError::BadInput(format!("{}: no video stream", path.display())))?;
    let (index, tb) = (stream.index(), stream.time_base());
    let mut times = BTreeSet::new();
    let mut packet = Packet::empty();
    let what = path.display().to_string();
    while crate::read_packet(&mut ictx, &mut packet, &what)? {
        if packet.stream() == index {
            if let Some(pts) = packet.pts() {
                times.insert(ts_to_us(pts, tb));
            }
        }
    }
    Ok(times.into_iter().collect())
}

/// Which pictures of `n` to compare: the first, the middle and the last, and `random`
/// more drawn from `seed` (a value the party being checked cannot know).
fn pick(n: usize, random: usize, seed: u64) -> BTreeSet<usize> {
    let mut picks = BTreeSet::new();
    if n == 0 {
        return picks;
    }
    picks.extend([0, n / 2, n - 1]);
    let mut state = seed;
    for _ in 0..random {
        // splitmix64: spreads any seed, even 0, over the whole range.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        picks.insert((z % n as u64) as usize);
    }
    picks
}

/// Decodes the video of `path` and keeps, for each time in `wanted`, the decoded picture
/// with that time (within [`SAME_TIME_US`]), or the last picture for a time past it.
fn pictures_at(
    path: &Path,
    formats: &str,
    wanted: &[i64],
) -> Result<Vec<Option<(i64, frame::Video)>>, MediaError> {
    let mut ictx = open_restricted(path, formats)?;
    let stream = ictx
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| MediaError::BadInput(format!("{}: no video stream", path.display())))?;
    let (index, tb): (usize, Rational) = (stream.index(), stream.time_base());
    let mut decoder = codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().video())
        .map_err(|e| bad("unreadable video stream", e))?;
    let mut found: Vec<Option<(i64, frame::Video)>> = vec![None; wanted.len()];
    // The last picture decoded and its time: buffers swap, nothing is copied for it.
    let mut last: Option<i64> = None;
    let mut last_frame = frame::Video::empty();
    let mut packet = Packet::empty();
    let mut decoded = frame::Video::empty();
    let what = path.display().to_string();
    let mut take = |decoder: &mut ffmpeg_next::decoder::Video,
                    found: &mut Vec<Option<(i64, frame::Video)>>,
                    last: &mut Option<i64>,
                    last_frame: &mut frame::Video| {
        while decoder.receive_frame(&mut decoded).is_ok() {
            let ts = ts_to_us(decoded.timestamp().or(decoded.pts()).unwrap_or(0), tb);
            for (slot, want) in found.iter_mut().zip(wanted) {
                if slot.is_none() && ts.abs_diff(*want) <= SAME_TIME_US {
                    *slot = Some((ts, decoded.clone()));
                }
            }
            if last.is_none_or(|l| ts >= l) {
                *last = Some(ts);
                std::mem::swap(last_frame, &mut decoded);
            }
        }
    };
    while crate::read_packet(&mut ictx, &mut packet, &what)? {
        if packet.stream() == index {
            let _ = decoder.send_packet(&packet);
            take(&mut decoder, &mut found, &mut last, &mut last_frame);
        }
    }
    let _ = decoder.send_eof();
    take(&mut decoder, &mut found, &mut last, &mut last_frame);
    if let Some(l) = last {
        for (slot, want) in found.iter_mut().zip(wanted) {
            if slot.is_none() && *want > l {
                *slot = Some((l, last_frame.clone()));
            }
        }
    }
    Ok(found)
}

/// A luma plane: `width` x `height` bytes, rows `stride` apart.
struct Luma<'a> {
    data: &'a [u8],
    stride: usize,
    width: usize,
    height: usize,
}

impl Luma<'_> {
    fn of(f: &frame::Video) -> Luma<'_> {
        Luma {
            data: f.data(0),
            stride: f.stride(0),
            width: f.width() as usize,
            height: f.height() as usize,
        }
    }

    fn at(&self, x: usize, y: usize) -> u8 {
        self.data[y * self.stride + x]
    }

    /// The plane turned by `rotation` degrees clockwise (0, 90, 180 or 270), as the
    /// transcoder's `transpose=clock`, `hflip,vflip` and `transpose=cclock` turn it.
    fn rotated(&self, rotation: u32) -> Vec<u8> {
        let (w, h) = (self.width, self.height);
        let mut out = Vec::with_capacity(w * h);
        match rotation {
            90 => {
                for y in 0..w {
                    out.extend((0..h).map(|x| self.at(y, h - 1 - x)));
                }
            }
            180 => {
                for y in 0..h {
                    out.extend((0..w).map(|x| self.at(w - 1 - x, h - 1 - y)));
                }
            }
            270 => {
                for y in 0..w {
                    out.extend((0..h).map(|x| self.at(w - 1 - y, x)));
                }
            }
            _ => {
                for y in 0..h {
                    out.extend((0..w).map(|x| self.at(x, y)));
                }
            }
        }
        out
    }
}

/// PSNR of a rendition's luma plane against an upright source plane of the same size
/// (tightly packed), in dB (100 for identical planes).
fn luma_psnr_of(upright: &[u8], r: &Luma<'_>) -> f64 {
    let mut sum = 0u64;
    for y in 0..r.height {
        let row = &r.data[y * r.stride..y * r.stride + r.width];
        let src = &upright[y * r.width..(y + 1) * r.width];
        sum += row
            .iter()
            .zip(src)
            .map(|(p, q)| u64::from(p.abs_diff(*q)).pow(2))
            .sum::<u64>();
    }
    let mse = sum as f64 / (r.width * r.height).max(1) as f64;
    if mse == 0.0 {
        100.0
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// A scaler's input format and size and its output size.
type ScaleKey = (Pixel, u32, u32, u32, u32);

/// Scores renditions of one source segment: in each, its first, middle and last pictures
/// and `random` more drawn from `seed`, each against the source picture with the same
/// time, turned upright for the source's clockwise display `rotation` and scaled to the
/// rendition's size. A picture past the source's last one (held there, in a rendition
/// whose audio outlasts its video) is compared with that last picture. The source is
/// decoded once for all of them.
pub fn score(
    source: &Path,
    source_formats: &str,
    renditions: &[impl AsRef<Path>],
    rotation: u32,
    random: usize,
    seed: u64,
) -> Result<Vec<QualityScore>, MediaError> {
    crate::init();
    let mut picked = Vec::with_capacity(renditions.len());
    for (i, rendition) in renditions.iter().enumerate() {
        let rendition = rendition.as_ref();
        let times = picture_times(rendition, "mpegts")?;
        let picks: Vec<i64> = pick(times.len(), random, seed.wrapping_add(i as u64))
            .into_iter()
            .map(|i| times[i])
            .collect();
        let pictures = pictures_at(rendition, "mpegts", &picks)?;
        picked.push((picks, pictures));
    }
    let wanted: Vec<i64> = picked
        .iter()
        .flat_map(|(p, _)| p.iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let src = pictures_at(source, source_formats, &wanted)?;
    let source_at = |t: i64| {
        wanted
            .binary_search(&t)
            .ok()
            .and_then(|i| src[i].as_ref())
            .map(|(_, f)| f)
    };
    let mut scalers: Vec<(ScaleKey, scaling::Context)> = Vec::new();
    let mut scores = Vec::with_capacity(picked.len());
    for (picks, out) in &picked {
        let mut pictures = Vec::with_capacity(picks.len());
        for (want, r) in picks.iter().zip(out) {
            let (Some((_, r)), Some(s)) = (r, source_at(*want)) else {
                pictures.push(PictureScore {
                    at_us: *want,
                    psnr_db: None,
                });
                continue;
            };
            // Scaled to the rendition's size before it is turned: the same pictures as
            // turning first, within a bilinear filter's rounding.
            let (w, h) = match rotation {
                90 | 270 => (r.height(), r.width()),
                _ => (r.width(), r.height()),
            };
            let key = (s.format(), s.width(), s.height(), w, h);
            let at = match scalers.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    let ctx = scaling::Context::get(
                        s.format(),
                        s.width(),
                        s.height(),
                        Pixel::YUV420P,
                        w,
                        h,
                        scaling::Flags::BILINEAR,
                    )
                    .map_err(|e| bad("scaling the source for the quality check", e))?;
                    scalers.push((key, ctx));
                    scalers.len() - 1
                }
            };
            let mut scaled = frame::Video::empty();
            scalers[at]
                .1
                .run(s, &mut scaled)
                .map_err(|e| bad("scaling the source for the quality check", e))?;
            let upright = Luma::of(&scaled).rotated(rotation);
            pictures.push(PictureScore {
                at_us: *want,
                psnr_db: Some(luma_psnr_of(&upright, &Luma::of(r))),
            });
        }
        scores.push(QualityScore { pictures });
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_cover_start_middle_and_end() {
        assert_eq!(pick(0, 3, 1), BTreeSet::new());
        assert_eq!(pick(1, 0, 1), BTreeSet::from([0]));
        assert_eq!(pick(90, 0, 7), BTreeSet::from([0, 45, 89]));
        let p = pick(90, 3, 7);
        assert!(p.is_superset(&BTreeSet::from([0, 45, 89])) && p.len() <= 6);
        assert!(p.iter().all(|i| *i < 90));
    }

    #[test]
    fn random_picks_follow_the_seed() {
        assert_eq!(pick(1000, 3, 42), pick(1000, 3, 42));
        let drawn: BTreeSet<BTreeSet<usize>> = (0..20).map(|s| pick(1000, 3, s)).collect();
        assert!(drawn.len() > 15, "seeds should draw different pictures");
    }

    #[test]
    fn planes_turn_as_the_transcoder_turns_them() {
        // 3 wide, 2 high:  1 2 3 / 4 5 6
        let data = [1u8, 2, 3, 0, 4, 5, 6, 0];
        let l = Luma {
            data: &data,
            stride: 4,
            width: 3,
            height: 2,
        };
        assert_eq!(l.rotated(0), vec![1, 2, 3, 4, 5, 6]);
        // transpose=clock: 4 1 / 5 2 / 6 3
        assert_eq!(l.rotated(90), vec![4, 1, 5, 2, 6, 3]);
        assert_eq!(l.rotated(180), vec![6, 5, 4, 3, 2, 1]);
        // transpose=cclock: 3 6 / 2 5 / 1 4
        assert_eq!(l.rotated(270), vec![3, 6, 2, 5, 1, 4]);
    }
}
