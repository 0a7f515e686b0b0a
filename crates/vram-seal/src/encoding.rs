//! The canonical encoding primitives shared by the seal (`.specs/seal.md`) and residency
//! attestations (`.specs/attestation.md`): big-endian integers and `u32`-length-prefixed UTF-8,
//! written and read back. Readers take from the front of a slice and return `None` on short or
//! malformed input.

/// Appends `s` as `u32` big-endian byte length ‖ UTF-8; `None` for a string over 4 GiB.
pub fn put_str(out: &mut Vec<u8>, s: &str) -> Option<()> {
    out.extend_from_slice(&u32::try_from(s.len()).ok()?.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Some(())
}

/// Takes the next `n` bytes.
pub fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, tail) = r.split_at_checked(n)?;
    *r = tail;
    Some(head)
}

/// Takes a big-endian `u32`.
pub fn take_u32(r: &mut &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(take(r, 4)?.try_into().ok()?))
}

/// Takes a big-endian `u64`.
pub fn take_u64(r: &mut &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(take(r, 8)?.try_into().ok()?))
}

/// Takes a string written by [`put_str`].
pub fn take_str(r: &mut &[u8]) -> Option<String> {
    let len = usize::try_from(take_u32(r)?).ok()?;
    String::from_utf8(take(r, len)?.to_vec()).ok()
}

/// Takes a flag byte: `0x00` or `0x01`, nothing else.
pub fn take_flag(r: &mut &[u8]) -> Option<bool> {
    match take(r, 1)?.first()? {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_short_input_is_refused() {
        let mut out = Vec::new();
        put_str(&mut out, "héllo").unwrap();
        assert_eq!(&out[..4], &[0, 0, 0, 6]);
        let mut r = out.as_slice();
        assert_eq!(take_str(&mut r).as_deref(), Some("héllo"));
        assert!(r.is_empty());
        let mut short = &out[..out.len() - 1];
        assert_eq!(take_str(&mut short), None);
        assert_eq!(take_flag(&mut &[2u8][..]), None);
    }
}
