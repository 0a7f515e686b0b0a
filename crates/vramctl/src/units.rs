//! Sizes as operators read them.

/// Bytes in a short human form (MiB/GiB).
#[allow(clippy::cast_precision_loss, reason = "display only")]
#[must_use]
pub fn human_bytes(bytes: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    const MIB: f64 = 1024.0 * 1024.0;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else if b >= MIB {
        format!("{:.2} MiB", b / MIB)
    } else {
        format!("{bytes} B")
    }
}
