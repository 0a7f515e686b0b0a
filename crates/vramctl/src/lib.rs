//! What `vramctl` reads from outside, as a library so that fuzz targets and tests reach it:
//! model-file headers ([`formats`]), checksum manifest lines ([`manifest`]) and the file
//! digests of model-signing bundles ([`signed_manifest`]). The command
//! line is the binary; this library is not a stable API.
#![forbid(unsafe_code)]

pub mod bundle_signature;
pub mod formats;
pub mod manifest;
pub mod signed_manifest;
pub mod units;
