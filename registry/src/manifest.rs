//! Pure manifest validation: what a pushed manifest is, and which blobs and child
//! manifests it references (so the storage can refuse dangling references and GC can mark).
//!
//! Vocabulary: an **image manifest** (OCI or Docker schema2) names a config blob and layer
//! blobs; an **index** (OCI index or Docker manifest list) names child manifests. Docker
//! schema1 is not accepted. Only the fields that matter for integrity are read, with our own
//! small serde types, so both families parse the same way.

use crate::reference::Digest;
use serde::Deserialize;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub use crate::limits::MAX_MANIFEST_BYTES;
use crate::limits::MAX_MANIFEST_REFERENCES;

/// Layers with these media types live elsewhere (`urls`) and are not required to exist.
const FOREIGN_LAYERS: &[&str] = &[
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

/// Why a manifest was refused (maps to MANIFEST_INVALID).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("schemaVersion must be 2, found {0}")]
    SchemaVersion(i64),
    #[error("media type {0:?} is not supported (OCI manifest/index or Docker schema2 only)")]
    UnsupportedMediaType(String),
    #[error("Content-Type {header:?} does not match the manifest's mediaType {field:?}")]
    MediaTypeMismatch { header: String, field: String },
    #[error("{field}: {why}")]
    Field { field: String, why: String },
}

/// A descriptor's digest as referenced by a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referenced {
    pub digest: Digest,
    /// Where in the manifest (for error messages): `config`, `layers[2]`, `manifests[0]`.
    pub field: String,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The media type to store and serve it with.
    pub media_type: String,
    /// Blobs that must exist in the repository (config and layers).
    pub blobs: Vec<Referenced>,
    /// Manifests that must exist in the repository (the children of an index).
    pub manifests: Vec<Referenced>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<i64>,
}

/// Refuses a manifest with more than [`MAX_MANIFEST_REFERENCES`] descriptors.
fn too_many(name: &str, count: usize) -> Result<(), ManifestError> {
    if count > MAX_MANIFEST_REFERENCES {
        return Err(field(
            name,
            &format!("{count} descriptors, the limit is {MAX_MANIFEST_REFERENCES}"),
        ));
    }
    Ok(())
}

/// Validates `body` pushed with `content_type` (the request header, without parameters).
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Parsed, ManifestError> {
    let raw: Raw = serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    match raw.schema_version {
        Some(2) => {}
        Some(v) => return Err(ManifestError::SchemaVersion(v)),
        None => return Err(field("schemaVersion", "is missing")),
    }
    // The header is authoritative when the body carries no mediaType (allowed by OCI);
    // when both exist they must agree. Generic JSON content types count as absent.
    let header = content_type
        .map(|h| h.split(';').next().unwrap_or("").trim())
        .filter(|h| !h.is_empty() && *h != "application/json" && *h != "application/octet-stream");
    let media_type = match (header, raw.media_type.as_deref()) {
        (Some(h), Some(f)) if h != f => {
            return Err(ManifestError::MediaTypeMismatch {
                header: h.to_string(),
                field: f.to_string(),
            })
        }
        (Some(h), _) => h.to_string(),
        (None, Some(f)) => f.to_string(),
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    let mut parsed = Parsed {
        media_type: media_type.clone(),
        blobs: Vec::new(),
        manifests: Vec::new(),
    };
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = raw.config.ok_or_else(|| field("config", "is missing"))?;
            parsed.blobs.push(descriptor(&config, "config".into())?);
            let layers = raw.layers.ok_or_else(|| field("layers", "is missing"))?;
            too_many("layers", layers.len() + 1)?;
            for (i, l) in layers.iter().enumerate() {
                let r = descriptor(l, format!("layers[{i}]"))?;
                if !l
                    .media_type
                    .as_deref()
                    .is_some_and(|m| FOREIGN_LAYERS.contains(&m))
                {
                    parsed.blobs.push(r);
                }
            }
        }
        OCI_INDEX | DOCKER_LIST => {
            let list = raw
                .manifests
                .ok_or_else(|| field("manifests", "is missing"))?;
            too_many("manifests", list.len())?;
            for (i, m) in list.iter().enumerate() {
                parsed
                    .manifests
                    .push(descriptor(m, format!("manifests[{i}]"))?);
            }
        }
        other => return Err(ManifestError::UnsupportedMediaType(other.to_string())),
    }
    Ok(parsed)
}

fn field(name: &str, why: &str) -> ManifestError {
    ManifestError::Field {
        field: name.to_string(),
        why: why.to_string(),
    }
}

fn descriptor(d: &RawDescriptor, at: String) -> Result<Referenced, ManifestError> {
    let digest = d
        .digest
        .as_deref()
        .ok_or_else(|| field(&format!("{at}.digest"), "is missing"))?;
    let digest =
        Digest::parse(digest).map_err(|e| field(&format!("{at}.digest"), &e.to_string()))?;
    match d.size {
        Some(s) if s >= 0 => {}
        Some(s) => return Err(field(&format!("{at}.size"), &format!("{s} is negative"))),
        None => return Err(field(&format!("{at}.size"), "is missing")),
    }
    if d.media_type.as_deref().is_none_or(str::is_empty) {
        return Err(field(&format!("{at}.mediaType"), "is missing"));
    }
    Ok(Referenced { digest, field: at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn image(mt: Option<&str>) -> String {
        let mt = mt
            .map(|m| format!("\"mediaType\":\"{m}\","))
            .unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":10}},
                      {{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{}","size":10}}]}}"#,
            d('a'),
            d('b'),
            d('c')
        )
    }

    #[test]
    fn image_manifest_lists_config_and_layers_but_not_foreign_layers() {
        let p = parse(image(Some(OCI_MANIFEST)).as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(p.media_type, OCI_MANIFEST);
        let fields: Vec<_> = p.blobs.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(fields, ["config", "layers[0]"]);
        assert_eq!(p.blobs[1].digest.to_string(), d('b'));
        assert!(p.manifests.is_empty());
    }

    #[test]
    fn media_type_from_header_or_body() {
        let p = parse(image(None).as_bytes(), Some(DOCKER_MANIFEST)).unwrap();
        assert_eq!(p.media_type, DOCKER_MANIFEST);
        let p = parse(image(Some(DOCKER_MANIFEST)).as_bytes(), None).unwrap();
        assert_eq!(p.media_type, DOCKER_MANIFEST);
        let p = parse(image(None).as_bytes(), Some("application/json")).unwrap();
        assert_eq!(p.media_type, OCI_MANIFEST);
        assert!(matches!(
            parse(image(Some(OCI_MANIFEST)).as_bytes(), Some(DOCKER_MANIFEST)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
    }

    #[test]
    fn index_lists_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d('e')
        );
        let p = parse(body.as_bytes(), None).unwrap();
        assert_eq!(p.media_type, OCI_INDEX);
        assert_eq!(p.manifests.len(), 1);
        assert!(p.blobs.is_empty());
    }

    #[test]
    fn refusals_name_the_field() {
        assert!(matches!(parse(b"{", None), Err(ManifestError::Json(_))));
        assert_eq!(
            parse(br#"{"schemaVersion":1}"#, None),
            Err(ManifestError::SchemaVersion(1))
        );
        let e = parse(
            br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:12","size":1},"layers":[]}"#,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("config.digest:"), "{e}");
        let bad_size = image(None).replacen("\"size\":10", "\"size\":-1", 1);
        let e = parse(bad_size.as_bytes(), None).unwrap_err();
        assert!(e.to_string().starts_with("layers[0].size:"), "{e}");
        let e = parse(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}"#,
            None,
        )
        .unwrap_err();
        assert!(matches!(e, ManifestError::UnsupportedMediaType(_)));
        let e = parse(br#"{"schemaVersion":2,"layers":[]}"#, None).unwrap_err();
        assert_eq!(e.to_string(), "config: is missing");
    }
}
