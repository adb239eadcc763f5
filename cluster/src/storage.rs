//! The object store holding source segments, renditions and playlists: a local directory by
//! default, S3-compatible by URL.

use std::sync::Arc;

use bytes::Bytes;
use object_store::{
    aws::AmazonS3Builder, local::LocalFileSystem, path::Path, prefix::PrefixStore, ObjectStore,
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
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl Storage {
    /// Opens `file://DIR` (created if missing) or `s3://BUCKET[/PREFIX]`.
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
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name".into()));
            }
            let s3 = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| bad(e.to_string()))?;
            let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix.trim_matches('/')))
            };
            return Ok(Storage {
                store,
                description: url.to_string(),
            });
        }
        Err(bad("expected file://DIR or s3://BUCKET[/PREFIX]".into()))
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

    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&Self::path(key)?, PutPayload::from(data))
            .await
            .map(|_| ())
            .map_err(|e| Self::err(key, e))
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
