//! Writes a throwaway cluster CA and credentials for local experiments and benches
//! (bench/registry.sh --mtls): `ca.crt`, and `NAME.crt` + `NAME.key` per `ROLE:NAME`.
//! A real cluster's CA comes from `gantry controller run --bootstrap`.
//!
//! Usage: cargo run -p gantry-security --example dev-certs -- DIR ROLE:NAME...

use gantry_security::pki::{Ca, LeafOptions};
use gantry_security::{Identity, Role};
use std::path::PathBuf;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: dev-certs DIR ROLE:NAME...")?);
    let ca = Ca::create("dev")?;
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
    for spec in args {
        let (role, name) = spec
            .split_once(':')
            .ok_or_else(|| format!("{spec:?}: expected ROLE:NAME"))?;
        let id = Identity::new(role.parse::<Role>()?, name)?;
        ca.issue(&id, Duration::from_secs(24 * 3600), &LeafOptions::default())?
            .save(&dir, name)?;
        println!("{}: {id}", dir.join(format!("{name}.crt")).display());
    }
    Ok(())
}
