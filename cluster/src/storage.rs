//! The object store holding source segments, renditions and playlists: a local directory by
//! default, S3-compatible by URL.

use std::sync::Arc;

use bytes::Bytes;
use object_store::{
    aws::AmazonS3Builder, azure::MicrosoftAzureBuilder, gcp::GoogleCloudStorageBuilder,
    local::LocalFileSystem, path::Path, prefix::PrefixStore, Attribute, Attributes, ObjectStore,
    ObjectStoreExt, PutMode, PutOptions, PutPayload,
};

/// The object naming a store: a random id the first orchestrator to use the store writes,
/// so a process can tell whether another one's store is its own.
pub const STORE_ID_KEY: &str = ".castwork/store-id";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("invalid storage url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object store error on {key}: {source}")]
    Store {
        key: String,
        #[source]
        source: object_store::Error,
    },
}

/// A handle on the object store; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    description: String,
    /// Whether puts carry [`object_headers`] as object attributes (a bucket serves them;
    /// a local directory cannot keep them, and the playback servers set them instead).
    attributes: bool,
}

/// The `Content-Type` and `Cache-Control` an object is served with, by its key: media
/// segments are immutable (a rendition's key names its attempt and content hash), and
/// playlists and anything else may change (a source segment's key is reused when a failed
/// stream's name is pushed again).
pub fn object_headers(key: &str) -> (&'static str, &'static str) {
    const IMMUTABLE: &str = "public, max-age=31536000, immutable";
    const CHANGES: &str = "no-cache";
    let ext = key
        .rsplit('/')
        .next()
        .and_then(|f| f.rsplit_once('.'))
        .map(|(_, e)| e);
    let content_type = match ext {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        Some("mp4" | "m4s") => "video/mp4",
        Some("mkv") => "video/x-matroska",
        Some("aac") => "audio/aac",
        Some("json") => "application/json",
        Some("html") => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    };
    let segment = matches!(ext, Some("ts" | "mp4" | "m4s" | "mkv" | "aac"));
    let cache = if segment && !key.contains("/source/") {
        IMMUTABLE
    } else {
        CHANGES
    };
    (content_type, cache)
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl Storage {
    /// Opens `file://DIR` (created if missing), `s3://BUCKET[/PREFIX]`,
    /// `gs://BUCKET[/PREFIX]` or `az://CONTAINER[/PREFIX]`; a bucket's credentials and
    /// endpoint come from the environment as `object_store` reads them (`AWS_*`,
    /// `GOOGLE_*`, `AZURE_*`).
    pub fn from_url(url: &str) -> Result<Self, StorageError> {
        let bad = |reason: String| StorageError::BadUrl {
            url: url.to_string(),
            reason,
        };
        if let Some(dir) = url.strip_prefix("file://") {
            std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
            let abs = std::fs::canonicalize(dir).map_err(|e| bad(e.to_string()))?;
            let store = LocalFileSystem::new_with_prefix(&abs).map_err(|e| bad(e.to_string()))?;
            return Ok(Storage {
                store: Arc::new(store),
                description: format!("file://{}", abs.display()),
                attributes: false,
            });
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad(SCHEMES.into()));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket name".into()));
        }
        let root = format!("{scheme}://{bucket}");
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" => Arc::new(
                AmazonS3Builder::from_env()
                    .with_url(root)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "gs" => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(root)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "az" => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(root)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            _ => return Err(bad(SCHEMES.into())),
        };
        let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(store, prefix.trim_matches('/')))
        };
        Ok(Storage {
            store,
            description: url.to_string(),
            attributes: true,
        })
    }

    fn path(key: &str) -> Result<Path, StorageError> {
        Path::parse(key).map_err(|e| StorageError::Store {
            key: key.to_string(),
            source: e.into(),
        })
    }

    fn err(key: &str, e: object_store::Error) -> StorageError {
        match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound(key.to_string()),
            source => StorageError::Store {
                key: key.to_string(),
                source,
            },
        }
    }

    /// Stores an object; in a bucket, with its [`object_headers`].
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let mut opts = PutOptions::default();
        if self.attributes {
            let (content_type, cache) = object_headers(key);
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, content_type.into());
            attributes.insert(Attribute::CacheControl, cache.into());
            opts.attributes = attributes;
        }
        self.store
            .put_opts(&Self::path(key)?, PutPayload::from(data), opts)
            .await
            .map(|_| ())
            .map_err(|e| Self::err(key, e))
    }

    /// An object's `Content-Type` and `Cache-Control` as its store keeps them (none in a
    /// local directory).
    pub async fn headers(
        &self,
        key: &str,
    ) -> Result<(Option<String>, Option<String>), StorageError> {
        let opts = object_store::GetOptions {
            head: true,
            ..Default::default()
        };
        let r = self
            .store
            .get_opts(&Self::path(key)?, opts)
            .await
            .map_err(|e| Self::err(key, e))?;
        let get = |a: &Attribute| r.attributes.get(a).map(|v| v.to_string());
        Ok((get(&Attribute::ContentType), get(&Attribute::CacheControl)))
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let r = self
            .store
            .get(&Self::path(key)?)
            .await
            .map_err(|e| Self::err(key, e))?;
        r.bytes().await.map_err(|e| Self::err(key, e))
    }

    /// Size of an object, or `None` when it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self.store.head(&Self::path(key)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::err(key, e)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&Self::path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::err(key, e)),
        }
    }

    /// Deletes every object whose key starts with `prefix` (a folder: `streams/NAME/`);
    /// returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        use futures_util::StreamExt as _;
        // Listing a path lists whole segments under it: `streams/a` never lists `streams/ab`.
        let mut listing = self
            .store
            .list(Some(&Self::path(prefix.trim_end_matches('/'))?));
        let mut n = 0;
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| Self::err(prefix, e))?;
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => n += 1,
                Err(e) => return Err(Self::err(meta.location.as_ref(), e)),
            }
        }
        Ok(n)
    }

    /// Checks the store answers: a missing object is a healthy answer.
    pub async fn healthcheck(&self) -> Result<(), StorageError> {
        self.size("castwork-healthcheck").await.map(|_| ())
    }

    /// This store's id ([`STORE_ID_KEY`]), or `None` when no orchestrator has used it.
    pub async fn id(&self) -> Result<Option<String>, StorageError> {
        match self.get(STORE_ID_KEY).await {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).trim().to_string())),
            Err(StorageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// This store's id, written first if it has none. Of processes racing to write it, one
    /// wins (a create-only put) and every one returns the winner's.
    pub async fn ensure_id(&self) -> Result<String, StorageError> {
        if let Some(id) = self.id().await? {
            return Ok(id);
        }
        let path = Self::path(STORE_ID_KEY)?;
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let fresh = new_store_id();
        let payload = PutPayload::from(Bytes::from(fresh.clone()));
        match self.store.put_opts(&path, payload.clone(), create).await {
            Ok(_) => return Ok(fresh),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            // A store without create-only puts: last writer wins, and every one reads it.
            Err(object_store::Error::NotImplemented { .. }) => self
                .store
                .put(&path, payload)
                .await
                .map(|_| ())
                .map_err(|e| Self::err(STORE_ID_KEY, e))?,
            Err(e) => return Err(Self::err(STORE_ID_KEY, e)),
        }
        self.id()
            .await?
            .ok_or_else(|| StorageError::NotFound(STORE_ID_KEY.to_string()))
    }
}

const SCHEMES: &str = "expected file://DIR, s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or \
                       az://CONTAINER[/PREFIX]";

/// 128 random bits in hex: the standard library's randomly keyed hasher, twice.
fn new_store_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        h.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// A byte range of an object, as an HTTP `Range: bytes=` header names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `start-`: from `start` to the end.
    From(u64),
    /// `start-end`, both included.
    Within(u64, u64),
    /// `-n`: the last `n` bytes.
    Last(u64),
}

/// What a ranged read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranged {
    /// The bytes from `start` (fewer than asked where the object ends first), of an
    /// object of `total` bytes.
    Part { data: Bytes, start: u64, total: u64 },
    /// The range lies wholly past the end of the object of `total` bytes (or is empty).
    Unsatisfiable { total: u64 },
}

impl Storage {
    /// Reads only `range` of an object: one ranged GET (plus a HEAD when the store refuses
    /// the range), never the whole object.
    pub async fn get_range(&self, key: &str, range: ByteRange) -> Result<Ranged, StorageError> {
        let path = Self::path(key)?;
        let (wanted, first) = match range {
            ByteRange::From(s) => (object_store::GetRange::Offset(s), s),
            ByteRange::Within(s, e) if e >= s => {
                (object_store::GetRange::Bounded(s..e.saturating_add(1)), s)
            }
            ByteRange::Last(n) if n > 0 => (object_store::GetRange::Suffix(n), 0),
            // An empty range.
            ByteRange::Within(..) | ByteRange::Last(_) => {
                let total = self
                    .size(key)
                    .await?
                    .ok_or_else(|| StorageError::NotFound(key.to_string()))?;
                return Ok(Ranged::Unsatisfiable { total });
            }
        };
        let options = object_store::GetOptions {
            range: Some(wanted),
            ..Default::default()
        };
        match self.store.get_opts(&path, options).await {
            Ok(r) => {
                let (start, total) = (r.range.start, r.meta.size);
                let data = r.bytes().await.map_err(|e| Self::err(key, e))?;
                Ok(Ranged::Part { data, start, total })
            }
            Err(object_store::Error::NotFound { .. }) => {
                Err(StorageError::NotFound(key.to_string()))
            }
            // Stores word a range past the end differently: tell it by the size.
            Err(e) => match self.size(key).await? {
                None => Err(StorageError::NotFound(key.to_string())),
                Some(total) if first >= total => Ok(Ranged::Unsatisfiable { total }),
                Some(_) => Err(Self::err(key, e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_store_round_trip() {
        let dir = tempfile_dir();
        let s = Storage::from_url(&format!("file://{}", dir.display())).unwrap();
        s.healthcheck().await.unwrap();
        s.put("streams/a/source/0.ts", Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(
            s.get("streams/a/source/0.ts").await.unwrap(),
            Bytes::from_static(b"abc")
        );
        assert_eq!(s.size("streams/a/source/0.ts").await.unwrap(), Some(3));
        assert_eq!(s.size("streams/a/source/1.ts").await.unwrap(), None);
        assert!(matches!(
            s.get("nope").await,
            Err(StorageError::NotFound(_))
        ));
        s.delete("streams/a/source/0.ts").await.unwrap();
        s.delete("streams/a/source/0.ts").await.unwrap();
        for k in [
            "streams/a/x/1.ts",
            "streams/a/index.m3u8",
            "streams/ab/keep.ts",
        ] {
            s.put(k, Bytes::from_static(b"x")).await.unwrap();
        }
        assert_eq!(s.delete_prefix("streams/a/").await.unwrap(), 2);
        assert_eq!(s.size("streams/ab/keep.ts").await.unwrap(), Some(1));
        assert!(Storage::from_url("ftp://x").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn objects_are_served_with_their_type_and_caching() {
        let immutable = "public, max-age=31536000, immutable";
        assert_eq!(
            object_headers("streams/a/P240p30fps16x9/3.1.abc.ts"),
            ("video/mp2t", immutable)
        );
        assert_eq!(
            object_headers("streams/a/P240p30fps16x9/index.m3u8"),
            ("application/vnd.apple.mpegurl", "no-cache")
        );
        assert_eq!(object_headers("streams/a/index.m3u8").1, "no-cache");
        // A source segment's key comes back when a failed stream's name is used again.
        assert_eq!(
            object_headers("streams/a/source/0.ts"),
            ("video/mp2t", "no-cache")
        );
        assert_eq!(
            object_headers("streams/a/source/0.mkv"),
            ("video/x-matroska", "no-cache")
        );
        assert_eq!(
            object_headers(".castwork/store-id"),
            ("application/octet-stream", "no-cache")
        );
    }

    #[test]
    fn bucket_urls_of_each_cloud_open() {
        for url in [
            "s3://bucket",
            "s3://bucket/some/prefix",
            "gs://bucket/prefix",
        ] {
            let s = Storage::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(s.to_string(), url);
        }
        for bad in ["s3://", "gs:///x", "ftp://x", "bucket"] {
            assert!(
                matches!(Storage::from_url(bad), Err(StorageError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_store_keeps_the_first_id_written_and_another_store_differs() {
        // Not under tempfile_dir(): the other test removes that when it is done.
        let dir = std::env::temp_dir().join(format!("castwork-store-ids-{}", std::process::id()));
        let a = Storage::from_url(&format!("file://{}/a", dir.display())).unwrap();
        let b = Storage::from_url(&format!("file://{}/b", dir.display())).unwrap();
        assert_eq!(a.id().await.unwrap(), None);
        // Racing writers all end up with one id.
        let ids = futures_util::future::join_all((0..8).map(|_| a.ensure_id())).await;
        let first = ids[0].as_ref().unwrap().clone();
        assert_eq!(first.len(), 32);
        assert!(ids.iter().all(|id| id.as_ref().unwrap() == &first));
        assert_eq!(a.id().await.unwrap(), Some(first.clone()));
        // The same directory opened again (a relative path resolves to it too) is the
        // same store; another directory is not.
        let again = Storage::from_url(&format!("file://{}/a/../a", dir.display())).unwrap();
        assert_eq!(again.ensure_id().await.unwrap(), first);
        assert_eq!(again.to_string(), a.to_string());
        assert_ne!(b.ensure_id().await.unwrap(), first);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("castwork-storage-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
