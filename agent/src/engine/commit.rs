//! `commit`: a container's writable layer becomes a new image on top of its image.
//!
//! Vocabulary:
//! - **change**: one `--change` instruction (`CMD`, `ENTRYPOINT`, `ENV`, `WORKDIR`, `USER`,
//!   `EXPOSE`, `LABEL`, `STOPSIGNAL`), applied to the new image's config as a Dockerfile
//!   line would be;
//! - **new config / new manifest**: the base image's, plus the layer's diff id, a history
//!   entry and the changes; the manifest lists the base layers and the new one.
//!
//! Pure (JSON in, JSON out) and unit-tested; the store side (diffing the upper dir with
//! [`crate::build::layer::diff_upper`], writing blobs, tagging) is in
//! [`super::images::StoreImages`].

use serde_json::{json, Map, Value};

use super::EngineError;
use crate::image::manifest::{OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP, OCI_MANIFEST};

/// One `--change` instruction, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Cmd(Vec<String>),
    Entrypoint(Vec<String>),
    Env(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Label(Vec<(String, String)>),
    StopSignal(String),
}

fn bad(change: &str, reason: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument {
        field: "--change",
        value: change.to_string(),
        reason: reason.into(),
    }
}

/// `["a","b"]` (exec form) or `a b` (shell form: `/bin/sh -c "a b"`).
fn command_form(change: &str, rest: &str) -> Result<Vec<String>, EngineError> {
    if rest.starts_with('[') {
        serde_json::from_str::<Vec<String>>(rest)
            .map_err(|e| bad(change, format!("not a JSON array of strings: {e}")))
    } else {
        Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
    }
}

/// `K=V K2="V 2"` pairs, or the legacy `K V` form.
fn pairs(change: &str, rest: &str) -> Result<Vec<(String, String)>, EngineError> {
    if !rest.contains('=') {
        return match rest.split_once(char::is_whitespace) {
            Some((k, v)) => Ok(vec![(k.to_string(), v.trim().to_string())]),
            None => Err(bad(change, "expected KEY=VALUE")),
        };
    }
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(bad(change, format!("bad key {key:?}: expected KEY=VALUE")));
        }
        let mut value = String::new();
        let mut quote = None;
        while let Some(&c) = chars.peek() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => break,
                _ => value.push(c),
            }
            chars.next();
        }
        if quote.is_some() {
            return Err(bad(change, "unterminated quote"));
        }
        out.push((key, value));
    }
}

/// Parses one `--change` value.
pub fn parse_change(change: &str) -> Result<Change, EngineError> {
    let trimmed = change.trim();
    let (word, rest) = trimmed
        .split_once(char::is_whitespace)
        .map(|(w, r)| (w, r.trim()))
        .unwrap_or((trimmed, ""));
    if rest.is_empty() {
        return Err(bad(change, format!("{word} needs an argument")));
    }
    Ok(match word.to_ascii_uppercase().as_str() {
        "CMD" => Change::Cmd(command_form(change, rest)?),
        "ENTRYPOINT" => Change::Entrypoint(command_form(change, rest)?),
        "ENV" => Change::Env(pairs(change, rest)?),
        "LABEL" => Change::Label(pairs(change, rest)?),
        "WORKDIR" => Change::Workdir(rest.to_string()),
        "USER" => Change::User(rest.to_string()),
        "STOPSIGNAL" => Change::StopSignal(rest.to_string()),
        "EXPOSE" => Change::Expose(
            rest.split_whitespace()
                .map(|p| {
                    if p.contains('/') {
                        p.to_string()
                    } else {
                        format!("{p}/tcp")
                    }
                })
                .collect(),
        ),
        other => {
            return Err(bad(
                change,
                format!(
                    "{other} is not supported (CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, LABEL, STOPSIGNAL)"
                ),
            ))
        }
    })
}

/// What a commit records besides the layer.
#[derive(Debug, Clone, Default)]
pub struct CommitMeta {
    pub message: String,
    pub author: String,
    pub changes: Vec<Change>,
    /// RFC 3339 creation time.
    pub created: String,
    /// The container the layer came from (for the history line).
    pub container: String,
}

/// The new image config: the base's, with `diff_id` appended to `rootfs.diff_ids`, a
/// history entry, `created`/`author` set and the changes applied.
pub fn new_config(base: &Value, diff_id: &str, meta: &CommitMeta) -> Value {
    let mut v = base.clone();
    if !v["config"].is_object() {
        v["config"] = json!({});
    }
    let c = v["config"].as_object_mut().expect("config is an object");
    for change in &meta.changes {
        apply(c, change);
    }
    v["created"] = json!(meta.created);
    if !meta.author.is_empty() {
        v["author"] = json!(meta.author);
    }
    let mut diff_ids = v["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    diff_ids.push(json!(diff_id));
    v["rootfs"] = json!({ "type": "layers", "diff_ids": diff_ids });
    let mut history = v["history"].as_array().cloned().unwrap_or_default();
    let mut entry = json!({
        "created": meta.created,
        "created_by": format!("gantry commit {}", meta.container),
    });
    if !meta.message.is_empty() {
        entry["comment"] = json!(meta.message);
    }
    if !meta.author.is_empty() {
        entry["author"] = json!(meta.author);
    }
    history.push(entry);
    v["history"] = Value::Array(history);
    v
}

fn apply(c: &mut Map<String, Value>, change: &Change) {
    match change {
        Change::Cmd(a) => {
            c.insert("Cmd".into(), json!(a));
        }
        Change::Entrypoint(a) => {
            c.insert("Entrypoint".into(), json!(a));
        }
        Change::Env(kvs) => {
            let mut env: Vec<String> = c
                .get("Env")
                .and_then(|e| serde_json::from_value(e.clone()).ok())
                .unwrap_or_default();
            for (k, val) in kvs {
                env.retain(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) != k);
                env.push(format!("{k}={val}"));
            }
            c.insert("Env".into(), json!(env));
        }
        Change::Workdir(w) => {
            c.insert("WorkingDir".into(), json!(w));
        }
        Change::User(u) => {
            c.insert("User".into(), json!(u));
        }
        Change::StopSignal(s) => {
            c.insert("StopSignal".into(), json!(s));
        }
        Change::Expose(ports) => {
            let e = c.entry("ExposedPorts").or_insert_with(|| json!({}));
            if !e.is_object() {
                *e = json!({});
            }
            for p in ports {
                e[p.as_str()] = json!({});
            }
        }
        Change::Label(kvs) => {
            let l = c.entry("Labels").or_insert_with(|| json!({}));
            if !l.is_object() {
                *l = json!({});
            }
            for (k, val) in kvs {
                l[k.as_str()] = json!(val);
            }
        }
    }
}

/// The layer media types of an OCI manifest for a base layer of either kind.
fn oci_layer_type(media_type: &str) -> &str {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => OCI_LAYER_GZIP,
        "application/vnd.docker.image.rootfs.diff.tar" => OCI_LAYER,
        other => other,
    }
}

/// An OCI manifest: the base layers (docker media types translated), then the new one
/// (an uncompressed tar whose digest is its diff id).
pub fn new_manifest(
    base_layers: &[Value],
    config_digest: &str,
    config_size: u64,
    layer_digest: &str,
    layer_size: u64,
) -> Value {
    let mut layers: Vec<Value> = base_layers
        .iter()
        .map(|l| {
            let mut l = l.clone();
            let mt = l["mediaType"].as_str().unwrap_or(OCI_LAYER).to_string();
            l["mediaType"] = json!(oci_layer_type(&mt));
            l
        })
        .collect();
    layers.push(json!({ "mediaType": OCI_LAYER, "digest": layer_digest, "size": layer_size }));
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size },
        "layers": layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse_in_both_forms() {
        assert_eq!(
            parse_change(r#"CMD ["sleep", "1"]"#).unwrap(),
            Change::Cmd(vec!["sleep".into(), "1".into()])
        );
        assert_eq!(
            parse_change("cmd echo hi").unwrap(),
            Change::Cmd(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(
            parse_change(r#"ENV A=1 B="two words""#).unwrap(),
            Change::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into())
            ])
        );
        assert_eq!(
            parse_change("ENV A one").unwrap(),
            Change::Env(vec![("A".into(), "one".into())])
        );
        assert_eq!(
            parse_change("EXPOSE 80 53/udp").unwrap(),
            Change::Expose(vec!["80/tcp".into(), "53/udp".into()])
        );
        for (bad, why) in [
            ("RUN rm -rf /", "RUN is not supported"),
            ("CMD", "needs an argument"),
            ("CMD [1, 2]", "JSON array of strings"),
            ("ENV A=\"x", "unterminated quote"),
        ] {
            let e = parse_change(bad).unwrap_err().to_string();
            assert!(e.contains("--change") && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn config_gets_layer_history_and_changes() {
        let base = json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Cmd": ["sh"], "Env": ["PATH=/bin", "A=old"] },
            "rootfs": { "type": "layers", "diff_ids": ["sha256:aa"] },
            "history": [{ "created_by": "base" }],
        });
        let meta = CommitMeta {
            message: "added a file".into(),
            author: "me".into(),
            changes: vec![
                parse_change("CMD [\"cat\", \"/f\"]").unwrap(),
                parse_change("ENV A=new").unwrap(),
                parse_change("LABEL x=y").unwrap(),
                parse_change("EXPOSE 80").unwrap(),
            ],
            created: "2026-11-28T00:00:00Z".into(),
            container: "abc".into(),
        };
        let v = new_config(&base, "sha256:bb", &meta);
        assert_eq!(v["rootfs"]["diff_ids"], json!(["sha256:aa", "sha256:bb"]));
        assert_eq!(v["config"]["Cmd"], json!(["cat", "/f"]));
        assert_eq!(v["config"]["Env"], json!(["PATH=/bin", "A=new"]));
        assert_eq!(v["config"]["Labels"]["x"], "y");
        assert!(v["config"]["ExposedPorts"]["80/tcp"].is_object());
        assert_eq!(v["author"], "me");
        let h = v["history"].as_array().unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1]["comment"], "added a file");
        assert_eq!(h[1]["created_by"], "gantry commit abc");
        // The base is untouched and still parses as an OCI config.
        let _: oci_spec::image::ImageConfiguration = serde_json::from_value(v).unwrap();
        assert_eq!(base["config"]["Cmd"], json!(["sh"]));
    }

    #[test]
    fn manifest_appends_the_layer_and_translates_docker_types() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let base = vec![json!({
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "digest": d('1'), "size": 3
        })];
        let m = new_manifest(&base, &d('c'), 10, &d('d'), 20);
        assert_eq!(m["layers"][0]["mediaType"], OCI_LAYER_GZIP);
        assert_eq!(m["layers"][1]["digest"], d('d'));
        assert_eq!(m["layers"][1]["mediaType"], OCI_LAYER);
        assert_eq!(m["config"]["digest"], d('c'));
        let _: oci_spec::image::ImageManifest = serde_json::from_value(m).unwrap();
    }
}
