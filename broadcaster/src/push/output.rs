//! The push's own copy of its stream, in an object store of its own (`push --output-dir
//! DIR`, or the job API's store): every rendition, copied from the orchestrator as soon as
//! its segment is transcoded and checked on the way (its key's hash, a readable MPEG-TS
//! that starts on a keyframe at the rung's size), and the HLS playlists written over the
//! copies at the end, under `streams/NAME/` as an orchestrator writes them. A stream whose
//! segments came from two orchestrators plays from here as one.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use castwork_cluster::Storage;
use castwork_protocol::playlist::{
    render_master, start_on_middle, Bitrates, MediaPlaylist, PlaylistSegment, Variant,
};
use castwork_protocol::{RenditionRef, Rung};

/// One rendition file of the copy.
struct Copied {
    rung: String,
    /// File name in the rung's folder.
    name: String,
    size: u64,
}

pub(super) struct Output {
    store: Storage,
    stream: String,
    rungs: Vec<Rung>,
    /// Copied segments: their duration and renditions.
    done: BTreeMap<u64, (i64, Vec<Copied>)>,
    /// RFC 6381 codecs of each rung, read from its first copy.
    codecs: HashMap<String, String>,
}

impl Output {
    /// The copy of `stream` in `store`, which must not hold that stream already.
    pub async fn new(store: &Storage, stream: &str) -> anyhow::Result<Output> {
        let master = castwork_protocol::master_playlist_key(stream);
        if store
            .size(&master)
            .await
            .with_context(|| format!("reading the copy's store {store}"))?
            .is_some()
        {
            bail!("{store} already holds stream {stream}: copy it elsewhere or name it anew");
        }
        Ok(Output {
            store: store.clone(),
            stream: stream.to_string(),
            rungs: Vec::new(),
            done: BTreeMap::new(),
            codecs: HashMap::new(),
        })
    }

    /// The rungs the orchestrator planned (each one's playlist lists its renditions); their
    /// names become folder names, so only plain ones are taken.
    pub fn set_rungs(&mut self, rungs: &[Rung]) -> anyhow::Result<()> {
        for r in rungs {
            let plain = r
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !plain || r.name.is_empty() || r.name.len() > 100 || r.name.starts_with('.') {
                bail!("the orchestrator planned a rung named {:?}", r.name);
            }
        }
        self.rungs = rungs.to_vec();
        Ok(())
    }

    /// Why `renditions` cannot be one segment's: a rung it never planned, or one twice.
    pub fn unplanned(&self, renditions: &[RenditionRef]) -> Option<String> {
        let mut seen = std::collections::HashSet::new();
        renditions.iter().find_map(|r| {
            if !self.rungs.iter().any(|x| x.name == r.rung) {
                Some(format!("a rendition of rung {:?} it never planned", r.rung))
            } else if !seen.insert(&r.rung) {
                Some(format!("rung {} twice", r.rung))
            } else {
                None
            }
        })
    }

    /// Checks the renditions of segment `seq` (`duration_us` long) and writes them into the
    /// copy; an error says what is wrong with them, and nothing of the segment is kept.
    pub async fn keep(
        &mut self,
        seq: u64,
        duration_us: i64,
        renditions: Vec<(RenditionRef, Bytes)>,
    ) -> anyhow::Result<()> {
        let mut files = Vec::new();
        for (r, data) in renditions {
            let Some(rung) = self.rungs.iter().find(|x| x.name == r.rung) else {
                bail!(
                    "segment {seq}: a rendition of rung {} it never planned",
                    r.rung
                );
            };
            let hash = rendition_hash(&self.stream, &r)
                .with_context(|| format!("segment {seq}: its rendition key {}", r.key))?;
            if !castwork_protocol::secret::sha256_hex(&data).starts_with(hash) {
                bail!(
                    "segment {seq}: rendition {} is not the one its key names (SHA-256)",
                    r.key
                );
            }
            let name = format!("{seq}.{hash}.ts");
            // Read by FFmpeg from a file of its own before it goes into the copy.
            let part = tempfile::Builder::new()
                .suffix(".ts")
                .tempfile()
                .context("a temporary file for a rendition")?;
            tokio::fs::write(part.path(), &data)
                .await
                .with_context(|| format!("writing {}", part.path().display()))?;
            let checked = part.path().to_path_buf();
            let info = tokio::task::spawn_blocking(move || {
                castwork_media::inspect(&checked, castwork_media::SEGMENT_FORMATS)
            })
            .await?;
            drop(part);
            let problem = match &info {
                Err(e) => Some(e.to_string()),
                Ok(i) if !i.starts_with_keyframe => Some("it does not start on a keyframe".into()),
                Ok(i) if (i.width, i.height) != (rung.width, rung.height) => Some(format!(
                    "it is {}x{}, not the rung's {}x{}",
                    i.width, i.height, rung.width, rung.height
                )),
                Ok(_) => None,
            };
            if let Some(p) = problem {
                bail!("segment {seq}: rendition {} is unusable: {p}", r.key);
            }
            if let Ok(i) = info {
                self.codecs
                    .entry(r.rung.clone())
                    .or_insert_with(|| i.codecs());
            }
            let key = format!("streams/{}/{}/{name}", self.stream, r.rung);
            let size = data.len() as u64;
            self.store
                .put(&key, data)
                .await
                .with_context(|| format!("copying into {key}"))?;
            files.push(Copied {
                rung: r.rung.clone(),
                name,
                size,
            });
        }
        self.done.insert(seq, (duration_us, files));
        Ok(())
    }

    /// Writes each rung's media playlist and the master playlist over the copies of
    /// segments `0..total` (a missing one is a gap: the next gets a discontinuity); answers
    /// the master playlist's key.
    pub async fn write(&self, total: u64) -> anyhow::Result<String> {
        let mut variants = Vec::new();
        for rung in &self.rungs {
            let mut playlist = MediaPlaylist {
                vod: true,
                ended: true,
                ..Default::default()
            };
            let (mut gap, mut rates) = (false, Bitrates::default());
            for seq in 0..total {
                let file = self.done.get(&seq).and_then(|(d, files)| {
                    files.iter().find(|f| f.rung == rung.name).map(|f| (d, f))
                });
                let Some((duration_us, file)) = file else {
                    gap = !playlist.segments.is_empty();
                    continue;
                };
                let d = *duration_us as f64 / 1e6;
                playlist.segments.push(PlaylistSegment {
                    uri: file.name.clone(),
                    duration_secs: d,
                    discontinuity: gap,
                    program_date_time_ms: None,
                });
                gap = false;
                rates.add(file.size, d);
            }
            if playlist.segments.is_empty() {
                continue;
            }
            let key = castwork_protocol::media_playlist_key(&self.stream, &rung.name);
            self.store
                .put(&key, playlist.render().into())
                .await
                .with_context(|| format!("writing {key}"))?;
            variants.push(Variant {
                uri: format!("{}/index.m3u8", rung.name),
                bandwidth: rates.peak(),
                average_bandwidth: rates.average(),
                width: rung.width,
                height: rung.height,
                codecs: self.codecs.get(&rung.name).cloned().unwrap_or_default(),
                frame_rate: rung.max_fps.as_f64(),
            });
        }
        start_on_middle(&mut variants);
        let master = castwork_protocol::master_playlist_key(&self.stream);
        self.store
            .put(&master, render_master(&variants).into())
            .await
            .with_context(|| format!("writing {master}"))?;
        Ok(master)
    }
}

/// The hash a rendition's key names (`streams/STREAM/RUNG/SEQ.ATTEMPT.HASH.ts`, the first
/// 16 hex digits of its SHA-256), checked to be a key of this stream and rung.
fn rendition_hash<'a>(stream: &str, r: &'a RenditionRef) -> anyhow::Result<&'a str> {
    let name = r
        .key
        .strip_prefix(&format!("streams/{stream}/{}/", r.rung))
        .context("not a key of this stream and rung")?;
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        [_, _, hash, "ts"] if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(hash)
        }
        _ => bail!("not SEQ.ATTEMPT.HASH.ts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_plain_planned_rungs_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = Storage::from_url(&format!("file://{}", dir.path().display())).unwrap();
        let mut out = Output::new(&store, "s").await.unwrap();
        let rungs = castwork_protocol::plan_ladder(
            &castwork_protocol::parse_profiles("P144p30fps16x9,P240p30fps16x9").unwrap(),
            &castwork_protocol::SourceMetadata::upright(640, 360, 30),
        )
        .rungs;
        out.set_rungs(&rungs).unwrap();
        let r = |rung: &str| RenditionRef {
            rung: rung.into(),
            key: String::new(),
            width: 0,
            height: 0,
        };
        assert_eq!(
            out.unplanned(&[r("P144p30fps16x9"), r("P240p30fps16x9")]),
            None
        );
        assert!(out
            .unplanned(&[r("P144p30fps16x9"), r("P144p30fps16x9")])
            .is_some());
        assert!(out.unplanned(&[r("P1080p")]).is_some());
        for bad in ["../up", "a/b", "..", ""] {
            let mut odd = rungs.clone();
            odd[0].name = bad.into();
            assert!(out.set_rungs(&odd).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rendition_key_names_its_hash() {
        let r = |key: &str| RenditionRef {
            rung: "P144p".into(),
            key: key.into(),
            width: 256,
            height: 144,
        };
        let ok = r("streams/s/P144p/3.1.0123456789abcdef.ts");
        assert_eq!(rendition_hash("s", &ok).unwrap(), "0123456789abcdef");
        for bad in [
            "streams/other/P144p/3.1.0123456789abcdef.ts",
            "streams/s/P240p/3.1.0123456789abcdef.ts",
            "streams/s/P144p/3.1.0123.ts",
            "streams/s/P144p/3.1.0123456789abcdeg.ts",
            "streams/s/P144p/../3.1.0123456789abcdef.ts",
        ] {
            assert!(rendition_hash("s", &r(bad)).is_err(), "{bad}");
        }
    }
}
