//! Image references: `[registry[:port]/]repo/path[:tag][@digest]`.
//!
//! Vocabulary (the distribution/reference grammar):
//! - **registry** (domain): the first path component when it contains `.` or `:`, is
//!   `localhost`, or has an uppercase letter; otherwise there is no registry in the
//!   reference, and the consumer (the registry client) applies its default. The store keeps
//!   references as written, so `busybox` and `docker.io/library/busybox` are distinct names;
//! - **repository**: `/`-separated path components, each `[a-z0-9]+` joined by the
//!   separators `.`, `_`, `__` or `-+`; registry + repository at most 255 characters;
//! - **tag**: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; `latest` when neither tag nor digest is
//!   given;
//! - **digest**: `@sha256:<hex>` pins content; a reference may carry both.
use std::fmt;
use std::str::FromStr;

use super::digest::Digest;

/// Why a string is not a valid reference; names the reference and the bad part.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid reference {reference:?}: empty")]
    Empty { reference: String },
    #[error("invalid reference {reference:?}: registry {registry:?} is not a valid host[:port]")]
    Registry { reference: String, registry: String },
    #[error("invalid reference {reference:?}: repository path component {component:?} {why}")]
    Component {
        reference: String,
        component: String,
        why: &'static str,
    },
    #[error("invalid reference {reference:?}: tag {tag:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    Tag { reference: String, tag: String },
    #[error("invalid reference {reference:?}: digest: {source}")]
    Digest {
        reference: String,
        #[source]
        source: super::digest::DigestError,
    },
    #[error("invalid reference {reference:?}: name is {len} characters, the limit is 255")]
    TooLong { reference: String, len: usize },
}

/// A parsed, validated image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: Option<String>,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let reference = s.to_string();
        if s.is_empty() {
            return Err(ReferenceError::Empty { reference });
        }
        let (rest, digest) = match s.rsplit_once('@') {
            Some((r, d)) => (
                r,
                Some(Digest::parse(d).map_err(|source| ReferenceError::Digest {
                    reference: reference.clone(),
                    source,
                })?),
            ),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(ReferenceError::Tag {
                    reference,
                    tag: t.to_string(),
                });
            }
        }
        if name.is_empty() {
            return Err(ReferenceError::Empty { reference });
        }
        if name.len() > 255 {
            return Err(ReferenceError::TooLong {
                reference,
                len: name.len(),
            });
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                if !valid_registry(first) {
                    return Err(ReferenceError::Registry {
                        reference,
                        registry: first.to_string(),
                    });
                }
                (Some(first.to_string()), path)
            }
            _ => (None, name),
        };
        for component in repository.split('/') {
            if let Some(why) = component_problem(component) {
                return Err(ReferenceError::Component {
                    reference,
                    component: component.to_string(),
                    why,
                });
            }
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            registry,
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The registry host[:port], if the reference names one.
    pub fn registry(&self) -> Option<&str> {
        self.registry.as_deref()
    }

    /// The repository path, without registry.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag (`latest` if neither tag nor digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `[registry/]repository`.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// `[registry/]repository:tag` — the key of the image index — or `None` if the reference
    /// has only a digest.
    pub fn name_tag(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !valid_tag(tag) {
            return Err(ReferenceError::Tag {
                reference: self.to_string(),
                tag: tag.to_string(),
            });
        }
        Ok(Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }

    /// The same repository pinned to `digest` (no tag).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

fn valid_tag(t: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = t.chars();
    match chars.next() {
        Some(c) if word(c) => {}
        _ => return false,
    }
    t.len() <= 128 && chars.all(|c| word(c) || c == '.' || c == '-')
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `None` if `c` is a valid path component, else why not.
fn component_problem(c: &str) -> Option<&'static str> {
    if c.is_empty() {
        return Some("is empty");
    }
    if c.chars().any(|ch| ch.is_ascii_uppercase()) {
        return Some("must be lowercase");
    }
    if !c
        .chars()
        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-'))
    {
        return Some("may contain only [a-z0-9] and the separators . _ __ -");
    }
    let alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
    let bytes: Vec<char> = c.chars().collect();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Some("must start and end with [a-z0-9]");
    }
    // Separator runs between alphanumerics: ".", "_", "__", or one or more "-".
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let run: String = bytes[start..i].iter().collect();
        let ok = run == "." || run == "_" || run == "__" || run.chars().all(|ch| ch == '-');
        if !ok {
            return Some("has an invalid separator (allowed: . _ __ or dashes)");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn reference_defaults_tag_latest() {
        let x = r("busybox");
        assert_eq!(x.registry(), None);
        assert_eq!(x.repository(), "busybox");
        assert_eq!(x.tag(), Some("latest"));
        assert_eq!(x.to_string(), "busybox:latest");
    }

    #[test]
    fn reference_full_forms() {
        let d = Digest::of(b"x");
        let x = r(&format!("localhost:5000/team/app_x/a-b:v1.2@{d}"));
        assert_eq!(x.registry(), Some("localhost:5000"));
        assert_eq!(x.repository(), "team/app_x/a-b");
        assert_eq!(x.tag(), Some("v1.2"));
        assert_eq!(x.digest(), Some(&d));
        assert_eq!(x.name_tag().unwrap(), "localhost:5000/team/app_x/a-b:v1.2");
        let y = r(&format!("reg.example.com/app@{d}"));
        assert_eq!(y.tag(), None);
        assert_eq!(y.name_tag(), None);
        assert_eq!(y.to_string(), format!("reg.example.com/app@{d}"));
        assert_eq!(r("library/busybox:1").registry(), None);
        assert_eq!(r("localhost/app").registry(), Some("localhost"));
        assert_eq!(r("a__b/c---d/e.f").repository(), "a__b/c---d/e.f");
        assert_eq!(r("127.0.0.1:5000/x:y").registry(), Some("127.0.0.1:5000"));
    }

    #[test]
    fn reference_errors_name_the_part() {
        let e = Reference::parse("Busybox").unwrap_err();
        assert!(
            matches!(&e, ReferenceError::Component { component, why, .. } if component == "Busybox" && why.contains("lowercase")),
            "{e}"
        );
        let e = Reference::parse("app:-bad").unwrap_err();
        assert!(
            matches!(&e, ReferenceError::Tag { tag, .. } if tag == "-bad"),
            "{e}"
        );
        let e = Reference::parse(&format!("app:{}", "a".repeat(129))).unwrap_err();
        assert!(matches!(e, ReferenceError::Tag { .. }));
        let e = Reference::parse("reg:99999/app").unwrap_err();
        assert!(
            matches!(&e, ReferenceError::Registry { registry, .. } if registry == "reg:99999"),
            "{e}"
        );
        let e = Reference::parse("app@sha256:abc").unwrap_err();
        assert!(matches!(e, ReferenceError::Digest { .. }));
        for bad in ["a..b", "a._b", "_a", "a-", "a//b", "a___b", "a b", "/a"] {
            let e = Reference::parse(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
        assert!(matches!(
            Reference::parse(""),
            Err(ReferenceError::Empty { .. })
        ));
        let long = format!("{}/b", "a".repeat(255));
        assert!(matches!(
            Reference::parse(&long),
            Err(ReferenceError::TooLong { .. })
        ));
    }

    #[test]
    fn reference_with_tag_and_digest() {
        let x = r("reg.io/app:1");
        assert_eq!(x.with_tag("2").unwrap().to_string(), "reg.io/app:2");
        assert!(x.with_tag(".x").is_err());
        let d = Digest::of(b"y");
        assert_eq!(
            x.with_digest(d.clone()).to_string(),
            format!("reg.io/app@{d}")
        );
    }
}
