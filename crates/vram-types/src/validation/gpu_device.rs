//! GPU device index validation.

use crate::error::VramError;

/// Checks that `device` names one of `device_count` devices.
///
/// # Errors
/// [`VramError::InvalidDevice`] when `device >= device_count`.
pub fn validate_gpu_device(device: u32, device_count: u32) -> Result<(), VramError> {
    if device < device_count {
        Ok(())
    } else {
        Err(VramError::InvalidDevice {
            device,
            device_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert!(validate_gpu_device(0, 1).is_ok());
        assert!(validate_gpu_device(7, 8).is_ok());
        assert_eq!(
            validate_gpu_device(1, 1),
            Err(VramError::InvalidDevice {
                device: 1,
                device_count: 1
            })
        );
        assert!(validate_gpu_device(0, 0).is_err());
    }
}
