//! Garbage collection: removes blobs and snapshots that no image and no container uses.
//!
//! Vocabulary:
//! - **roots**: every name in the image index, plus the snapshot keys the caller says are
//!   in use (containers' active snapshots — the store does not know containers);
//! - **mark**: blobs reachable from a named manifest or index (child manifests, configs,
//!   layers) and snapshots reachable from a named image's chain IDs or from a root key
//!   (following parents); **sweep**: everything else, children before parents.
//!
//! Blobs and unpack snapshots younger than a grace period are kept: a pull or load may have
//! written them and not yet tagged its image.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use super::digest::Digest;
use super::manifest::{self, Parsed};
use super::snapshot::{Info, Kind, Snapshotter};
use super::{ImageStore, StoreError};

/// What a collection removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    pub blobs_removed: Vec<Digest>,
    pub bytes_freed: u64,
    pub snapshots_removed: Vec<String>,
}

/// Orders the snapshots to remove: those not reachable from `keep` (following parents),
/// children first. Pure.
pub fn snapshots_to_remove(infos: &[Info], keep: &HashSet<String>) -> Vec<String> {
    let by_key: HashMap<&str, &Info> = infos.iter().map(|i| (i.key.as_str(), i)).collect();
    let mut live: HashSet<&str> = HashSet::new();
    for k in keep {
        let mut cur = by_key.get(k.as_str()).copied();
        while let Some(i) = cur {
            if !live.insert(i.key.as_str()) {
                break;
            }
            cur = i.parent.as_deref().and_then(|p| by_key.get(p).copied());
        }
    }
    // Depth from the bottom: deeper first means children before parents.
    let depth = |i: &Info| {
        let mut d = 0;
        let mut cur = i.parent.as_deref();
        while let Some(p) = cur {
            d += 1;
            cur = by_key.get(p).and_then(|x| x.parent.as_deref());
        }
        d
    };
    let mut dead: Vec<(usize, String)> = infos
        .iter()
        .filter(|i| !live.contains(i.key.as_str()))
        .map(|i| (depth(i), i.key.clone()))
        .collect();
    dead.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    dead.into_iter().map(|(_, k)| k).collect()
}

/// Marks the blobs reachable from the manifest or index `d` (missing blobs are skipped).
fn mark_blobs(
    store: &ImageStore,
    d: &Digest,
    media_type: Option<&str>,
    live: &mut BTreeSet<Digest>,
) {
    if !live.insert(d.clone()) {
        return;
    }
    let Ok(bytes) = store.content().read(d) else {
        return;
    };
    match manifest::parse(&bytes, media_type, "gc") {
        Ok(Parsed::Index(idx)) => {
            for m in idx.manifests() {
                if let Ok(md) = manifest::descriptor_digest(m, "gc") {
                    mark_blobs(store, &md, Some(m.media_type().as_ref()), live);
                }
            }
        }
        Ok(Parsed::Manifest(m)) => {
            for desc in std::iter::once(m.config()).chain(m.layers().iter()) {
                if let Ok(x) = manifest::descriptor_digest(desc, "gc") {
                    live.insert(x);
                }
            }
        }
        Err(_) => {}
    }
}

/// Collects garbage; `container_snapshots` are snapshot keys in use by containers.
pub fn collect(
    store: &ImageStore,
    container_snapshots: &HashSet<String>,
    grace: Duration,
) -> Result<GcReport, StoreError> {
    let mut report = GcReport::default();
    let entries = store.index().list()?;
    // Blobs.
    let mut live = BTreeSet::new();
    for e in &entries {
        mark_blobs(store, &e.digest, Some(&e.media_type), &mut live);
    }
    for b in store.content().list()? {
        if live.contains(&b.digest) {
            continue;
        }
        let young = std::fs::metadata(store.content().blob_path(&b.digest))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < grace);
        if !young && store.content().delete(&b.digest)? {
            report.bytes_freed += b.size;
            report.blobs_removed.push(b.digest);
        }
    }
    // Snapshots.
    let mut keep: HashSet<String> = container_snapshots.clone();
    for e in &entries {
        if let Ok(img) = store.resolve_digest(&e.name, &e.digest, Some(&e.media_type)) {
            keep.extend(img.chain_ids.iter().map(|c| c.to_string()));
        }
    }
    let infos = store.snapshotter().list()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for i in &infos {
        // In-progress unpacks.
        if i.kind == Kind::Active
            && i.key.starts_with("unpack-")
            && now.saturating_sub(i.created) < grace.as_secs()
        {
            keep.insert(i.key.clone());
        }
    }
    for k in snapshots_to_remove(&infos, &keep) {
        store.snapshotter().remove(&k)?;
        report.snapshots_removed.push(k);
    }
    store
        .content()
        .clean_ingest(grace.max(Duration::from_secs(3600)))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(key: &str, parent: Option<&str>) -> Info {
        Info {
            key: key.into(),
            id: 0,
            kind: Kind::Committed,
            parent: parent.map(str::to_string),
            created: 0,
        }
    }

    #[test]
    fn sweep_keeps_ancestors_of_roots_and_orders_children_first() {
        let infos = vec![
            info("a", None),
            info("b", Some("a")),
            info("c", Some("b")),
            info("x", None),
            info("y", Some("x")),
            info("ctr", Some("b")),
        ];
        let keep: HashSet<String> = ["ctr".to_string()].into();
        assert_eq!(snapshots_to_remove(&infos, &keep), vec!["c", "y", "x"]);
        let keep: HashSet<String> = HashSet::new();
        let all = snapshots_to_remove(&infos, &keep);
        let pos = |k: &str| all.iter().position(|x| x == k).unwrap();
        assert!(pos("c") < pos("b") && pos("b") < pos("a") && pos("ctr") < pos("b"));
        assert_eq!(all.len(), 6);
    }
}
