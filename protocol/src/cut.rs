//! Segment cut planning: where the broadcaster starts a new source segment.
//!
//! A segment starts at a video frame that can be decoded on its own (an IDR or closed-GOP
//! keyframe): the first such frame at or after the target duration. Frames before the first
//! such keyframe cannot be decoded and are dropped.

/// What to do with the next video frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutDecision {
    /// Not decodable yet (no keyframe seen): drop it.
    Drop,
    /// Starts the first segment.
    StartFirst,
    /// Closes the current segment and starts the next one with this frame.
    Cut,
    /// Belongs to the current segment.
    Continue,
}

/// Slack for timestamps that land a hair before the target (e.g. 1.99996 s at 90 kHz).
const SLACK_US: i64 = 1_000;

/// Decides cut points frame by frame and remembers the longest segment.
#[derive(Debug, Clone)]
pub struct CutPlanner {
    target_us: i64,
    start_us: Option<i64>,
    longest_us: i64,
    last_pts_us: Option<i64>,
}

impl CutPlanner {
    pub fn new(target_us: i64) -> Self {
        CutPlanner {
            target_us: target_us.max(1),
            start_us: None,
            longest_us: 0,
            last_pts_us: None,
        }
    }

    /// Feeds one video frame, in decode order, with its presentation time and whether a
    /// segment may start at it.
    pub fn on_video_frame(&mut self, pts_us: i64, cut_point: bool) -> CutDecision {
        let Some(start) = self.start_us else {
            if !cut_point {
                return CutDecision::Drop;
            }
            self.start_us = Some(pts_us);
            self.last_pts_us = Some(pts_us);
            return CutDecision::StartFirst;
        };
        let elapsed = pts_us - start;
        if cut_point && elapsed + SLACK_US >= self.target_us {
            self.longest_us = self.longest_us.max(elapsed);
            self.start_us = Some(pts_us);
            self.last_pts_us = Some(pts_us);
            return CutDecision::Cut;
        }
        self.last_pts_us = Some(self.last_pts_us.map_or(pts_us, |l| l.max(pts_us)));
        CutDecision::Continue
    }

    /// Start of the segment being built.
    pub fn segment_start_us(&self) -> Option<i64> {
        self.start_us
    }

    /// Notes the end of the last segment (its last frame's end time) for `longest_us`.
    pub fn finish(&mut self, end_us: i64) {
        if let Some(start) = self.start_us {
            self.longest_us = self.longest_us.max(end_us - start);
        }
    }

    /// Longest segment so far.
    pub fn longest_us(&self) -> i64 {
        self.longest_us
    }

    /// Whether keyframes were so sparse that a segment ran past 1.5x the target.
    pub fn keyframes_sparse(&self) -> bool {
        self.longest_us * 2 > self.target_us * 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CutDecision::*;

    fn run(frames: &[(i64, bool)], target: i64) -> (Vec<CutDecision>, CutPlanner) {
        let mut p = CutPlanner::new(target);
        let d = frames
            .iter()
            .map(|&(t, k)| p.on_video_frame(t, k))
            .collect();
        (d, p)
    }

    #[test]
    fn cuts_at_first_keyframe_past_target() {
        // keyframes at 0, 1.2, 3.04, 5.48 s (bikes.mp4): 2 s target cuts at 3.04 and 5.48.
        let f = [
            (0, true),
            (600_000, false),
            (1_200_000, true),
            (2_000_000, false),
            (3_040_000, true),
            (4_000_000, false),
            (5_480_000, true),
        ];
        let (d, p) = run(&f, 2_000_000);
        assert_eq!(
            d,
            vec![StartFirst, Continue, Continue, Continue, Cut, Continue, Cut]
        );
        assert_eq!(p.longest_us(), 3_040_000);
    }

    #[test]
    fn drops_frames_before_first_keyframe() {
        let (d, _) = run(
            &[
                (0, false),
                (40_000, false),
                (80_000, true),
                (120_000, false),
            ],
            2_000_000,
        );
        assert_eq!(d, vec![Drop, Drop, StartFirst, Continue]);
    }

    #[test]
    fn target_within_slack_cuts() {
        let (d, _) = run(&[(0, true), (1_999_989, true)], 2_000_000);
        assert_eq!(d, vec![StartFirst, Cut]);
    }

    #[test]
    fn single_keyframe_makes_one_long_segment() {
        let mut f: Vec<(i64, bool)> = (0..133).map(|i| (i * 40_000, false)).collect();
        f[0].1 = true;
        let (d, mut p) = run(&f, 2_000_000);
        assert_eq!(d.iter().filter(|x| **x == Cut).count(), 0);
        p.finish(133 * 40_000);
        assert_eq!(p.longest_us(), 5_320_000);
        assert!(p.keyframes_sparse());
    }

    #[test]
    fn non_keyframes_never_cut() {
        let (d, _) = run(
            &[(0, true), (5_000_000, false), (6_000_000, true)],
            2_000_000,
        );
        assert_eq!(d, vec![StartFirst, Continue, Cut]);
    }
}
