//! One module per subcommand.

pub(crate) mod audit;
pub(crate) mod bench;
#[cfg(feature = "demo")]
pub(crate) mod demo;
pub(crate) mod digest;
pub(crate) mod doctor;
pub(crate) mod seal;

/// Without the `demo` feature there is no demo: it writes into VRAM behind the manager's back,
/// a capability a production build leaves out.
#[cfg(not(feature = "demo"))]
pub(crate) mod demo {
    use crate::cli::BackendArgs;
    use crate::error::{CliError, CliResult, Exit};
    use crate::output::Output;

    pub(crate) fn run(_out: Output, _backend: &BackendArgs) -> CliResult<Exit> {
        Err(CliError::bad_input(
            "this build has no demo: the demo corrupts a byte in VRAM, a capability production builds leave out; run `cargo run --release -p vramctl --features demo -- demo`",
        ))
    }
}
