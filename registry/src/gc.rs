//! Garbage collection: **mark** every blob reachable from a manifest revision of any
//! repository (the manifest itself, its config and layers; an index's children are
//! revisions too), then **sweep** every other blob and the repository links to blobs that
//! are gone. Like the reference registry's `garbage-collect`, it runs offline: stop the
//! registry first (an upload finishing during a sweep could lose its blob).
//!
//! Untagged revisions are kept (delete them by digest first to reclaim their space).

use crate::manifest;
use crate::reference::Digest;
use crate::storage::{self, Layout, StorageError};
use std::collections::HashSet;
use std::fs;

/// What a collection found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub manifests: usize,
    pub blobs_kept: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub links_removed: usize,
}

/// Collects garbage under `root`. With `dry_run`, only reports what would go.
pub fn collect(root: &std::path::Path, dry_run: bool) -> Result<GcReport, StorageError> {
    let l = Layout::new(root);
    let mut report = GcReport::default();
    let mut marked: HashSet<Digest> = HashSet::new();
    let repos = storage::list_repositories(&l)?;
    for repo in &repos {
        let revs_dir = l.revisions(repo);
        for d in storage::linked(&revs_dir)? {
            let blob = l.blob(&d);
            if !blob.exists() {
                continue;
            }
            report.manifests += 1;
            let media_type = fs::read_to_string(revs_dir.join(d.hex())).ok();
            let body = storage::read_small(&blob)?;
            marked.insert(d.clone());
            match manifest::parse(&body, media_type.as_deref()) {
                Ok(p) => marked.extend(p.blobs.into_iter().map(|r| r.digest)),
                // It was validated on push; a manifest that no longer parses is reported,
                // and only its own blob is kept.
                Err(e) => tracing::warn!(repo, digest = %d, error = %e, "unreadable manifest"),
            }
        }
    }
    for (d, path) in storage::all_blobs(&l)? {
        if marked.contains(&d) {
            report.blobs_kept += 1;
            continue;
        }
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if !dry_run {
            fs::remove_file(&path).map_err(|source| StorageError::Io {
                op: "remove",
                path: path.clone(),
                source,
            })?;
        }
        report.blobs_removed += 1;
        report.bytes_freed += size;
    }
    for repo in &repos {
        let dir = l.layer_links(repo);
        for d in storage::linked(&dir)? {
            let gone = if dry_run {
                !marked.contains(&d)
            } else {
                !l.blob(&d).exists()
            };
            if gone {
                if !dry_run {
                    let _ = fs::remove_file(dir.join(d.hex()));
                }
                report.links_removed += 1;
            }
        }
    }
    Ok(report)
}
