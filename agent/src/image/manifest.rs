//! Manifests, image indexes and image configs (OCI, and Docker schema2 accepted), platform
//! selection and chain IDs. Pure: bytes in, typed values out.
//!
//! Vocabulary:
//! - **manifest**: one image for one platform: a config descriptor plus ordered layer
//!   descriptors (OCI `image.manifest.v1` or Docker `distribution.manifest.v2`);
//! - **index**: a list of manifests for several platforms (OCI `image.index.v1` or Docker
//!   `manifest.list.v2`); resolved to the host's platform with [`select_platform`];
//! - **config**: the image configuration; its `rootfs.diff_ids` are the sha256 of each
//!   layer *uncompressed*;
//! - **chain ID**: identifies a stack of layers: `chain[0] = diff_id[0]`,
//!   `chain[i] = sha256(chain[i-1] + " " + diff_id[i])`; snapshots are keyed by it, so two
//!   images sharing a base share its snapshots.
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use super::digest::{Digest, DigestError};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Errors about manifest content; each names the document or descriptor.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{what} is not valid JSON of its kind: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: unsupported media type {media_type:?}")]
    MediaType { what: String, media_type: String },
    #[error("{what}: schemaVersion must be 2, got {version}")]
    SchemaVersion { what: String, version: u32 },
    #[error("{what}: bad digest: {source}")]
    Digest {
        what: String,
        #[source]
        source: DigestError,
    },
    #[error("image index has no manifest for platform {platform} (available: {available})")]
    NoPlatform { platform: String, available: String },
    #[error("config lists {diff_ids} diff_ids but the manifest has {layers} layers")]
    LayerCount { diff_ids: usize, layers: usize },
}

/// A parsed manifest document: one image, or an index of images.
#[derive(Debug, Clone)]
pub enum Parsed {
    Manifest(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

/// Whether `media_type` names a manifest (`Some(false)`) or an index (`Some(true)`).
pub fn is_index_media_type(media_type: &str) -> Option<bool> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(false),
        OCI_INDEX | DOCKER_MANIFEST_LIST => Some(true),
        _ => None,
    }
}

/// Parses a manifest or index. `media_type` is the one the descriptor or registry gave;
/// without it, the document's own `mediaType` field decides, then its shape
/// (`manifests` → index, else manifest).
pub fn parse(bytes: &[u8], media_type: Option<&str>, what: &str) -> Result<Parsed, ManifestError> {
    let json_err = |source| ManifestError::Json {
        what: what.to_string(),
        source,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json_err)?;
    let declared = value.get("mediaType").and_then(|m| m.as_str());
    let mt = media_type.or(declared);
    let index = match mt {
        Some(m) => is_index_media_type(m).ok_or_else(|| ManifestError::MediaType {
            what: what.to_string(),
            media_type: m.to_string(),
        })?,
        None => value.get("manifests").is_some(),
    };
    let version = value
        .get("schemaVersion")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as u32;
    if version != 2 {
        return Err(ManifestError::SchemaVersion {
            what: what.to_string(),
            version,
        });
    }
    if index {
        let idx: ImageIndex = serde_json::from_value(value).map_err(json_err)?;
        for d in idx.manifests() {
            descriptor_digest(d, what)?;
        }
        Ok(Parsed::Index(Box::new(idx)))
    } else {
        let m: ImageManifest = serde_json::from_value(value).map_err(json_err)?;
        descriptor_digest(m.config(), what)?;
        for l in m.layers() {
            descriptor_digest(l, what)?;
            layer_compression(l.media_type().as_ref()).map_err(|_| ManifestError::MediaType {
                what: format!("{what}: layer {}", l.digest()),
                media_type: l.media_type().to_string(),
            })?;
        }
        Ok(Parsed::Manifest(Box::new(m)))
    }
}

/// Parses an image config (OCI or Docker).
pub fn parse_config(bytes: &[u8], what: &str) -> Result<ImageConfiguration, ManifestError> {
    serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
        what: what.to_string(),
        source,
    })
}

/// A descriptor's digest as our [`Digest`] (sha256 only).
pub fn descriptor_digest(d: &Descriptor, what: &str) -> Result<Digest, ManifestError> {
    Digest::try_from(d.digest()).map_err(|source| ManifestError::Digest {
        what: what.to_string(),
        source,
    })
}

/// The config's diff_ids, checked against the manifest's layer count.
pub fn diff_ids(
    config: &ImageConfiguration,
    manifest: &ImageManifest,
) -> Result<Vec<Digest>, ManifestError> {
    let ids = config.rootfs().diff_ids();
    if ids.len() != manifest.layers().len() {
        return Err(ManifestError::LayerCount {
            diff_ids: ids.len(),
            layers: manifest.layers().len(),
        });
    }
    ids.iter()
        .map(|s| {
            Digest::parse(s).map_err(|source| ManifestError::Digest {
                what: "config rootfs.diff_ids".into(),
                source,
            })
        })
        .collect()
}

/// Chain IDs of a layer stack (see the module doc).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => Digest::of(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression a layer media type declares; `Err(())` for a non-layer media type.
#[allow(clippy::result_unit_err)]
pub fn layer_compression(media_type: &str) -> Result<Compression, ()> {
    match media_type {
        OCI_LAYER | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
            Ok(Compression::None)
        }
        OCI_LAYER_GZIP
        | DOCKER_LAYER_GZIP
        | DOCKER_FOREIGN_LAYER_GZIP
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Ok(Compression::Gzip),
        OCI_LAYER_ZSTD | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
            Ok(Compression::Zstd)
        }
        // Docker archives of `docker save` call uncompressed layers this.
        "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        _ => Err(()),
    }
}

/// The compression the first bytes of a stream show (gzip / zstd magic), else `None`.
pub fn sniff_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// An OS/architecture(/variant) in GOOS/GOARCH terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl PlatformSpec {
    /// The platform of this host (from `std::env::consts`).
    pub fn host() -> PlatformSpec {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        PlatformSpec {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }
}

impl std::fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Picks the manifest for `platform` from an index: os and architecture must match; among
/// those, an equal variant wins, then one without variant, then the first.
pub fn select_platform(
    index: &ImageIndex,
    platform: &PlatformSpec,
) -> Result<Descriptor, ManifestError> {
    let mut best: Option<(u8, &Descriptor)> = None;
    for d in index.manifests() {
        let Some(p) = d.platform() else { continue };
        if p.os().to_string() != platform.os
            || p.architecture().to_string() != platform.architecture
        {
            continue;
        }
        let score = match (p.variant(), &platform.variant) {
            (Some(a), Some(b)) if a == b => 3,
            (None, _) => 2,
            _ => 1,
        };
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, d));
        }
    }
    best.map(|(_, d)| d.clone())
        .ok_or_else(|| ManifestError::NoPlatform {
            platform: platform.to_string(),
            available: index
                .manifests()
                .iter()
                .map(|d| match d.platform() {
                    Some(p) => format!("{}/{}", p.os(), p.architecture()),
                    None => "(no platform)".into(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_json(media_type: &str, layer_mt: &str) -> String {
        let d = Digest::of(b"x");
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}",
            "config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{d}","size":1}},
            "layers":[{{"mediaType":"{layer_mt}","digest":"{d}","size":1}}]}}"#
        )
    }

    #[test]
    fn parses_docker_and_oci_manifests() {
        for (mt, lmt) in [
            (DOCKER_MANIFEST, DOCKER_LAYER_GZIP),
            (OCI_MANIFEST, OCI_LAYER_ZSTD),
        ] {
            match parse(manifest_json(mt, lmt).as_bytes(), None, "m").unwrap() {
                Parsed::Manifest(m) => assert_eq!(m.layers().len(), 1),
                Parsed::Index(_) => panic!("not an index"),
            }
        }
        let e = parse(
            manifest_json(OCI_MANIFEST, "text/plain").as_bytes(),
            None,
            "m",
        )
        .unwrap_err();
        assert!(e.to_string().contains("text/plain"), "{e}");
        let e = parse(b"{\"schemaVersion\":1}", Some(OCI_MANIFEST), "m").unwrap_err();
        assert!(matches!(e, ManifestError::SchemaVersion { version: 1, .. }));
        let e = parse(b"{}", Some("application/json"), "blob X").unwrap_err();
        assert!(e.to_string().contains("blob X"), "{e}");
    }

    #[test]
    fn index_resolves_host_platform() {
        let a = Digest::of(b"arm");
        let b = Digest::of(b"amd");
        let c = Digest::of(b"armv7");
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{a}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{c}","size":1,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{b}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let Parsed::Index(idx) = parse(doc.as_bytes(), None, "i").unwrap() else {
            panic!("index expected")
        };
        let amd = PlatformSpec {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        assert_eq!(
            select_platform(&idx, &amd).unwrap().digest().to_string(),
            b.to_string()
        );
        let arm = PlatformSpec {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        assert_eq!(
            select_platform(&idx, &arm).unwrap().digest().to_string(),
            a.to_string()
        );
        let host = PlatformSpec::host();
        assert!(select_platform(&idx, &host).is_ok(), "host {host}");
        let e = select_platform(
            &idx,
            &PlatformSpec {
                os: "windows".into(),
                architecture: "amd64".into(),
                variant: None,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("windows/amd64") && e.to_string().contains("linux/arm64"));
    }

    #[test]
    fn host_platform_is_linux_amd64_here() {
        let h = PlatformSpec::host();
        assert_eq!(h.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(h.architecture, "amd64");
        }
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let d1 = Digest::of(b"1");
        let d2 = Digest::of(b"2");
        let d3 = Digest::of(b"3");
        let c = chain_ids(&[d1.clone(), d2.clone(), d3.clone()]);
        assert_eq!(c[0], d1);
        assert_eq!(c[1], Digest::of(format!("{d1} {d2}").as_bytes()));
        assert_eq!(c[2], Digest::of(format!("{} {d3}", c[1]).as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn compression_from_media_type_and_magic() {
        assert_eq!(layer_compression(DOCKER_LAYER_GZIP), Ok(Compression::Gzip));
        assert_eq!(layer_compression(OCI_LAYER), Ok(Compression::None));
        assert_eq!(layer_compression(OCI_LAYER_ZSTD), Ok(Compression::Zstd));
        assert!(layer_compression(OCI_CONFIG).is_err());
        assert_eq!(sniff_compression(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            sniff_compression(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(sniff_compression(b"usta"), Compression::None);
    }

    #[test]
    fn docker_config_parses_with_diff_ids() {
        let d = Digest::of(b"layer");
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"]}},"container_config":{{}},
            "rootfs":{{"type":"layers","diff_ids":["{d}"]}}}}"#
        );
        let c = parse_config(cfg.as_bytes(), "config").unwrap();
        let m: ImageManifest =
            serde_json::from_str(&manifest_json(DOCKER_MANIFEST, DOCKER_LAYER_GZIP)).unwrap();
        assert_eq!(diff_ids(&c, &m).unwrap(), vec![d]);
    }
}
