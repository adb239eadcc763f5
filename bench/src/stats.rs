//! Summaries of alternating benchmark runs: median, min and max of each side and of the
//! per-pair ratio, printed as a table row.

/// Median, min and max of a sample (`None` when it is empty).
pub fn summary(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    Some((median, s[0], s[s.len() - 1]))
}

/// One figure: our side (A) against its baseline (B), runs paired in order.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub ours: Vec<f64>,
    pub baseline: Vec<f64>,
    pub target: String,
}

impl Figure {
    fn cell(&self, v: &[f64]) -> String {
        match summary(v) {
            Some((m, lo, hi)) => format!("{m:.2} {u} ({lo:.2}-{hi:.2})", u = self.unit),
            None => "-".into(),
        }
    }

    /// Ratios of paired runs, ours over the baseline.
    pub fn ratios(&self) -> Vec<f64> {
        self.ours
            .iter()
            .zip(&self.baseline)
            .filter(|(_, b)| **b > 0.0)
            .map(|(a, b)| a / b)
            .collect()
    }

    /// A Markdown table row: figure, ours, baseline, ratio, target.
    pub fn row(&self) -> String {
        let ratio = match summary(&self.ratios()) {
            Some((m, lo, hi)) => format!("**{m:.2}** ({lo:.2}-{hi:.2})"),
            None => "-".into(),
        };
        format!(
            "| {} | {} | {} | {} | {} |",
            self.name,
            self.cell(&self.ours),
            self.cell(&self.baseline),
            ratio,
            self.target
        )
    }
}

/// The header of the table [`Figure::row`] fills.
pub const HEADER: &str = "| figure | Castwork median (min-max) | baseline median (min-max) | ratio median (min-max) | target |\n|---|---|---|---|---|";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(summary(&[]), None);
        assert_eq!(summary(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        let f = Figure {
            name: "x".into(),
            unit: "s",
            ours: vec![1.0, 2.0, 3.0],
            baseline: vec![2.0, 2.0, 0.0],
            target: "<= 1.00".into(),
        };
        assert_eq!(f.ratios(), vec![0.5, 1.0]);
        assert_eq!(
            f.row(),
            "| x | 2.00 s (1.00-3.00) | 2.00 s (0.00-2.00) | **0.75** (0.50-1.00) | <= 1.00 |"
        );
    }
}
