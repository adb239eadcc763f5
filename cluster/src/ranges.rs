//! HTTP `Range` requests over the object store (RFC 9110 section 14): one byte range a
//! request, read with a ranged GET so a small range never reads the whole object. A request
//! with several ranges, a malformed `Range` or an `If-Range` gets the whole object (200), as
//! the RFC allows; a range wholly past the end gets 416 with `Content-Range: bytes */SIZE`.

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use bytes::Bytes;

use crate::storage::{ByteRange, Ranged};
use crate::{Storage, StorageError};

/// The single byte range a request's `Range` header asks for; `None` when the whole object
/// is to be sent (no header, an `If-Range`, several ranges, another unit, bad syntax).
pub fn requested(headers: &HeaderMap) -> Option<ByteRange> {
    if headers.contains_key(header::IF_RANGE) {
        return None;
    }
    let value = headers.get(header::RANGE)?.to_str().ok()?.trim();
    let (unit, spec) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => Some(ByteRange::Last(number(last)?)),
        (false, true) => Some(ByteRange::From(number(first)?)),
        (false, false) => {
            let (a, b) = (number(first)?, number(last)?);
            (a <= b).then_some(ByteRange::Within(a, b))
        }
        (true, true) => None,
    }
}

/// An object, or the part of it a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Whole(Bytes),
    Part { data: Bytes, start: u64, total: u64 },
    Unsatisfiable { total: u64 },
}

impl Object {
    /// Bytes of the body.
    pub fn body_len(&self) -> u64 {
        match self {
            Object::Whole(d) | Object::Part { data: d, .. } => d.len() as u64,
            Object::Unsatisfiable { .. } => 0,
        }
    }

    /// 200 with `Accept-Ranges: bytes`, 206 with `Content-Range`, or 416; `headers` (content
    /// type, cache policy) go on the first two.
    pub fn into_response(self, headers: &[(header::HeaderName, &str)]) -> Response {
        let mut r = match self {
            Object::Whole(data) => data.into_response(),
            Object::Part { data, start, total } => {
                let end = start + data.len() as u64 - 1;
                let mut r = (StatusCode::PARTIAL_CONTENT, data).into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{total}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r
            }
            Object::Unsatisfiable { total } => {
                let mut r = crate::http::error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("the range lies past the end of the object ({total} bytes)"),
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return r;
            }
        };
        let h = r.headers_mut();
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        for (name, value) in headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name.clone(), v);
            }
        }
        r
    }
}

/// Reads `key`, or only the range `headers` ask for.
pub async fn read(
    storage: &Storage,
    key: &str,
    headers: &HeaderMap,
) -> Result<Object, StorageError> {
    let Some(range) = requested(headers) else {
        return storage.get(key).await.map(Object::Whole);
    };
    Ok(match storage.get_range(key, range).await? {
        Ranged::Part { data, total, .. } if data.is_empty() => Object::Unsatisfiable { total },
        Ranged::Part { data, start, total } => Object::Part { data, start, total },
        Ranged::Unsatisfiable { total } => Object::Unsatisfiable { total },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str) -> Option<ByteRange> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        requested(&h)
    }

    #[test]
    fn single_ranges_parse_and_the_rest_means_the_whole_object() {
        assert_eq!(range("bytes=0-99"), Some(ByteRange::Within(0, 99)));
        assert_eq!(range("bytes=100-"), Some(ByteRange::From(100)));
        assert_eq!(range("bytes=-500"), Some(ByteRange::Last(500)));
        assert_eq!(range("Bytes = 5-5"), Some(ByteRange::Within(5, 5)));
        for whole in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=9-1",
            "bytes=-",
            "bytes=a-b",
            "0-1",
        ] {
            assert_eq!(range(whole), None, "{whole}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"etag\""));
        assert_eq!(requested(&h), None);
        assert_eq!(requested(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn ranged_reads_of_a_local_store() {
        let dir = std::env::temp_dir().join(format!("castwork-ranges-{}", std::process::id()));
        let s = Storage::from_url(&format!("file://{}", dir.display())).unwrap();
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        s.put("streams/a/r/0.ts", Bytes::from(data.clone()))
            .await
            .unwrap();
        let get = |v: &'static str| {
            let s = s.clone();
            async move {
                let mut h = HeaderMap::new();
                h.insert(header::RANGE, HeaderValue::from_static(v));
                read(&s, "streams/a/r/0.ts", &h).await.unwrap()
            }
        };
        let part = |a: usize, b: usize| Object::Part {
            data: Bytes::from(data[a..b].to_vec()),
            start: a as u64,
            total: 1000,
        };
        assert_eq!(get("bytes=10-19").await, part(10, 20));
        assert_eq!(get("bytes=990-").await, part(990, 1000));
        assert_eq!(get("bytes=995-2000").await, part(995, 1000));
        assert_eq!(get("bytes=-3").await, part(997, 1000));
        assert_eq!(get("bytes=-5000").await, part(0, 1000));
        assert_eq!(
            get("bytes=1000-").await,
            Object::Unsatisfiable { total: 1000 }
        );
        assert_eq!(
            get("bytes=5000-6000").await,
            Object::Unsatisfiable { total: 1000 }
        );
        assert_eq!(get("bytes=-0").await, Object::Unsatisfiable { total: 1000 });
        assert_eq!(
            read(&s, "streams/a/r/0.ts", &HeaderMap::new())
                .await
                .unwrap(),
            Object::Whole(Bytes::from(data.clone()))
        );
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        assert!(matches!(
            read(&s, "streams/a/r/9.ts", &h).await,
            Err(StorageError::NotFound(_))
        ));
        let r = part(10, 20).into_response(&[(header::CONTENT_TYPE, "video/mp2t")]);
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 10-19/1000");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "video/mp2t");
        let r = Object::Unsatisfiable { total: 1000 }.into_response(&[]);
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */1000");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
