//! model-signing bundles (Sigstore bundle, DSSE envelope, in-toto statement): never panics,
//! and whatever is read names only relative paths, each once, with a digest it can check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_types::DigestAlgorithm;
use vramctl::signed_manifest::read_bundle;

fuzz_target!(|data: &[u8]| {
    if let Ok(files) = read_bundle(data) {
        assert!(!files.is_empty());
        for (i, f) in files.iter().enumerate() {
            assert!(!f.name.is_empty() && !f.name.starts_with('/'));
            assert!(matches!(f.algorithm, DigestAlgorithm::Blake3 | DigestAlgorithm::Sha256));
            assert!(files.iter().skip(i + 1).all(|g| g.name != f.name));
        }
    }
});
