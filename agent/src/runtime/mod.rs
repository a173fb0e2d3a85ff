//! The OCI runtime: takes a bundle and runs it as a container.
