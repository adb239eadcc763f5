//! Progress for `push`: bars on a terminal, plain lines otherwise (logs, CI).

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Progress {
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
    uploaded: u64,
    transcoded: u64,
    total: Option<u64>,
}

impl Progress {
    pub fn new(estimate: u64) -> Self {
        let bars = std::io::stderr().is_terminal().then(|| {
            let m = MultiProgress::new();
            let style = ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let up = m.add(
                ProgressBar::new(estimate)
                    .with_style(style.clone())
                    .with_prefix("uploaded"),
            );
            let tr = m.add(
                ProgressBar::new(estimate)
                    .with_style(style)
                    .with_prefix("transcoded"),
            );
            (m, up, tr)
        });
        Progress {
            bars,
            uploaded: 0,
            transcoded: 0,
            total: None,
        }
    }

    fn total_text(&self) -> String {
        self.total
            .map_or_else(|| "?".to_string(), |t| t.to_string())
    }

    pub fn uploaded(&mut self, seq: u64, secs: f64) {
        self.uploaded += 1;
        match &self.bars {
            Some((_, up, _)) => {
                if up.length().unwrap_or(0) < self.uploaded {
                    up.set_length(self.uploaded);
                }
                up.set_position(self.uploaded);
            }
            None => eprintln!(
                "uploaded segment {seq} ({secs:.2} s): {}/{}",
                self.uploaded,
                self.total_text()
            ),
        }
    }

    pub fn transcoded(&mut self, seq: u64, failed: bool) {
        self.transcoded += 1;
        match &self.bars {
            Some((_, _, tr)) => {
                if tr.length().unwrap_or(0) < self.transcoded {
                    tr.set_length(self.transcoded);
                }
                tr.set_position(self.transcoded);
            }
            None => eprintln!(
                "{} segment {seq}: {}/{}",
                if failed { "FAILED" } else { "transcoded" },
                self.transcoded,
                self.total_text()
            ),
        }
    }

    pub fn set_total(&mut self, total: u64) {
        self.total = Some(total);
        if let Some((_, up, tr)) = &self.bars {
            up.set_length(total);
            tr.set_length(total);
        }
    }

    /// Prints a line without breaking the bars.
    pub fn println(&self, line: &str) {
        match &self.bars {
            Some((m, _, _)) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some((_, up, tr)) = &self.bars {
            up.finish();
            tr.finish();
        }
    }
}
