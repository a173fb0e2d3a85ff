//! gantry's registry: serves and stores images over the OCI distribution API.
//!
//! Vocabulary: **repository** (a name like `team/app`), **blob** (content addressed by
//! digest: layers and configs), **manifest** (the image description, by tag or digest),
//! **upload** (a blob being written, visible only once its digest and size are verified).
