//! RFC 3339 timestamps beside the epoch numbers, for log pipelines (Loki, Elasticsearch, jq)
//! that read dates, not integers.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first second RFC 3339's four-digit years cannot write: 10000-01-01T00:00:00Z.
const YEAR_10000_SECS: u64 = 253_402_300_800;

/// `time` in UTC with milliseconds, e.g. `2023-11-14T22:13:20.123Z`.
///
/// `None` for a time before 1970 or from the year 10000 on: RFC 3339 writes four-digit years,
/// and a clock that far off is better shown as missing than as a wrong date.
#[must_use]
pub fn rfc3339_millis(time: SystemTime) -> Option<String> {
    let since = time.duration_since(UNIX_EPOCH).ok()?;
    if since.as_secs() >= YEAR_10000_SECS {
        return None;
    }
    let mut out = String::with_capacity(24);
    write!(out, "{}", humantime::format_rfc3339_millis(time)).ok()?;
    Some(out)
}

/// [`rfc3339_millis`] of a count of milliseconds since the Unix epoch (as audit records keep
/// time).
#[must_use]
pub fn rfc3339_from_unix_millis(millis: u64) -> Option<String> {
    rfc3339_millis(UNIX_EPOCH.checked_add(Duration::from_millis(millis))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values from Python's `datetime` (an independent calendar implementation).
    #[test]
    fn known_dates() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
            (1_709_164_800_999, "2024-02-29T00:00:00.999Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (4_102_444_800_000, "2100-01-01T00:00:00.000Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339_from_unix_millis(ms).as_deref(), Some(text), "{ms}");
        }
    }

    #[test]
    fn out_of_range_is_none_not_a_panic() {
        assert_eq!(rfc3339_from_unix_millis(253_402_300_800_000), None);
        assert_eq!(rfc3339_from_unix_millis(u64::MAX), None);
        let before_epoch = UNIX_EPOCH.checked_sub(Duration::from_secs(1)).unwrap();
        assert_eq!(rfc3339_millis(before_epoch), None);
    }

    #[test]
    fn sub_millisecond_digits_are_cut_not_rounded() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_999_999_999);
        assert_eq!(
            rfc3339_millis(t).as_deref(),
            Some("1970-01-01T00:00:01.999Z")
        );
    }
}
