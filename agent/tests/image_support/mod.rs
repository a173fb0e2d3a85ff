//! Helpers for the image tests: crafted layer tars (including malicious ones) and root checks.
#![allow(dead_code)]

use std::io::Write;

/// Panics unless running as root (CI is root): these tests never skip silently.
pub fn require_root(what: &str) {
    if unsafe { libc::geteuid() } != 0 {
        panic!("{what} needs root (chown, mknod, trusted.* xattrs, overlay mounts); run the tests as root");
    }
}

/// Builds a layer tar entry by entry. Names are written raw, so tests can craft entries
/// the `tar` crate itself would refuse (`..`, absolute paths).
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

fn raw_header(kind: tar::EntryType, name: &[u8], mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    let n = &mut h.as_old_mut().name;
    assert!(name.len() <= n.len(), "raw names must fit the header");
    n[..name.len()].copy_from_slice(name);
    h
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = 1 + key.len() + 1 + value.len() + 1; // " key=value\n"
    let mut len = body_len + 1;
    while format!("{len}").len() + body_len != len {
        len = format!("{len}").len() + body_len;
    }
    let mut v = format!("{len} {key}=").into_bytes();
    v.extend_from_slice(value);
    v.push(b'\n');
    v
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn append(&mut self, h: tar::Header, data: &[u8]) -> &mut Self {
        let mut h = h;
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32, mtime: u64) -> &mut Self {
        self.append(
            raw_header(tar::EntryType::Directory, path.as_bytes(), mode, mtime, 0),
            b"",
        )
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32, mtime: u64) -> &mut Self {
        self.append(
            raw_header(
                tar::EntryType::Regular,
                path.as_bytes(),
                mode,
                mtime,
                data.len() as u64,
            ),
            data,
        )
    }

    pub fn file_owned(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> &mut Self {
        let mut h = raw_header(
            tar::EntryType::Regular,
            path.as_bytes(),
            mode,
            mtime,
            data.len() as u64,
        );
        h.set_uid(uid);
        h.set_gid(gid);
        self.append(h, data)
    }

    /// A file whose name may be long: the tar crate writes a GNU long-name entry.
    pub fn gnu_long_file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    /// A PAX extended header applying to the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_path("PaxHeader").unwrap();
        h.set_cksum();
        self.b.append(&h, &data[..]).unwrap();
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = raw_header(
            tar::EntryType::Symlink,
            path.as_bytes(),
            0o777,
            1_500_000_000,
            0,
        );
        let l = &mut h.as_old_mut().linkname;
        l[..target.len()].copy_from_slice(target.as_bytes());
        self.append(h, b"")
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = raw_header(
            tar::EntryType::Link,
            path.as_bytes(),
            0o644,
            1_500_000_000,
            0,
        );
        let l = &mut h.as_old_mut().linkname;
        l[..target.len()].copy_from_slice(target.as_bytes());
        self.append(h, b"")
    }

    pub fn device(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut h = raw_header(kind, path.as_bytes(), 0o666, 1_500_000_000, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.append(h, b"")
    }

    pub fn fifo(&mut self, path: &str) -> &mut Self {
        self.append(
            raw_header(
                tar::EntryType::Fifo,
                path.as_bytes(),
                0o640,
                1_500_000_000,
                0,
            ),
            b"",
        )
    }

    pub fn tar(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }

    pub fn gzip(&mut self) -> Vec<u8> {
        gzip(&self.tar())
    }

    pub fn zstd(&mut self) -> Vec<u8> {
        zstd::encode_all(&self.tar()[..], 3).unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Lists a directory tree (relative paths, sorted) for "nothing left behind" checks.
pub fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

use gantry_agent::image::{Digest, ImageStore, Reference};

/// Stores an image made of `layers` (plain tars; stored gzipped) and tags it `name`.
/// Returns the manifest digest.
pub fn put_image(store: &ImageStore, name: &str, layers: &[Vec<u8>]) -> Digest {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let gz = gzip(l);
        let info = store.content().put(&gz, None).unwrap();
        diff_ids.push(Digest::of(l).to_string());
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": info.digest, "size": info.size,
        }));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let c = store.content().put(&config, None).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c.digest, "size": c.size},
        "layers": descs,
    }))
    .unwrap();
    let m = store.content().put(&manifest, None).unwrap();
    store
        .index()
        .tag(
            &Reference::parse(name).unwrap(),
            &m.digest,
            "application/vnd.oci.image.manifest.v1+json",
            m.size,
        )
        .unwrap();
    m.digest
}
