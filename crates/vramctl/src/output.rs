//! Output: human text on stdout (or one JSON document with `--json`), progress bars on stderr
//! (hidden when stderr is not a terminal, with `--quiet` or with `--json`).

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// How to print.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    pub(crate) json: bool,
    pub(crate) quiet: bool,
}

impl Output {
    /// A line of human output (not in JSON mode, not with `--quiet`).
    pub(crate) fn line(&self, text: impl AsRef<str>) {
        if !self.json && !self.quiet {
            say(text.as_ref());
        }
    }

    /// A line of human output that `--quiet` keeps (results).
    pub(crate) fn result(&self, text: impl AsRef<str>) {
        if !self.json {
            say(text.as_ref());
        }
    }

    /// A result line of bytes, written as they are: a checksum line whose file name is not
    /// UTF-8, as `sha256sum` writes it.
    pub(crate) fn result_bytes(&self, line: &[u8]) {
        if !self.json {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line).and_then(|()| out.write_all(b"\n"));
        }
    }

    /// A JSON document (JSON mode only).
    pub(crate) fn json(&self, value: &Value) {
        if self.json {
            say(&value.to_string());
        }
    }

    /// A progress bar over `total` bytes, or a hidden one.
    pub(crate) fn progress(&self, total: u64, what: &str) -> ProgressBar {
        let visible = !self.json && !self.quiet && std::io::stderr().is_terminal();
        if !visible {
            return ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_owned());
        bar
    }
}

/// Writes a line to stdout. A closed stdout (`vramctl ... | head`) is not an error worth dying
/// for: a sealing daemon keeps its shards verified, other commands finish their work.
pub(crate) fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Writes a line to stderr, ignoring a closed stderr.
pub(crate) fn warn(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

pub(crate) use vramctl::units::human_bytes;

/// A file name or id as a line of text shows it: as it is when it holds no control character,
/// else quoted with every control character escaped (`"a\nb"`), so a name can neither forge a
/// line (of the journal, under systemd) nor drive the terminal. JSON output escapes by itself.
pub(crate) fn shown(name: impl AsRef<std::ffi::OsStr>) -> String {
    let text = name.as_ref().to_string_lossy();
    if text.chars().any(char::is_control) {
        format!("{:?}", text.as_ref())
    } else {
        text.into_owned()
    }
}
