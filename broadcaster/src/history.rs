//! What this broadcaster saw of each orchestrator across pushes (`push --orch-history
//! FILE`): per address, the pushes completed there and the times a push left it (it
//! refused or did not admit the stream, stopped answering, failed the stream or a segment,
//! or served a bad rendition). Selection weighs each orchestrator by its success rate,
//! (completed + 1) / (completed + failed + 2), so one never seen counts as even and one
//! that keeps failing is drawn less and less, as go-livepeer's broadcaster suspends the
//! orchestrators that failed it.
//!
//! The file is JSON, rewritten whole (through a temporary file and a rename) after each
//! change, and keeps the [`MAX_ENTRIES`] orchestrators seen most recently. Pushes that run
//! at once with the same file may each overwrite the other's last change.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The most orchestrators the file keeps.
pub const MAX_ENTRIES: usize = 1000;

/// What was seen of one orchestrator.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub completed: u64,
    pub failed: u64,
    /// When it was last counted (Unix seconds).
    #[serde(default)]
    pub seen_unix: u64,
}

impl Record {
    /// (completed + 1) / (completed + failed + 2): 0.5 for one never seen.
    pub fn success_rate(&self) -> f64 {
        (self.completed as f64 + 1.0) / ((self.completed + self.failed) as f64 + 2.0)
    }
}

/// The history file.
#[derive(Debug, Clone)]
pub struct History {
    path: PathBuf,
}

impl History {
    pub fn at(path: PathBuf) -> History {
        History { path }
    }

    /// Every orchestrator's record; none when the file is missing, and none (said on
    /// stderr) when it cannot be read.
    pub fn load(&self) -> BTreeMap<String, Record> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                eprintln!(
                    "--orch-history {}: not readable ({e}); starting afresh",
                    self.path.display()
                );
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Counts a push completed at `url`, or one that left it (`completed` false). A
    /// failure to write is said on stderr and changes nothing else.
    pub fn record(&self, url: &str, completed: bool) {
        let mut all = self.load();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let r = all
            .entry(url.trim_end_matches('/').to_string())
            .or_default();
        match completed {
            true => r.completed += 1,
            false => r.failed += 1,
        }
        r.seen_unix = now;
        while all.len() > MAX_ENTRIES {
            let oldest = all
                .iter()
                .min_by_key(|(_, r)| r.seen_unix)
                .map(|(u, _)| u.clone());
            match oldest {
                Some(u) => all.remove(&u),
                None => break,
            };
        }
        if let Err(e) = self.write(&all) {
            eprintln!("--orch-history {}: not written: {e}", self.path.display());
        }
    }

    fn write(&self, all: &BTreeMap<String, Record>) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let part = self
            .path
            .with_extension(format!("{}.part", std::process::id()));
        std::fs::write(&part, serde_json::to_vec_pretty(all)?)?;
        std::fs::rename(&part, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_and_rate_the_orchestrators() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::at(dir.path().join("state/history.json"));
        assert!(h.load().is_empty());
        h.record("http://a/", true);
        h.record("http://a", true);
        h.record("http://b", false);
        let all = h.load();
        assert_eq!((all["http://a"].completed, all["http://a"].failed), (2, 0));
        assert_eq!((all["http://b"].completed, all["http://b"].failed), (0, 1));
        assert!((all["http://a"].success_rate() - 0.75).abs() < 1e-9);
        assert!((all["http://b"].success_rate() - 1.0 / 3.0).abs() < 1e-9);
        assert!((Record::default().success_rate() - 0.5).abs() < 1e-9);
        // A file that is not ours is started afresh, not trusted.
        std::fs::write(dir.path().join("state/history.json"), b"{not json").unwrap();
        assert!(h.load().is_empty());
        h.record("http://c", false);
        assert_eq!(h.load().len(), 1);
    }
}
