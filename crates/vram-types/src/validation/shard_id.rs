//! Shard id validation.
//!
//! Shard ids reach logs, audit records, metrics labels and perhaps file names, so they are kept
//! to a small safe alphabet: ASCII letters and digits and `-` `_` `.` `:` `@` `+`, 1 to 256
//! bytes, and never `..`. Path separators, NUL and control characters get their own messages.

use std::fmt;

use crate::error::VramError;

/// Longest shard id accepted, in bytes.
pub const MAX_SHARD_ID_BYTES: usize = 256;

/// A validated shard id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(String);

impl ShardId {
    /// Validates a shard id.
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] (field `shard_id`) when the id is empty, longer than 256
    /// bytes, contains `..`, `/`, `\`, NUL, a control character, or any character outside
    /// `[A-Za-z0-9-_.:@+]`.
    pub fn new(id: &str) -> Result<Self, VramError> {
        let reject = |why: &str| {
            Err(VramError::invalid_input(
                "shard_id",
                format!("{id:?} {why}"),
            ))
        };
        if id.is_empty() {
            return reject("is empty");
        }
        if id.len() > MAX_SHARD_ID_BYTES {
            return Err(VramError::invalid_input(
                "shard_id",
                format!(
                    "is {} bytes, at most {MAX_SHARD_ID_BYTES} are allowed",
                    id.len()
                ),
            ));
        }
        if id.contains('\0') {
            return reject("contains a NUL byte");
        }
        if id.chars().any(char::is_control) {
            return reject("contains a control character");
        }
        if id.contains("..") {
            return reject("contains \"..\" (path traversal)");
        }
        if id.contains(['/', '\\']) {
            return reject("contains a path separator");
        }
        if let Some(c) = id.chars().find(|c| !is_allowed(*c)) {
            return reject(&format!(
                "contains {c:?}; allowed are ASCII letters, digits and - _ . : @ +"
            ));
        }
        Ok(Self(id.to_owned()))
    }

    /// An id made from any name (a file name, say): characters outside the allowed set become
    /// `_`, `..` becomes `._`, the result is cut to 200 bytes, and an empty name becomes `model`.
    /// Always valid.
    #[must_use]
    pub fn from_name_lossy(name: &str) -> Self {
        let mut id: String = name
            .chars()
            .map(|c| if is_allowed(c) { c } else { '_' })
            .take(200)
            .collect();
        while id.contains("..") {
            id = id.replace("..", "._");
        }
        if id.is_empty() {
            id.push_str("model");
        }
        Self(id)
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }
}

fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '+')
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ShardId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn lossy_ids_from_any_name_are_valid() {
        for name in [
            "model.safetensors",
            "a/../b",
            "..",
            "",
            "é ü",
            "x\0y\n",
            &"z".repeat(300),
        ] {
            let id = ShardId::from_name_lossy(name);
            assert!(
                ShardId::new(id.as_str()).is_ok(),
                "{name:?} -> {:?}",
                id.as_str()
            );
        }
        assert_eq!(
            ShardId::from_name_lossy("llama 3.gguf").as_str(),
            "llama_3.gguf"
        );
        assert_eq!(ShardId::from_name_lossy("").as_str(), "model");
    }
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_typical_ids() {
        for id in [
            "llama-3-8b",
            "shard_0",
            "model.v2:tp@1+2",
            "a",
            &"x".repeat(256),
        ] {
            assert_eq!(ShardId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn rejects_unsafe_ids_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("../etc/passwd", "path traversal"),
            ("a..b", "path traversal"),
            ("a/b", "path separator"),
            ("a\\b", "path separator"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
            ("a\x1bb", "control"),
            ("a b", "allowed are"),
            ("é", "allowed are"),
        ];
        for (id, why) in cases {
            let e = ShardId::new(id).unwrap_err();
            assert!(e.to_string().contains(why), "{id:?}: {e}");
            assert!(!e.to_string().contains('\n') && !e.to_string().contains('\0'));
        }
        assert!(
            ShardId::new(&"x".repeat(257))
                .unwrap_err()
                .to_string()
                .contains("257 bytes")
        );
    }

    proptest! {
        #[test]
        fn accepted_ids_are_within_the_safe_alphabet(id in "\\PC{0,300}") {
            if let Ok(ok) = ShardId::new(&id) {
                prop_assert!(!ok.as_str().is_empty() && ok.as_str().len() <= 256);
                prop_assert!(ok.as_str().chars().all(is_allowed));
                prop_assert!(!ok.as_str().contains(".."));
            }
        }
    }
}
