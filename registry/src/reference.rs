//! Pure parsing of what a request names: repository names, tags, digests, the `/v2/…`
//! route, `Range` / `Content-Range` headers and list pagination.
//!
//! Vocabulary: a **name** is a repository (`team/app`, OCI grammar, ≤ 255 chars); a
//! **reference** is a tag or a digest; a **route** is what a `/v2/…` path asks for. Nothing
//! here touches the disk, so every rule is unit-tested. A valid name or digest can never
//! contain `..` or a leading `/`, which is what makes it safe to use them as paths.

use std::fmt;

pub use crate::limits::MAX_NAME_LEN;
use crate::limits::MAX_TAG_LEN;

/// A `sha256:<64 hex>` digest (the only algorithm this registry stores).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a string is not an acceptable digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} has no algorithm prefix (expected sha256:<64 hex>)")]
    Malformed(String),
    #[error("digest algorithm {0:?} is not supported (only sha256)")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} must have 64 lowercase hex characters after sha256:")]
    BadHex(String),
}

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_string()))?;
        if alg.is_empty()
            || !alg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        {
            return Err(DigestError::Malformed(s.to_string()));
        }
        if alg != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(alg.to_string()));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::BadHex(s.to_string()));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// Builds a digest from the 32 bytes of a finished sha256.
    pub fn from_sha256(bytes: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(bytes),
        }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Checks a repository name against the OCI grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
/// Returns why it is not valid.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("repository name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "repository name is {} characters long, the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    for component in name.split('/') {
        validate_component(component).map_err(|why| format!("component {component:?}: {why}"))?;
    }
    Ok(())
}

fn validate_component(c: &str) -> Result<(), &'static str> {
    let b = c.as_bytes();
    if b.is_empty() {
        return Err("is empty");
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err("must start and end with a lowercase letter or digit");
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err("may only contain lowercase letters, digits and the separators . _ __ -");
        }
    }
    Ok(())
}

/// Checks a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    if b.is_empty() || b.len() > MAX_TAG_LEN {
        let shown: String = tag.chars().take(MAX_TAG_LEN).collect();
        return Err(format!(
            "tag {shown:?} must be 1 to {MAX_TAG_LEN} characters (it has {})",
            b.len()
        ));
    }
    let first_ok = b[0].is_ascii_alphanumeric() || b[0] == b'_';
    let rest_ok = b[1..]
        .iter()
        .all(|x| x.is_ascii_alphanumeric() || b"._-".contains(x));
    if !first_ok || !rest_ok {
        return Err(format!(
            "tag {tag:?} must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}"
        ));
    }
    Ok(())
}

/// A manifest reference: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, String> {
        if s.contains(':') {
            Digest::parse(s)
                .map(Reference::Digest)
                .map_err(|e| e.to_string())
        } else {
            validate_tag(s).map(|()| Reference::Tag(s.to_string()))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// What a `/v2/…` path names. Names and references are still raw strings here: the
/// handler validates them, so it can answer with the right error code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: String },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: String, reference: String },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: String, digest: String },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: String },
    /// `/v2/<name>/blobs/uploads/<session>`
    Upload { name: String, session: String },
}

/// Parses a request path. Repository names contain slashes, so the path is read from its
/// end (`…/manifests/<ref>`, `…/blobs/uploads/<id>`, `…/blobs/<digest>`, `…/tags/list`).
pub fn parse_route(path: &str) -> Option<Route> {
    if path == "/v2" || path == "/v2/" {
        return Some(Route::Base);
    }
    let rest = path.strip_prefix("/v2/")?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name_of = |upto: usize| -> Option<String> { (upto > 0).then(|| segs[..upto].join("/")) };
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Some(Route::Tags {
            name: name_of(n - 2)?,
        });
    }
    if n >= 3 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let name = name_of(n - 3)?;
        return Some(if segs[n - 1].is_empty() {
            Route::UploadStart { name }
        } else {
            Route::Upload {
                name,
                session: segs[n - 1].to_string(),
            }
        });
    }
    if n >= 2 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
        return Some(Route::UploadStart {
            name: name_of(n - 2)?,
        });
    }
    if n >= 2 && segs[n - 2] == "manifests" {
        return Some(Route::Manifest {
            name: name_of(n - 2)?,
            reference: segs[n - 1].to_string(),
        });
    }
    if n >= 2 && segs[n - 2] == "blobs" {
        return Some(Route::Blob {
            name: name_of(n - 2)?,
            digest: segs[n - 1].to_string(),
        });
    }
    None
}

/// An inclusive byte range `[start, end]` within a blob of known size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Outcome of reading a `Range` request header against a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range (or one we ignore, as RFC 9110 allows): send everything.
    Full,
    /// One satisfiable range: answer 206.
    Partial(ByteRange),
    /// Syntactically a range but not satisfiable: answer 416.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n` (one range; a multi-range request is
/// served whole, which RFC 9110 permits).
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(h) = header else {
        return RangeRequest::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    let range = match (a.is_empty(), b.is_empty()) {
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeRequest::Unsatisfiable;
            };
            let end = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                match parse(b) {
                    Some(e) => e.min(size.saturating_sub(1)),
                    None => return RangeRequest::Unsatisfiable,
                }
            };
            if start >= size || end < start {
                return RangeRequest::Unsatisfiable;
            }
            ByteRange { start, end }
        }
        (true, false) => {
            let Some(suffix) = parse(b) else {
                return RangeRequest::Unsatisfiable;
            };
            if suffix == 0 || size == 0 {
                return RangeRequest::Unsatisfiable;
            }
            ByteRange {
                start: size.saturating_sub(suffix),
                end: size - 1,
            }
        }
        (true, true) => return RangeRequest::Unsatisfiable,
    };
    RangeRequest::Partial(range)
}

/// Parses an upload chunk's `Content-Range: <start>-<end>` (the distribution spec's form,
/// without the `bytes ` unit; the unit is accepted too). Returns `(start, end)` inclusive.
pub fn parse_content_range(h: &str) -> Option<(u64, u64)> {
    let h = h.trim();
    let h = h.strip_prefix("bytes ").unwrap_or(h);
    let h = h.split('/').next()?;
    let (a, b) = h.split_once('-')?;
    let (a, b) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
    (b >= a).then_some((a, b))
}

/// One page of a sorted list: entries after `last`, at most `n` of them. Returns the page
/// and whether more entries follow (so the caller adds a `Link` header).
pub fn paginate<'a>(
    sorted: &'a [String],
    n: Option<usize>,
    last: Option<&str>,
) -> (&'a [String], bool) {
    let from = match last {
        Some(l) => sorted.partition_point(|x| x.as_str() <= l),
        None => 0,
    };
    let rest = &sorted[from..];
    match n {
        Some(n) if n < rest.len() => (&rest[..n], true),
        _ => (rest, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digests() {
        assert_eq!(Digest::parse(D).unwrap().to_string(), D);
        assert!(matches!(
            Digest::parse("sha512:abcd"),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            Digest::parse("sha256:ABCD"),
            Err(DigestError::BadHex(_))
        ));
        assert!(matches!(
            Digest::parse(&D.to_uppercase().replace("SHA256", "sha256")),
            Err(DigestError::BadHex(_))
        ));
        assert!(matches!(
            Digest::parse("nocolon"),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            Digest::parse("../x:abc"),
            Err(DigestError::Malformed(_))
        ));
    }

    #[test]
    fn names() {
        for ok in [
            "a",
            "library/busybox",
            "a.b/c_d/e__f/g---h",
            "x0/1y",
            "team/app/sub",
        ] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "A", "a//b", "/a", "a/", "..", "a/../b", "-a", "a-", "a..b", "a___b", "a_-b",
            "_layers", "a b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_name(&"a".repeat(256)).is_err());
        assert!(validate_name(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn tags_and_references() {
        assert!(validate_tag("latest").is_ok());
        assert!(validate_tag("_v1.2-rc.3").is_ok());
        assert!(validate_tag(".hidden").is_err());
        assert!(validate_tag("a/b").is_err());
        assert!(validate_tag(&"t".repeat(129)).is_err());
        assert_eq!(
            Reference::parse("v1").unwrap(),
            Reference::Tag("v1".to_string())
        );
        assert!(matches!(Reference::parse(D), Ok(Reference::Digest(_))));
        assert!(Reference::parse("sha256:zz").is_err());
    }

    #[test]
    fn routes() {
        use Route::*;
        assert_eq!(parse_route("/v2/"), Some(Base));
        assert_eq!(parse_route("/v2"), Some(Base));
        assert_eq!(parse_route("/v2/_catalog"), Some(Catalog));
        assert_eq!(
            parse_route("/v2/a/b/tags/list"),
            Some(Tags { name: "a/b".into() })
        );
        assert_eq!(
            parse_route("/v2/a/manifests/latest"),
            Some(Manifest {
                name: "a".into(),
                reference: "latest".into()
            })
        );
        // A repository may itself contain "blobs" or "manifests" components.
        assert_eq!(
            parse_route("/v2/x/blobs/y/manifests/v1"),
            Some(Manifest {
                name: "x/blobs/y".into(),
                reference: "v1".into()
            })
        );
        assert_eq!(
            parse_route(&format!("/v2/a/b/blobs/{D}")),
            Some(Blob {
                name: "a/b".into(),
                digest: D.into()
            })
        );
        assert_eq!(
            parse_route("/v2/a/blobs/uploads/"),
            Some(UploadStart { name: "a".into() })
        );
        assert_eq!(
            parse_route("/v2/a/blobs/uploads"),
            Some(UploadStart { name: "a".into() })
        );
        assert_eq!(
            parse_route("/v2/a/blobs/uploads/abc"),
            Some(Upload {
                name: "a".into(),
                session: "abc".into()
            })
        );
        assert_eq!(parse_route("/v2/manifests/x"), None);
        assert_eq!(parse_route("/v3/a/manifests/x"), None);
        assert_eq!(parse_route("/v2/a/other"), None);
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        let r = |s, e| Partial(ByteRange { start: s, end: e });
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), r(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), r(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), r(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), r(0, 9));
        assert_eq!(parse_range(Some("bytes=2-100"), 10), r(2, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=x-2"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("5-4"), None);
        assert_eq!(parse_content_range("abc"), None);
    }

    #[test]
    fn pagination() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(paginate(&all, None, None), (&all[..], false));
        assert_eq!(paginate(&all, Some(2), None), (&all[..2], true));
        assert_eq!(paginate(&all, Some(2), Some("b")), (&all[2..], false));
        assert_eq!(paginate(&all, Some(1), Some("b")), (&all[2..3], true));
        assert_eq!(paginate(&all, Some(5), Some("bb")), (&all[2..], false));
        assert_eq!(paginate(&all, Some(0), None).0.len(), 0);
    }
}
