//! The metadata store: container records in sled (one tree of id → JSON record, one of
//! name → id), so they survive agent restarts and reboots. Writes that change what a user
//! sees are flushed before they are acknowledged.

use std::path::Path;

use super::record::ContainerRecord;
use super::EngineError;

pub struct Store {
    db: sled::Db,
    containers: sled::Tree,
    names: sled::Tree,
}

fn db_err(source: sled::Error) -> EngineError {
    EngineError::Store { source }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, EngineError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(4 << 20)
            .open()
            .map_err(db_err)?;
        Ok(Store {
            containers: db.open_tree("containers").map_err(db_err)?,
            names: db.open_tree("names").map_err(db_err)?,
            db,
        })
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.db.flush().map(|_| ()).map_err(db_err)
    }

    /// Inserts a new record; fails with `NameInUse` if its name is taken.
    pub fn insert_new(&self, rec: &ContainerRecord) -> Result<(), EngineError> {
        let value = serde_json::to_vec(rec).expect("record serializes");
        // compare_and_swap on the name makes the check and the claim one step.
        match self
            .names
            .compare_and_swap(
                rec.name.as_bytes(),
                None as Option<&[u8]>,
                Some(rec.id.as_bytes()),
            )
            .map_err(db_err)?
        {
            Ok(()) => {}
            Err(cas) => {
                let id = cas
                    .current
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default();
                return Err(EngineError::NameInUse {
                    name: rec.name.clone(),
                    id,
                });
            }
        }
        if let Err(e) = self.containers.insert(rec.id.as_bytes(), value) {
            let _ = self.names.remove(rec.name.as_bytes());
            return Err(db_err(e));
        }
        self.flush()
    }

    pub fn save(&self, rec: &ContainerRecord) -> Result<(), EngineError> {
        let value = serde_json::to_vec(rec).expect("record serializes");
        self.containers
            .insert(rec.id.as_bytes(), value)
            .map_err(db_err)?;
        self.flush()
    }

    pub fn remove(&self, rec: &ContainerRecord) -> Result<(), EngineError> {
        self.containers.remove(rec.id.as_bytes()).map_err(db_err)?;
        self.names.remove(rec.name.as_bytes()).map_err(db_err)?;
        self.flush()
    }

    pub fn get(&self, id: &str) -> Result<Option<ContainerRecord>, EngineError> {
        match self.containers.get(id.as_bytes()).map_err(db_err)? {
            None => Ok(None),
            Some(v) => {
                serde_json::from_slice(&v)
                    .map(Some)
                    .map_err(|e| EngineError::CorruptRecord {
                        id: id.to_string(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    pub fn list(&self) -> Result<Vec<ContainerRecord>, EngineError> {
        let mut out = Vec::new();
        for kv in self.containers.iter() {
            let (k, v) = kv.map_err(db_err)?;
            match serde_json::from_slice::<ContainerRecord>(&v) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(
                    id = %String::from_utf8_lossy(&k),
                    error = %e,
                    "skipping unreadable container record"
                ),
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.created_nanos));
        Ok(out)
    }

    /// A container by full id, name, or unique id prefix (docker's rules).
    pub fn resolve(&self, reference: &str) -> Result<ContainerRecord, EngineError> {
        let not_found = || EngineError::NotFound {
            what: "container",
            reference: reference.to_string(),
        };
        if reference.is_empty() {
            return Err(not_found());
        }
        if let Some(r) = self.get(reference)? {
            return Ok(r);
        }
        if let Some(id) = self.names.get(reference.as_bytes()).map_err(db_err)? {
            if let Some(r) = self.get(&String::from_utf8_lossy(&id))? {
                return Ok(r);
            }
        }
        let mut found = None;
        for kv in self.containers.scan_prefix(reference.as_bytes()) {
            let (k, _) = kv.map_err(db_err)?;
            if found.is_some() {
                return Err(EngineError::Ambiguous {
                    reference: reference.to_string(),
                });
            }
            found = Some(String::from_utf8_lossy(&k).into_owned());
        }
        match found {
            Some(id) => self.get(&id)?.ok_or_else(not_found),
            None => Err(not_found()),
        }
    }
}
