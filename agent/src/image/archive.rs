//! Import/export: `docker save` archives and OCI image layouts.
//!
//! Vocabulary:
//! - **OCI layout**: `oci-layout`, `index.json` and `blobs/sha256/<hex>`, as a directory or
//!   a tar (what `skopeo copy … oci:DIR` writes; docker ≥ 25 puts one inside its save tars);
//! - **docker archive**: the `docker save` tar: `manifest.json` (`Config`, `RepoTags`,
//!   `Layers` paths), layer tars and config JSON files (legacy layout, also what
//!   `skopeo copy … docker-archive:` writes);
//! - **load**: every file of the archive is streamed once into the content store (blobs
//!   under `blobs/sha256/` verified against their names); then `index.json` (preferred:
//!   keeps manifest digests) or `manifest.json` (a new OCI manifest is built over the
//!   stored config and layers) names the images;
//! - **save**: writes the host-platform manifest of each image with its config and layers
//!   as stored (digests unchanged). `docker` format = OCI layout + `manifest.json`, like
//!   docker ≥ 25, so both `docker load` and OCI tools read it.
//!
//! Image names in `index.json`: `io.containerd.image.name` (full reference), else
//! `org.opencontainers.image.ref.name` — a full reference, or only a tag, which is applied
//! to the `--name` repository given to [`load`] (without one, the image is stored but not
//! named, and reported by digest).
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::ImageIndex as OciIndex;

use super::content::{BlobInfo, ContentError};
use super::digest::Digest;
use super::manifest::{self, Compression};
use super::reference::Reference;
use super::{Image, ImageStore, StoreError};

/// Errors of load/save; each names the archive, entry or image.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("archive entry {entry:?}: {source}")]
    Blob {
        entry: String,
        #[source]
        source: ContentError,
    },
    #[error("archive {path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("archive {path}: {file}: {source}")]
    Json {
        path: PathBuf,
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("archive {path}: {entry:?} names {what} missing from the archive")]
    Missing {
        path: PathBuf,
        entry: String,
        what: String,
    },
    #[error("archive {path}: name {name:?}: {source}")]
    Name {
        path: PathBuf,
        name: String,
        #[source]
        source: super::reference::ReferenceError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The two archive formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Docker,
    Oci,
}

/// One image an archive contained.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Loaded {
    /// The name it was tagged with, if the archive (or `--name`) gave one.
    pub name: Option<String>,
    pub digest: Digest,
    pub media_type: String,
}

/// Metadata files kept in memory rather than stored as blobs.
const META: [&str; 4] = ["manifest.json", "index.json", "oci-layout", "repositories"];
const META_LIMIT: u64 = 64 << 20;

struct Ingested {
    meta: HashMap<String, Vec<u8>>,
    files: HashMap<String, BlobInfo>,
}

fn clean(p: &str) -> String {
    p.trim_start_matches("./")
        .trim_start_matches('/')
        .to_string()
}

fn ingest_one<R: Read>(
    store: &ImageStore,
    ing: &mut Ingested,
    path: &str,
    size: u64,
    mut r: R,
    archive: &Path,
) -> Result<(), ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        path: archive.to_path_buf(),
        source,
    };
    if META.contains(&path) {
        if size > META_LIMIT {
            return Err(ArchiveError::Invalid {
                path: archive.to_path_buf(),
                what: format!("{path} is {size} bytes, over {META_LIMIT}"),
            });
        }
        let mut v = Vec::with_capacity(size as usize);
        r.read_to_end(&mut v).map_err(io_err)?;
        ing.meta.insert(path.to_string(), v);
        return Ok(());
    }
    if path.ends_with("/json") || path.ends_with("/VERSION") {
        return Ok(()); // legacy per-layer metadata; unused
    }
    let expected = match path.strip_prefix("blobs/sha256/") {
        Some(hex) => Some(Digest::from_hex(hex).map_err(|e| ArchiveError::Invalid {
            path: archive.to_path_buf(),
            what: format!("{path}: {e}"),
        })?),
        None => None,
    };
    if let Some(d) = &expected {
        if let Ok(info) = store.content().info(d) {
            ing.files.insert(path.to_string(), info);
            return Ok(());
        }
    }
    let blob_err = |source| ArchiveError::Blob {
        entry: path.to_string(),
        source,
    };
    let mut w = store
        .content()
        .writer(expected, Some(size))
        .map_err(blob_err)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        w.write_chunk(&buf[..n]).map_err(blob_err)?;
    }
    let info = w.commit().map_err(blob_err)?;
    ing.files.insert(path.to_string(), info);
    Ok(())
}

fn ingest_tar<R: Read>(store: &ImageStore, r: R, archive: &Path) -> Result<Ingested, ArchiveError> {
    let mut ing = Ingested {
        meta: HashMap::new(),
        files: HashMap::new(),
    };
    let io_err = |source| ArchiveError::Io {
        path: archive.to_path_buf(),
        source,
    };
    let mut ar = tar::Archive::new(r);
    for e in ar.entries().map_err(io_err)? {
        let e = e.map_err(io_err)?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let path = clean(&String::from_utf8_lossy(&e.path_bytes()));
        let size = e.header().entry_size().map_err(io_err)?;
        ingest_one(store, &mut ing, &path, size, e, archive)?;
    }
    Ok(ing)
}

fn ingest_dir(store: &ImageStore, dir: &Path) -> Result<Ingested, ArchiveError> {
    let mut ing = Ingested {
        meta: HashMap::new(),
        files: HashMap::new(),
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = fs::read_dir(&d).map_err(|source| ArchiveError::Io {
            path: d.clone(),
            source,
        })?;
        for e in rd {
            let e = e.map_err(|source| ArchiveError::Io {
                path: d.clone(),
                source,
            })?;
            let p = e.path();
            let ft = e.file_type().map_err(|source| ArchiveError::Io {
                path: p.clone(),
                source,
            })?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .to_string();
                let f = File::open(&p).map_err(|source| ArchiveError::Io {
                    path: p.clone(),
                    source,
                })?;
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                ingest_one(store, &mut ing, &rel, size, f, dir)?;
            }
        }
    }
    Ok(ing)
}

/// Loads a docker-save archive or an OCI layout (directory, tar, or gzipped tar) into the
/// store, and tags the images it names. `name` supplies the repository for images the
/// archive names only by tag (or not at all).
pub fn load(
    store: &ImageStore,
    path: &Path,
    name: Option<&Reference>,
) -> Result<Vec<Loaded>, ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    };
    let ing = if path.is_dir() {
        ingest_dir(store, path)?
    } else {
        let mut r = BufReader::with_capacity(1 << 20, File::open(path).map_err(io_err)?);
        let head = r.fill_buf().map_err(io_err)?;
        match manifest::sniff_compression(head) {
            Compression::Gzip => ingest_tar(store, flate2::bufread::MultiGzDecoder::new(r), path)?,
            Compression::Zstd => ingest_tar(
                store,
                zstd::stream::read::Decoder::with_buffer(r).map_err(io_err)?,
                path,
            )?,
            Compression::None => ingest_tar(store, r, path)?,
        }
    };
    if let Some(idx) = ing.meta.get("index.json") {
        load_oci(store, path, &ing, idx, name)
    } else if let Some(m) = ing.meta.get("manifest.json") {
        load_docker(store, path, &ing, m, name)
    } else {
        Err(ArchiveError::Invalid {
            path: path.to_path_buf(),
            what: "neither index.json (OCI layout) nor manifest.json (docker save) found".into(),
        })
    }
}

fn parse_name(path: &Path, s: &str) -> Result<Reference, ArchiveError> {
    Reference::parse(s).map_err(|source| ArchiveError::Name {
        path: path.to_path_buf(),
        name: s.to_string(),
        source,
    })
}

fn load_oci(
    store: &ImageStore,
    path: &Path,
    ing: &Ingested,
    index: &[u8],
    name: Option<&Reference>,
) -> Result<Vec<Loaded>, ArchiveError> {
    if let Some(layout) = ing.meta.get("oci-layout") {
        let v: serde_json::Value =
            serde_json::from_slice(layout).map_err(|source| ArchiveError::Json {
                path: path.to_path_buf(),
                file: "oci-layout".into(),
                source,
            })?;
        if v.get("imageLayoutVersion").and_then(|x| x.as_str()) != Some("1.0.0") {
            return Err(ArchiveError::Invalid {
                path: path.to_path_buf(),
                what: format!(
                    "oci-layout: unsupported imageLayoutVersion {:?}",
                    v.get("imageLayoutVersion")
                ),
            });
        }
    }
    let idx: OciIndex = serde_json::from_slice(index).map_err(|source| ArchiveError::Json {
        path: path.to_path_buf(),
        file: "index.json".into(),
        source,
    })?;
    let mut out = Vec::new();
    let count = idx.manifests().len();
    for (i, d) in idx.manifests().iter().enumerate() {
        let what = format!("index.json manifests[{i}]");
        let digest = manifest::descriptor_digest(d, &what).map_err(|e| ArchiveError::Invalid {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
        if !store.content().exists(&digest) {
            return Err(ArchiveError::Missing {
                path: path.to_path_buf(),
                entry: what,
                what: format!("blob {digest}"),
            });
        }
        let media_type = d.media_type().to_string();
        // Checks the image is complete for this platform (manifest, config, layers).
        let image = store.resolve_digest(&what, &digest, Some(&media_type))?;
        check_layers(store, path, &what, &image)?;
        let ann = d.annotations().clone().unwrap_or_default();
        let reference = if let Some(n) = ann.get("io.containerd.image.name") {
            Some(parse_name(path, n)?)
        } else if let Some(n) = ann.get("org.opencontainers.image.ref.name") {
            if n.contains(['/', ':']) {
                Some(parse_name(path, n)?)
            } else {
                match name {
                    Some(base) => Some(base.with_tag(n).map_err(|source| ArchiveError::Name {
                        path: path.to_path_buf(),
                        name: n.clone(),
                        source,
                    })?),
                    None => None,
                }
            }
        } else if count == 1 {
            name.cloned()
        } else {
            None
        };
        if let Some(r) = &reference {
            store
                .index()
                .tag(r, &digest, &media_type, d.size())
                .map_err(StoreError::from)?;
        }
        out.push(Loaded {
            name: reference.map(|r| r.to_string()),
            digest,
            media_type,
        });
    }
    Ok(out)
}

fn check_layers(
    store: &ImageStore,
    path: &Path,
    what: &str,
    image: &Image,
) -> Result<(), ArchiveError> {
    for l in &image.layers {
        let d = manifest::descriptor_digest(l, what).map_err(|e| ArchiveError::Invalid {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
        if !store.content().exists(&d) {
            return Err(ArchiveError::Missing {
                path: path.to_path_buf(),
                entry: what.to_string(),
                what: format!("layer {d}"),
            });
        }
    }
    Ok(())
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn load_docker(
    store: &ImageStore,
    path: &Path,
    ing: &Ingested,
    m: &[u8],
    name: Option<&Reference>,
) -> Result<Vec<Loaded>, ArchiveError> {
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(m).map_err(|source| ArchiveError::Json {
            path: path.to_path_buf(),
            file: "manifest.json".into(),
            source,
        })?;
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let entry = format!("manifest.json[{i}]");
        let get = |p: &str, what: &str| {
            ing.files
                .get(&clean(p))
                .cloned()
                .ok_or_else(|| ArchiveError::Missing {
                    path: path.to_path_buf(),
                    entry: entry.clone(),
                    what: format!("{what} {p:?}"),
                })
        };
        let config = get(&e.config, "config")?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let info = get(l, "layer")?;
            let mut head = [0u8; 4];
            let n = store
                .content()
                .reader(&info.digest)
                .and_then(|mut f| {
                    f.read(&mut head).map_err(|source| ContentError::Io {
                        path: store.content().blob_path(&info.digest),
                        source,
                    })
                })
                .map_err(|source| ArchiveError::Blob {
                    entry: l.clone(),
                    source,
                })?;
            let mt = match manifest::sniff_compression(&head[..n]) {
                Compression::Gzip => manifest::OCI_LAYER_GZIP,
                Compression::Zstd => manifest::OCI_LAYER_ZSTD,
                Compression::None => manifest::OCI_LAYER,
            };
            layers.push(
                serde_json::json!({"mediaType": mt, "digest": info.digest, "size": info.size}),
            );
        }
        let doc = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": manifest::OCI_CONFIG, "digest": config.digest, "size": config.size},
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&doc).expect("manifest serialises");
        let info = store
            .content()
            .put(&bytes, None)
            .map_err(StoreError::from)?;
        // Validates config and diff_ids against the layers.
        store.resolve_digest(&entry, &info.digest, Some(manifest::OCI_MANIFEST))?;
        let mut names: Vec<Reference> = Vec::new();
        for t in e.repo_tags.iter().flatten() {
            names.push(parse_name(path, t)?);
        }
        if names.is_empty() {
            names.extend(name.cloned());
        }
        for r in &names {
            store
                .index()
                .tag(r, &info.digest, manifest::OCI_MANIFEST, info.size)
                .map_err(StoreError::from)?;
        }
        if names.is_empty() {
            out.push(Loaded {
                name: None,
                digest: info.digest.clone(),
                media_type: manifest::OCI_MANIFEST.into(),
            });
        }
        for r in names {
            out.push(Loaded {
                name: Some(r.to_string()),
                digest: info.digest.clone(),
                media_type: manifest::OCI_MANIFEST.into(),
            });
        }
    }
    Ok(out)
}

/// Where save writes: a tar file, or (OCI only) a directory.
enum Sink {
    Tar(Box<tar::Builder<io::BufWriter<File>>>),
    Dir(PathBuf),
}

impl Sink {
    fn put(
        &mut self,
        name: &str,
        size: u64,
        mut data: impl Read,
        out: &Path,
    ) -> Result<(), ArchiveError> {
        let io_err = |source| ArchiveError::Io {
            path: out.to_path_buf(),
            source,
        };
        match self {
            Sink::Tar(b) => {
                let mut h = tar::Header::new_ustar();
                h.set_size(size);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, name, data).map_err(io_err)
            }
            Sink::Dir(d) => {
                let p = d.join(name);
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(io_err)?;
                }
                let mut f = File::create(&p).map_err(io_err)?;
                io::copy(&mut data, &mut f).map_err(io_err)?;
                f.flush().map_err(io_err)
            }
        }
    }
}

/// Saves `images` (name as given, resolved image) to `out`: a tar, or for [`Format::Oci`]
/// a directory when `out` is an existing directory or ends with `/`.
pub fn save(
    store: &ImageStore,
    images: &[(Option<Reference>, Image)],
    out: &Path,
    format: Format,
) -> Result<(), ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        path: out.to_path_buf(),
        source,
    };
    let as_dir = format == Format::Oci && (out.is_dir() || out.to_string_lossy().ends_with('/'));
    // Write to a temp name, rename at the end: a failed save leaves no partial archive.
    let tmp = if as_dir {
        out.to_path_buf()
    } else {
        let mut t = out.as_os_str().to_owned();
        t.push(format!(".tmp-{}", std::process::id()));
        PathBuf::from(t)
    };
    let mut sink = if as_dir {
        fs::create_dir_all(out).map_err(io_err)?;
        Sink::Dir(out.to_path_buf())
    } else {
        let f = File::create(&tmp).map_err(io_err)?;
        Sink::Tar(Box::new(tar::Builder::new(io::BufWriter::with_capacity(
            1 << 20,
            f,
        ))))
    };
    let result = write_all(store, images, out, format, &mut sink);
    match (result, sink) {
        (Ok(()), Sink::Tar(b)) => {
            let w = b.into_inner().map_err(io_err)?;
            let f = w.into_inner().map_err(|e| io_err(e.into_error()))?;
            f.sync_all().map_err(io_err)?;
            fs::rename(&tmp, out).map_err(io_err)
        }
        (Ok(()), Sink::Dir(_)) => Ok(()),
        (Err(e), Sink::Tar(_)) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
        (Err(e), Sink::Dir(_)) => Err(e),
    }
}

fn write_all(
    store: &ImageStore,
    images: &[(Option<Reference>, Image)],
    out: &Path,
    format: Format,
    sink: &mut Sink,
) -> Result<(), ArchiveError> {
    let mut written: BTreeMap<Digest, ()> = BTreeMap::new();
    let mut index_manifests = Vec::new();
    let mut docker_manifest = Vec::new();
    let blob_name = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    for (name, image) in images {
        let mut blobs = vec![image.manifest_digest.clone(), image.config_digest.clone()];
        for l in &image.layers {
            blobs.push(
                manifest::descriptor_digest(l, &image.reference).map_err(|e| {
                    ArchiveError::Invalid {
                        path: out.to_path_buf(),
                        what: e.to_string(),
                    }
                })?,
            );
        }
        for d in &blobs {
            if written.insert(d.clone(), ()).is_some() {
                continue;
            }
            let blob_err = |source| ArchiveError::Blob {
                entry: blob_name(d),
                source,
            };
            let info = store.content().info(d).map_err(blob_err)?;
            let r = store.content().reader(d).map_err(blob_err)?;
            sink.put(
                &blob_name(d),
                info.size,
                BufReader::with_capacity(1 << 20, r),
                out,
            )?;
        }
        let msize = store
            .content()
            .info(&image.manifest_digest)
            .map_err(|source| ArchiveError::Blob {
                entry: blob_name(&image.manifest_digest),
                source,
            })?;
        let media_type = image
            .manifest
            .media_type()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_else(|| manifest::OCI_MANIFEST.to_string());
        let mut desc = serde_json::json!({
            "mediaType": media_type,
            "digest": image.manifest_digest,
            "size": msize.size,
        });
        if let Some(n) = name {
            let mut ann = serde_json::Map::new();
            ann.insert("io.containerd.image.name".into(), n.to_string().into());
            if let Some(t) = n.tag() {
                ann.insert("org.opencontainers.image.ref.name".into(), t.into());
            }
            desc["annotations"] = serde_json::Value::Object(ann);
        }
        index_manifests.push(desc);
        docker_manifest.push(DockerManifestEntry {
            config: blob_name(&image.config_digest),
            repo_tags: Some(name.iter().filter_map(|n| n.name_tag()).collect()),
            layers: blobs[2..].iter().map(blob_name).collect(),
        });
    }
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    sink.put("oci-layout", layout.len() as u64, &layout[..], out)?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_INDEX,
        "manifests": index_manifests,
    }))
    .expect("index serialises");
    sink.put("index.json", index.len() as u64, &index[..], out)?;
    if format == Format::Docker {
        let m = serde_json::to_vec(&docker_manifest).expect("manifest serialises");
        sink.put("manifest.json", m.len() as u64, &m[..], out)?;
    }
    Ok(())
}
