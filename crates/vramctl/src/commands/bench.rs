//! `vramctl bench [--size BYTES]`: seal and verify throughput of this backend, next to the naive
//! path (one pageable copy + single-thread flat SHA-256) measured in the same run.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::{BackendArgs, BackendChoice, BenchArgs};
use crate::error::{CliError, CliResult, Exit};
use crate::output::{Output, human_bytes};
use crate::session;

#[allow(clippy::cast_precision_loss, reason = "throughput display")]
fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64().max(1e-9) / 1e9
}

fn ratio(naive: Duration, ours: Duration) -> f64 {
    naive.as_secs_f64() / ours.as_secs_f64().max(1e-9)
}

pub(crate) fn run(out: Output, backend: &BackendArgs, args: &BenchArgs) -> CliResult<Exit> {
    if args.size == 0 {
        return Err(CliError::bad_input("--size 0; give a number of bytes ≥ 1"));
    }
    let session = session::open(backend, BackendChoice::Auto, None)?;
    let m = &session.manager;
    out.line(&session.backend_note);
    let data: Vec<u8> = (0..args.size)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();

    // Best of three for each, the naive path in the same run.
    let mut seal = Duration::MAX;
    let mut verify = Duration::MAX;
    for round in 0..3 {
        let t = Instant::now();
        let shard = m.seal_model_with_id(&format!("bench-{round}"), &data, args.device)?;
        seal = seal.min(t.elapsed());
        let t = Instant::now();
        m.verify_sealed(&shard)?;
        verify = verify.min(t.elapsed());
    }
    let mut naive_seal = Duration::MAX;
    let mut naive_verify = Duration::MAX;
    for _ in 0..3 {
        let t = m.measure_naive_path(&data, args.device)?;
        naive_seal = naive_seal.min(t.seal);
        naive_verify = naive_verify.min(t.verify);
    }
    out.result(format!(
        "size {} ({} bytes), best of 3",
        human_bytes(args.size as u64),
        args.size
    ));
    out.result(format!(
        "{:<28} {:>10} {:>10} {:>10} {:>10}",
        "path", "seal s", "GB/s", "verify s", "GB/s"
    ));
    for (name, s, v) in [
        ("vram-residency (staged, tree)", seal, verify),
        ("naive (pageable, flat 1 thr)", naive_seal, naive_verify),
    ] {
        out.result(format!(
            "{name:<28} {:>10.4} {:>10.2} {:>10.4} {:>10.2}",
            s.as_secs_f64(),
            gbps(args.size, s),
            v.as_secs_f64(),
            gbps(args.size, v)
        ));
    }
    out.result(format!(
        "{:<28} {:>10} {:>9.2}x {:>10} {:>9.2}x",
        "speed-up",
        "",
        ratio(naive_seal, seal),
        "",
        ratio(naive_verify, verify)
    ));
    out.json(&json!({
        "backend": m.backend_kind().to_string(), "size": args.size,
        "seal_s": seal.as_secs_f64(), "verify_s": verify.as_secs_f64(),
        "naive_seal_s": naive_seal.as_secs_f64(), "naive_verify_s": naive_verify.as_secs_f64(),
        "seal_speedup": ratio(naive_seal, seal), "verify_speedup": ratio(naive_verify, verify),
    }));
    Ok(Exit::Ok)
}
