//! Progress of a pull or push: one event per layer step. [`LinePrinter`] writes plain
//! lines (`<short digest>: <what>`) like `docker pull` does without a terminal.

use crate::image::Digest;
use std::io::Write;

/// What happened to one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerEvent {
    AlreadyExists,
    Downloading {
        size: u64,
    },
    /// Bytes received so far of `size` (sent about once per MiB).
    Progress {
        received: u64,
        size: u64,
    },
    Downloaded {
        size: u64,
    },
    Unpacked,
    Mounted {
        from: String,
    },
    Uploading {
        size: u64,
    },
    Pushed {
        size: u64,
    },
}

/// Receives progress events (from several tasks at once).
pub trait Progress: Send + Sync {
    fn layer(&self, digest: &Digest, event: LayerEvent);
    fn message(&self, text: &str);
}

/// Prints each event but byte counts as a line on stderr.
pub struct LinePrinter;

impl Progress for LinePrinter {
    fn layer(&self, digest: &Digest, event: LayerEvent) {
        let short = &digest.hex()[..12];
        let Some(text) = describe(&event) else {
            return;
        };
        let _ = writeln!(std::io::stderr().lock(), "{short}: {text}");
    }
    fn message(&self, text: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }
}

/// The words for an event, as `docker pull` says them; None for byte counts.
pub fn describe(event: &LayerEvent) -> Option<String> {
    Some(match event {
        LayerEvent::AlreadyExists => "already exists".to_string(),
        LayerEvent::Downloading { size } => format!("downloading ({})", human(*size)),
        LayerEvent::Progress { .. } => return None,
        LayerEvent::Downloaded { size } => format!("download complete ({})", human(*size)),
        LayerEvent::Unpacked => "pull complete (unpacked)".to_string(),
        LayerEvent::Mounted { from } => format!("mounted from {from}"),
        LayerEvent::Uploading { size } => format!("pushing ({})", human(*size)),
        LayerEvent::Pushed { size } => format!("pushed ({})", human(*size)),
    })
}

/// Ignores progress.
pub struct Silent;

impl Progress for Silent {
    fn layer(&self, _: &Digest, _: LayerEvent) {}
    fn message(&self, _: &str) {}
}

pub fn human(n: u64) -> String {
    const U: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_like_docker_pull_and_byte_counts_stay_quiet() {
        assert_eq!(
            describe(&LayerEvent::Downloading { size: 3 << 20 }).as_deref(),
            Some("downloading (3.0 MiB)")
        );
        assert_eq!(
            describe(&LayerEvent::Downloaded { size: 512 }).as_deref(),
            Some("download complete (512 B)")
        );
        assert_eq!(
            describe(&LayerEvent::Unpacked).as_deref(),
            Some("pull complete (unpacked)")
        );
        assert_eq!(
            describe(&LayerEvent::Progress {
                received: 1,
                size: 2
            }),
            None
        );
        assert_eq!(human(5 << 30), "5.0 GiB");
    }
}
