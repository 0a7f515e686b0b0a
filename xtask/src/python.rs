//! The Python package (`crates/vram-residency-py`), checked as a user gets it: `pip install`ed
//! into a virtual environment under `target/`, its `pytest` suite run on the mock backend (the
//! GPU tests report themselves skipped without `VRAM_TEST_GPU=1`), its stubs, tests and
//! example type-checked with `mypy --strict` and the stubs checked against the compiled module
//! with `stubtest`, and the example run end to end.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{DynError, command, project_root, run};

const PACKAGE: &str = "crates/vram-residency-py";
const VENV: &str = "target/python-ci";
/// The build and test tools, and the reference implementations the format vectors are
/// checked against, pinned (from the Python package registry).
const TOOLS: &[&str] = &[
    "maturin==1.9.6",
    "pytest==9.2.0",
    "numpy==2.4.6",
    "mypy==2.4.1",
    "blake3==1.0.11",
];

/// The virtual environment's interpreter, with [`TOOLS`] installed (once per run of xtask).
pub(crate) fn environment() -> Result<PathBuf, DynError> {
    static READY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(python) = READY.get() {
        return Ok(python.clone());
    }
    let venv = project_root().join(VENV);
    let python = venv.join("bin/python");
    if !python.exists() {
        let mut create = command("python3");
        create.args(["-m", "venv"]).arg(&venv);
        run("python: a virtual environment (target/python-ci)", create)?;
    }
    let mut tools = pip(&python);
    tools.args(TOOLS);
    run(
        "python: build and test tools, reference implementations (pip)",
        tools,
    )?;
    Ok(READY.get_or_init(|| python).clone())
}

pub(crate) fn check() -> Result<(), DynError> {
    let root = project_root();
    let venv = root.join(VENV);
    let python = environment()?;

    // Built as `pip install` builds it, with the maturin installed above; the dev profile
    // reuses what the Rust tests compiled.
    let mut install = pip(&python);
    install
        .args(["--no-build-isolation", "--force-reinstall", "--no-deps"])
        .arg(root.join(PACKAGE))
        .env("PATH", with_venv_path(&venv)?)
        .env("MATURIN_PEP517_ARGS", "--profile dev");
    run("python: pip install crates/vram-residency-py", install)?;

    let package = root.join(PACKAGE);
    let mut pytest = in_package(&python, &package);
    pytest
        .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"])
        .env_remove("VRAM_TEST_GPU");
    // Bounded: a deadlock between the GIL and a library thread would otherwise hang CI.
    run_bounded("python: pytest (mock backend)", pytest, PYTEST_LIMIT)?;

    let mut mypy = in_package(&python, &package);
    mypy.args(["-m", "mypy", "--no-incremental", "--cache-dir", "/dev/null"]);
    run("python: mypy --strict (stubs, tests, example)", mypy)?;

    // The stubs against the compiled module itself: every name, signature and property.
    let mut stubtest = in_package(&python, &package);
    stubtest.args([
        "-m",
        "mypy.stubtest",
        "vram_residency",
        "--allowlist",
        "stubtest-allowlist.txt",
    ]);
    run("python: stubtest (the stubs match the module)", stubtest)?;

    let mut example = in_package(&python, &package);
    example
        .arg("examples/mock_example.py")
        .env("VRAM_WORKER_TOKEN", "example-worker-token-0123");
    run("python: the example, end to end on the mock", example)
}

/// Longest the pytest suite may take (it takes seconds).
const PYTEST_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs `cmd` as [`run`] does, killing it after `limit`.
fn run_bounded(step: &str, mut cmd: Command, limit: std::time::Duration) -> Result<(), DynError> {
    eprintln!("\n==> {step}");
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{step}: could not start: {e}"))?;
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("{step} failed ({status})").into())
            };
        }
        if started.elapsed() > limit {
            // Already gone, or killed now: either way the step failed.
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{step} did not finish in {} s (a deadlock?)",
                limit.as_secs()
            )
            .into());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn pip(python: &Path) -> Command {
    let mut c = command(python);
    c.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    c
}

fn in_package(python: &Path, package: &Path) -> Command {
    let mut c = command(python);
    c.current_dir(package);
    c
}

/// `PATH` with the environment's `bin` first, where pip finds `maturin`.
fn with_venv_path(venv: &Path) -> Result<OsString, DynError> {
    let mut dirs: Vec<PathBuf> = vec![venv.join("bin")];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    Ok(env::join_paths(dirs)?)
}
