//! Content digests: `sha256:<64 lowercase hex>`.
//!
//! Vocabulary:
//! - **digest**: the OCI content identifier `algorithm:encoded`; only `sha256` is accepted
//!   (the algorithm every registry and image in use produces);
//! - **hasher**: [`DigestHasher`], a running sha256 that yields a [`Digest`].
use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// Why a string is not a valid digest. Always names the rejected value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("invalid digest {value:?}: missing ':' between algorithm and hex")]
    NoSeparator { value: String },
    #[error("invalid digest {value:?}: unsupported algorithm {algorithm:?} (only sha256)")]
    Algorithm { value: String, algorithm: String },
    #[error(
        "invalid digest {value:?}: sha256 needs 64 lowercase hex characters, got {len} characters"
    )]
    Length { value: String, len: usize },
    #[error("invalid digest {value:?}: {ch:?} is not a lowercase hex character")]
    Hex { value: String, ch: char },
}

/// A validated sha256 digest. Cheap to clone, ordered, hashable, serialises as its string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let (algorithm, hex) = s.split_once(':').ok_or_else(|| DigestError::NoSeparator {
            value: s.to_string(),
        })?;
        if algorithm != "sha256" {
            return Err(DigestError::Algorithm {
                value: s.to_string(),
                algorithm: algorithm.to_string(),
            });
        }
        Digest::from_hex(hex).map_err(|e| match e {
            DigestError::Length { len, .. } => DigestError::Length {
                value: s.to_string(),
                len,
            },
            DigestError::Hex { ch, .. } => DigestError::Hex {
                value: s.to_string(),
                ch,
            },
            other => other,
        })
    }

    /// Builds a digest from the 64 hex characters alone (as found in blob file names).
    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        if hex.len() != 64 {
            return Err(DigestError::Length {
                value: hex.to_string(),
                len: hex.chars().count(),
            });
        }
        if let Some(ch) = hex
            .chars()
            .find(|c| !(c.is_ascii_digit() || ('a'..='f').contains(c)))
        {
            return Err(DigestError::Hex {
                value: hex.to_string(),
                ch,
            });
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// The sha256 of `data`.
    pub fn of(data: &[u8]) -> Digest {
        let mut h = DigestHasher::new();
        h.update(data);
        h.finish()
    }

    /// Always `"sha256"`.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The 64 hex characters.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = DigestError;
    fn try_from(d: &oci_spec::image::Digest) -> Result<Self, Self::Error> {
        Digest::parse(d.as_ref())
    }
}

impl From<&Digest> for oci_spec::image::Digest {
    fn from(d: &Digest) -> Self {
        // A validated sha256 digest is always a valid oci-spec digest.
        oci_spec::image::Digest::from_str(&d.to_string()).expect("sha256 digest is valid")
    }
}

/// A running sha256 over a byte stream.
#[derive(Clone, Default)]
pub struct DigestHasher {
    inner: sha2::Sha256,
    len: u64,
}

impl DigestHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Digest {
        Digest {
            hex: hex::encode(self.inner.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_empty_input_is_the_well_known_value() {
        assert_eq!(Digest::of(b"").to_string(), EMPTY);
        assert_eq!(Digest::parse(EMPTY).unwrap(), Digest::of(b""));
    }

    #[test]
    fn digest_parse_rejects_bad_values_naming_them() {
        let e = Digest::parse("sha256abc").unwrap_err();
        assert!(matches!(e, DigestError::NoSeparator { .. }));
        let e = Digest::parse("md5:abcd").unwrap_err();
        assert!(e.to_string().contains("md5"), "{e}");
        let e = Digest::parse("sha256:abcd").unwrap_err();
        assert!(
            e.to_string().contains("sha256:abcd") && e.to_string().contains("got 4"),
            "{e}"
        );
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        let e = Digest::parse(&upper).unwrap_err();
        assert!(matches!(e, DigestError::Hex { ch: 'E', .. }), "{e}");
        let e = Digest::parse(&EMPTY.replace('e', "g")).unwrap_err();
        assert!(matches!(e, DigestError::Hex { ch: 'g', .. }));
    }

    #[test]
    fn digest_roundtrips_through_serde_and_oci_spec() {
        let d = Digest::of(b"hello");
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(j, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&j).unwrap(), d);
        let o: oci_spec::image::Digest = (&d).into();
        assert_eq!(Digest::try_from(&o).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:00\"").is_err());
    }

    #[test]
    fn hasher_counts_bytes_and_matches_one_shot() {
        let mut h = DigestHasher::new();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.len(), 5);
        assert_eq!(h.finish(), Digest::of(b"hello"));
    }
}
