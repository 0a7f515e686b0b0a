//! The facade's public names, checked against `crates/vram-residency/public-api.txt`: an item
//! added to (or dropped from) the facade fails `cargo xtask ci` until the list is updated, so
//! every change of the public surface is seen in review.
//!
//! The names are read from the facade's `pub use` and `pub mod` items (a re-export's last path
//! segment or its `as` alias; items of an inline `pub mod m { pub use ...; }` as `m::name`).

use std::path::Path;

use crate::DynError;

const FACADE: &str = "crates/vram-residency/src/lib.rs";
const LIST: &str = "crates/vram-residency/public-api.txt";

/// The exported names of a facade source, sorted.
pub(crate) fn exported_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    // The inline module being read, with the brace depth of its body.
    let mut module: Option<(String, usize)> = None;
    let mut depth = 0usize;
    let mut text = String::new();
    for line in source.lines().map(str::trim) {
        if line.starts_with("//") || line.starts_with("#[") {
            continue;
        }
        let at_top = match &module {
            Some((_, d)) => depth == *d,
            None => depth == 0,
        };
        let prefix = |name: &str| match &module {
            Some((m, _)) => format!("{m}::{name}"),
            None => name.to_owned(),
        };
        if at_top && let Some(rest) = line.strip_prefix("pub mod ") {
            let name = rest.trim_end_matches([';', '{', ' ']).to_owned();
            names.push(format!("{} (module)", prefix(&name)));
            if line.ends_with('{') {
                module = Some((name, depth.saturating_add(1)));
            }
        } else if at_top && let Some(rest) = line.strip_prefix("pub fn ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            names.push(prefix(&name));
        } else if at_top && (line.starts_with("pub use ") || !text.is_empty()) {
            text.push_str(line);
            text.push(' ');
            if line.ends_with(';') {
                for leaf in text
                    .trim_start_matches("pub use ")
                    .trim_end_matches([';', ' '])
                    .replace(['{', '}'], ",")
                    .split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.ends_with("::"))
                {
                    let name = match leaf.split_once(" as ") {
                        Some((_, alias)) => alias.trim(),
                        None => leaf.rsplit("::").next().unwrap_or(leaf),
                    };
                    names.push(prefix(name));
                }
                text.clear();
            }
            continue;
        }
        let opened = line.matches('{').count();
        let closed = line.matches('}').count();
        depth = depth.saturating_add(opened).saturating_sub(closed);
        if module.as_ref().is_some_and(|(_, d)| depth < *d) {
            module = None;
        }
    }
    names.sort();
    names
}

pub(crate) fn check(root: &Path) -> Result<(), DynError> {
    let source = std::fs::read_to_string(root.join(FACADE))?;
    let found = exported_names(&source);
    let listed: Vec<String> = std::fs::read_to_string(root.join(LIST))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let added: Vec<&String> = found.iter().filter(|n| !listed.contains(n)).collect();
    let dropped: Vec<&String> = listed.iter().filter(|n| !found.contains(n)).collect();
    if added.is_empty() && dropped.is_empty() {
        eprintln!("facade exports match {LIST} ({} names)", found.len());
        return Ok(());
    }
    Err(format!(
        "the facade's public names changed: added {added:?}, dropped {dropped:?}; update {LIST} if intended"
    )
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_uses_aliases_and_inline_modules() {
        let source = "
            //! docs
            #[doc(inline)]
            pub use a::{B, c::D, e as F,
                G};
            pub mod digest {
                pub use x::y::{H, i};
            }
            #[cfg(feature = \"t\")]
            pub mod test_utils {
                use crate::B;
                pub fn helper(x: u8) -> Result<(), E> {
                    if x > 0 {
                        let _ = B;
                    }
                    Ok(())
                }
                fn private() {}
                pub fn other() {}
            }
            pub use z::Last;
        ";
        assert_eq!(
            exported_names(source),
            vec![
                "B",
                "D",
                "F",
                "G",
                "Last",
                "digest (module)",
                "digest::H",
                "digest::i",
                "test_utils (module)",
                "test_utils::helper",
                "test_utils::other"
            ]
        );
    }
}
