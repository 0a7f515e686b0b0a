//! What `vramctl` reads from outside, as a library so that fuzz targets and tests reach it:
//! model-file headers ([`formats`]) and checksum manifest lines ([`manifest`]). The command
//! line is the binary; this library is not a stable API.
#![forbid(unsafe_code)]

pub mod formats;
pub mod manifest;
pub mod units;
