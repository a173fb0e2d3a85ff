//! The netfilter boundary: read a table (`iptables-save`), apply a script
//! (`iptables-restore --noflush`, one atomic transaction). [`IptablesFirewall`] runs the
//! standard tools; [`FakeFirewall`] records scripts and can be told to fail.
//!
//! Why the tools and not a crate: they work the same on iptables-legacy and iptables-nft
//! hosts (what docker and podman's netavark also drive), a restore applies many rules in one
//! fork and one kernel transaction, and a container without published ports costs no fork
//! at all (the base chains are written once per agent start).

use std::future::Future;
use std::process::Stdio;
use std::sync::Mutex;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::error::{NetworkError, Result};
use super::rules::Table;

/// Reads and writes netfilter tables.
pub trait Firewall: Send + Sync {
    /// The table in `iptables-save` format.
    fn save(&self, table: Table) -> impl Future<Output = Result<String>> + Send;
    /// Applies an `iptables-restore` script (`*table … COMMIT`) without flushing the table.
    /// An empty script is a no-op.
    fn restore(&self, table: Table, script: &str) -> impl Future<Output = Result<()>> + Send;
}

/// The `iptables-save` / `iptables-restore` binaries.
#[derive(Debug, Clone)]
pub struct IptablesFirewall {
    save_bin: String,
    restore_bin: String,
}

impl Default for IptablesFirewall {
    fn default() -> Self {
        IptablesFirewall {
            save_bin: "iptables-save".into(),
            restore_bin: "iptables-restore".into(),
        }
    }
}

impl Firewall for IptablesFirewall {
    async fn save(&self, table: Table) -> Result<String> {
        let out = Command::new(&self.save_bin)
            .args(["-t", table.as_str()])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| NetworkError::Firewall {
                what: format!("{} -t {}", self.save_bin, table.as_str()),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(NetworkError::Firewall {
                what: format!("{} -t {}", self.save_bin, table.as_str()),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        String::from_utf8(out.stdout).map_err(|e| NetworkError::Firewall {
            what: format!("{} -t {}", self.save_bin, table.as_str()),
            detail: e.to_string(),
        })
    }

    async fn restore(&self, table: Table, script: &str) -> Result<()> {
        if script.is_empty() {
            return Ok(());
        }
        let what = || format!("{} table {}:\n{script}", self.restore_bin, table.as_str());
        let mut child = Command::new(&self.restore_bin)
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| NetworkError::Firewall {
                what: what(),
                detail: e.to_string(),
            })?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| NetworkError::Firewall {
                what: what(),
                detail: e.to_string(),
            })?;
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| NetworkError::Firewall {
                what: what(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(NetworkError::Firewall {
                what: what(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

/// In-memory stand-in: keeps every applied script, fails `restore` for scripts containing
/// `fail_on` (to test rollback), and `save` returns an empty table.
#[derive(Debug, Default)]
pub struct FakeFirewall {
    pub applied: Mutex<Vec<String>>,
    pub fail_on: Option<String>,
}

impl Firewall for FakeFirewall {
    async fn save(&self, table: Table) -> Result<String> {
        Ok(format!("*{}\nCOMMIT\n", table.as_str()))
    }

    async fn restore(&self, table: Table, script: &str) -> Result<()> {
        if script.is_empty() {
            return Ok(());
        }
        if let Some(pat) = &self.fail_on {
            if script.contains(pat.as_str()) {
                return Err(NetworkError::Firewall {
                    what: format!("fake restore table {}", table.as_str()),
                    detail: format!("refused a script containing '{pat}'"),
                });
            }
        }
        self.applied.lock().unwrap().push(script.to_string());
        Ok(())
    }
}
