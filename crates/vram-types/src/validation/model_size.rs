//! Model size validation: refuses empty models and sizes meant to exhaust the device (DoS).

use crate::error::VramError;

/// Default largest model accepted: 100 GB (10^11 bytes).
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 100_000_000_000;

/// Checks that a model of `len` bytes is non-empty and at most `max` bytes.
///
/// # Errors
/// [`VramError::InvalidInput`] for an empty model or one larger than `max`.
pub fn validate_model_size(len: usize, max: u64) -> Result<(), VramError> {
    if len == 0 {
        return Err(VramError::invalid_input(
            "model size",
            "model is empty (0 bytes)",
        ));
    }
    match u64::try_from(len) {
        Ok(n) if n <= max => Ok(()),
        _ => Err(VramError::invalid_input(
            "model size",
            format!("model is {len} bytes, the maximum is {max} bytes"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(validate_model_size(0, 10).is_err());
        assert!(validate_model_size(1, 10).is_ok());
        assert!(validate_model_size(10, 10).is_ok());
        let e = validate_model_size(11, 10).unwrap_err();
        assert!(e.to_string().contains("11 bytes") && e.to_string().contains("10 bytes"));
    }
}
