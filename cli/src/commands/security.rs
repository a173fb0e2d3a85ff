//! `gantry token …` (join tokens) and `gantry credential request` (a certificate in
//! exchange for a token), plus the TLS material of `controller run`.

use super::cluster::Target;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use gantry_controller::state::{Command, JoinToken as StoredToken};
use gantry_proto::cluster::ReadKind;
use gantry_security::context::Context as CliContext;
use gantry_security::token::JoinToken;
use gantry_security::Role;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `30s`, `10m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: want a number and s, m, h or d (e.g. 1h)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h or d)")),
    };
    if n == 0 {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token; its secret is printed once, here.
    Create {
        /// What a credential obtained with it may do.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// How long the token may be used (30s, 10m, 1h, 7d).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// List join tokens (never their secrets).
    Ls,
    /// Refuse a token from now on.
    Revoke { id: String },
}

fn parse_role(s: &str) -> Result<Role, String> {
    let r: Role = s.parse().map_err(|e| format!("{e}"))?;
    match r {
        Role::Agent | Role::Controller | Role::Operator | Role::Viewer | Role::Registry => Ok(r),
        Role::Admin => Err("admin credentials come from --bootstrap only".into()),
    }
}

pub fn token(args: TokenArgs) -> i32 {
    super::cluster::block_on("token", token_main(args))
}

async fn token_main(args: TokenArgs) -> Result<()> {
    let mut c = args.target.client()?;
    match args.command {
        TokenCommand::Create { role, ttl } => {
            let ca_pem = c.ca_certificate().await?;
            let t = JoinToken::generate(&ca_pem)?;
            let cmd = Command::CreateToken {
                id: t.id.clone(),
                role,
                secret_sha256: t.secret_sha256(),
                expires_at_ms: now_ms().saturating_add(ttl.as_millis() as u64),
            };
            let (_, r) = c.write(&cmd).await?;
            r.map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!(
                "token {} (role {role}, expires in {}s); the secret is shown only now:",
                t.id,
                ttl.as_secs()
            );
            println!("{t}");
        }
        TokenCommand::Ls => {
            let (_, tokens): (u64, Vec<StoredToken>) = c.read(ReadKind::Tokens, false).await?;
            let now = now_ms();
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    let state = if t.revoked {
                        "revoked".to_string()
                    } else if now >= t.expires_at_ms {
                        "expired".to_string()
                    } else {
                        format!("valid {}s", (t.expires_at_ms - now) / 1000)
                    };
                    vec![t.id.clone(), t.role.to_string(), state]
                })
                .collect();
            crate::output::table(&["ID", "ROLE", "STATE"], &rows);
        }
        TokenCommand::Revoke { id } => {
            let (_, r) = c.write(&Command::RevokeToken { id: id.clone() }).await?;
            r.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct CredentialArgs {
    #[command(subcommand)]
    command: CredentialCommand,
}

#[derive(Subcommand)]
enum CredentialCommand {
    /// Obtain a certificate with a join token: writes DIR/NAME.crt, DIR/NAME.key (0600)
    /// and DIR/ca.crt, and with --context a context file for the CLI.
    Request {
        /// Controller member address(es), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        join: Vec<String>,
        #[arg(long, env = "GANTRY_TOKEN")]
        token: String,
        /// The identity's name (a node name, a user name, …).
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
        /// Also write a CLI context file here (0600).
        #[arg(long)]
        context: Option<PathBuf>,
    },
}

pub fn credential(args: CredentialArgs) -> i32 {
    super::cluster::block_on("credential", credential_main(args))
}

async fn credential_main(args: CredentialArgs) -> Result<()> {
    let CredentialCommand::Request {
        join,
        token,
        name,
        out,
        context,
    } = args.command;
    let joined = gantry_controller::api::join::join(&join, &token, &name).await?;
    joined.credential.save(&out, &name)?;
    gantry_security::pki::write_private(&out.join("ca.crt"), joined.ca_pem.as_bytes(), 0o644)?;
    let id = joined.credential.identity()?;
    println!(
        "{id}: {} and {} (CA {})",
        out.join(format!("{name}.crt")).display(),
        out.join(format!("{name}.key")).display(),
        out.join("ca.crt").display()
    );
    if let Some(path) = context {
        CliContext {
            controllers: join,
            ca_pem: joined.ca_pem,
            cert_pem: joined.credential.cert_pem,
            key_pem: joined.credential.key_pem,
        }
        .save(&path)?;
        println!("context: {}", path.display());
    }
    Ok(())
}

/// Where `controller run` keeps its TLS material: `DATA_DIR/pki/{ca.crt,ca.key,
/// member.crt,member.key,admin.context}`.
pub struct MemberPki {
    pub dir: PathBuf,
}

impl MemberPki {
    pub fn new(data_dir: &std::path::Path) -> Self {
        MemberPki {
            dir: data_dir.join("pki"),
        }
    }

    pub fn admin_context(&self) -> PathBuf {
        self.dir.join("admin.context")
    }

    /// Load, or create (bootstrap: a new CA) or obtain (join with a controller token) the
    /// member's TLS material.
    pub async fn prepare(
        &self,
        id: u64,
        bootstrap: bool,
        join: Option<&str>,
        token: Option<&str>,
        advertise: &str,
        cert_ttl: Duration,
    ) -> Result<gantry_controller::member::MemberTls> {
        use gantry_security::pki::{Ca, Credential, LeafOptions};
        use gantry_security::Identity;
        let me = Identity::new(Role::Controller, id.to_string())?;
        let member_crt = self.dir.join("member.crt");
        if !member_crt.exists() {
            if bootstrap {
                let ca = Ca::create(&format!("member {id}"))?;
                ca.save(&self.dir)?;
                let cred = ca.issue(&me, cert_ttl, &LeafOptions::default())?;
                cred.save(&self.dir, "member")?;
                let admin = ca.issue(
                    &Identity::new(Role::Admin, "admin")?,
                    Duration::from_secs(365 * 86400),
                    &LeafOptions::default(),
                )?;
                CliContext {
                    controllers: vec![advertise.to_string()],
                    ca_pem: ca.cert_pem().to_string(),
                    cert_pem: admin.cert_pem,
                    key_pem: admin.key_pem,
                }
                .save(&self.admin_context())?;
                eprintln!(
                    "gantry controller: new cluster CA in {}; admin context: {} \
                     (copy it to ~/.gantry/context or point GANTRY_CONTEXT at it)",
                    self.dir.display(),
                    self.admin_context().display()
                );
            } else if let Some(addr) = join {
                let Some(token) = token else {
                    bail!(
                        "joining needs a controller join token (--token; \
                         `gantry token create --role controller` on the cluster)"
                    );
                };
                let joined =
                    gantry_controller::api::join::join(&[addr.to_string()], token, &me.name)
                        .await?;
                let Some(key) = joined.ca_key_pem else {
                    bail!("the token is not a controller token (no CA key came back)");
                };
                let ca = Ca::from_pem(&joined.ca_pem, &key)?;
                ca.save(&self.dir)?;
                joined.credential.save(&self.dir, "member")?;
            } else {
                bail!(
                    "no TLS material in {} (start with --bootstrap, --join ADDR --token T, \
                     or --insecure)",
                    self.dir.display()
                );
            }
        }
        let ca_pem = std::fs::read_to_string(self.dir.join("ca.crt"))
            .with_context(|| format!("reading {}", self.dir.join("ca.crt").display()))?;
        let ca_key = self.dir.join("ca.key");
        let ca_key_pem = if ca_key.exists() {
            Some(
                std::fs::read_to_string(&ca_key)
                    .with_context(|| format!("reading {}", ca_key.display()))?,
            )
        } else {
            None
        };
        let cred = Credential::load(&self.dir, "member")?;
        let got = cred.identity()?;
        if got != me {
            bail!(
                "{} is the certificate of {got}, not of {me} (--id {id})",
                member_crt.display()
            );
        }
        Ok(gantry_controller::member::MemberTls {
            ca_pem,
            certs: gantry_security::tls::CertStore::new(&cred)?,
            ca_key_pem,
            cert_ttl,
        })
    }
}

/// Re-issue this member's own certificate from the CA it holds at ~2/3 of its remaining
/// lifetime, swap it in place and save it; runs until dropped.
pub async fn renew_member_forever(tls: gantry_controller::member::MemberTls, dir: PathBuf) {
    use gantry_security::pki::{Ca, LeafOptions};
    let Some(key) = tls.ca_key_pem.clone() else {
        return;
    };
    let Ok(ca) = Ca::from_pem(&tls.ca_pem, &key) else {
        return;
    };
    loop {
        let left = tls
            .certs
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(left * 2 / 3).await;
        let r = ca
            .issue(&tls.certs.identity(), tls.cert_ttl, &LeafOptions::default())
            .map_err(anyhow::Error::from)
            .and_then(|cred| {
                tls.certs.swap(&cred)?;
                cred.save(&dir, "member")?;
                Ok(())
            });
        match r {
            Ok(()) => tracing::info!("member certificate renewed"),
            Err(e) => {
                tracing::warn!("renewing the member certificate: {e:#}");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172800));
        assert!(parse_duration("1y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
