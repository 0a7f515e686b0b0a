//! `GpuShare`: how much of a GPU a digest of resident bytes may take.
//!
//! A verification before an inference request should finish as fast as possible and may take
//! the whole GPU for its few milliseconds. A background re-verification of resident shards (a
//! scrubber) runs next to the inference engine and must leave it almost untouched: it takes at
//! most a fraction of the SMs, in short launches on the lowest-priority stream, so the engine's
//! blocks are scheduled first whenever both wait (`docs/perf.md` has the measurements).

use crate::error::VramError;

/// Default fraction of the SMs a bounded (background) digest takes.
pub const DEFAULT_BACKGROUND_SM_FRACTION: f32 = 0.0625;

/// How much of the GPU a digest of resident bytes may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GpuShare {
    /// Every SM: one launch over whole leaves (per-request verification).
    Full,
    /// At most `sm_fraction` of the SMs (at least one block), in launches of short slices.
    Bounded {
        /// Fraction of the streaming multiprocessors, in (0, 1].
        sm_fraction: f32,
    },
}

impl GpuShare {
    /// The bounded share used by background verification by default (1/16 of the SMs).
    pub const BACKGROUND: Self = Self::Bounded {
        sm_fraction: DEFAULT_BACKGROUND_SM_FRACTION,
    };

    /// A bounded share of `sm_fraction` of the SMs.
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] unless `0 < sm_fraction <= 1`.
    pub fn bounded(sm_fraction: f32) -> Result<Self, VramError> {
        if sm_fraction > 0.0 && sm_fraction <= 1.0 {
            Ok(Self::Bounded { sm_fraction })
        } else {
            Err(VramError::invalid_input(
                "GPU share",
                format!("{sm_fraction}; use a fraction of the SMs in (0, 1]"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_share_must_be_a_fraction() {
        assert!(GpuShare::bounded(0.25).is_ok());
        assert!(GpuShare::bounded(1.0).is_ok());
        for bad in [0.0, -0.5, 1.5, f32::NAN] {
            assert!(GpuShare::bounded(bad).is_err(), "{bad}");
        }
    }
}
