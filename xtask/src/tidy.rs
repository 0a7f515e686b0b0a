//! Tidy checks, run as a test (rust-analyzer's habit): `cargo test -p xtask`.
//!
//! - every `.rs` file under `crates/`, `xtask/` and `fuzz/` starts with a `//!` doc comment;
//! - `unsafe` appears only in `vram-cuda-sys`, and each `unsafe` block there has a `// SAFETY:`
//!   comment on one of the three lines above it (or in the comment block right above it);
//! - every library crate except `vram-cuda-sys` says `#![forbid(unsafe_code)]`;
//! - no should-panic tests (errors are values here, not panics).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != "corpus" && name != "artifacts" {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The identifiers of a line's code: comments and string literals dropped.
fn code_words(line: &str) -> impl Iterator<Item = &str> {
    let code = line.split("//").next().unwrap_or("");
    // Keep the text outside double quotes (even-numbered pieces).
    code.split('"')
        .step_by(2)
        .flat_map(|piece| piece.split(|c: char| !(c.is_alphanumeric() || c == '_')))
        .filter(|w| !w.is_empty())
}

/// Problems found in the tree, one line each.
pub(crate) fn problems(root: &Path) -> Vec<String> {
    let mut files = vec![];
    for dir in ["crates", "xtask", "fuzz"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    let mut problems = vec![];
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            problems.push(format!("{}: unreadable", file.display()));
            continue;
        };
        let rel = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        if !text.starts_with("//!") {
            problems.push(format!("{rel}: does not start with a //! doc comment"));
        }
        if text.contains(concat!("#[should", "_panic")) {
            problems.push(format!("{rel}: uses should_panic"));
        }
        let in_sys = rel.starts_with("crates/vram-cuda-sys/");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let has_unsafe = code_words(line).any(|w| w == "unsafe");
            if !has_unsafe {
                continue;
            }
            if !in_sys {
                problems.push(format!(
                    "{rel}:{}: unsafe outside vram-cuda-sys",
                    i.saturating_add(1)
                ));
                continue;
            }
            let start = i.saturating_sub(3);
            let near = lines
                .get(start..=i)
                .is_some_and(|w| w.iter().any(|l| l.contains("SAFETY:")));
            // A longer `//` comment block ending right above the line counts as a whole.
            let block = lines
                .get(..i)
                .unwrap_or_default()
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with("//"))
                .any(|l| l.contains("SAFETY:"));
            let documented = near || block;
            // An `unsafe fn` declaration documents its contract in a `# Safety` section instead.
            let words: Vec<&str> = code_words(line).collect();
            let is_fn = words.windows(2).any(|w| w == ["unsafe", "fn"]);
            // The doc block right above the declaration (doc comments and attributes).
            let doc_block = lines
                .get(..i)
                .unwrap_or_default()
                .iter()
                .rev()
                .take_while(|l| {
                    l.trim_start().starts_with("///") || l.trim_start().starts_with("#[")
                });
            let has_safety_section =
                is_fn && doc_block.into_iter().any(|l| l.trim() == "/// # Safety");
            if !documented && !has_safety_section {
                problems.push(format!(
                    "{rel}:{}: unsafe without a // SAFETY: comment",
                    i.saturating_add(1)
                ));
            }
        }
        let is_lib_root = rel.starts_with("crates/") && rel.ends_with("src/lib.rs");
        if is_lib_root && !in_sys && !text.contains(concat!("#![forbid(", "unsafe_code)]")) {
            problems.push(format!("{rel}: missing #![forbid(unsafe_code)]"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    #[test]
    fn tidy() {
        let problems = super::problems(&crate::project_root());
        assert!(
            problems.is_empty(),
            "tidy problems:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn flags_each_rule() {
        let root = std::env::temp_dir().join(format!("tidy-{}", std::process::id()));
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("crates/a/src/lib.rs", "fn f() { unsafe { g() } }\n");
        write(
            "crates/vram-cuda-sys/src/x.rs",
            "//! x\nfn f() {\n    unsafe { g() }\n}\n",
        );
        write(
            "crates/vram-cuda-sys/src/y.rs",
            "//! y\n// SAFETY: checked above\nunsafe { g() }\n",
        );
        write(
            "crates/vram-cuda-sys/src/z.rs",
            "//! z\n/// Does it.\n///\n/// # Safety\n/// 1. valid\npub unsafe fn f() {}\nunsafe fn undocumented() {}\n",
        );
        write(
            "crates/vram-cuda-sys/src/w.rs",
            "//! w\n// SAFETY: one\n// two\n// three\n// four\nunsafe { g() }\n",
        );
        let problems = super::problems(&root).join("\n");
        std::fs::remove_dir_all(&root).unwrap();
        assert!(problems.contains("crates/a/src/lib.rs: does not start with a //! doc comment"));
        assert!(problems.contains("crates/a/src/lib.rs:1: unsafe outside vram-cuda-sys"));
        assert!(problems.contains("crates/a/src/lib.rs: missing #![forbid(unsafe_code)]"));
        assert!(problems.contains("x.rs:3: unsafe without a // SAFETY: comment"));
        assert!(!problems.contains("y.rs"), "{problems}");
        assert!(
            !problems.contains("w.rs"),
            "a long SAFETY block: {problems}"
        );
        assert!(
            !problems.contains("z.rs:6"),
            "a documented unsafe fn: {problems}"
        );
        assert!(problems.contains("z.rs:7: unsafe without"), "{problems}");
    }
}
