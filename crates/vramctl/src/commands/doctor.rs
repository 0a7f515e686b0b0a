//! `vramctl doctor`: the GPUs found, and whether each can hold VRAM-only shards, with reasons.

use serde_json::json;
use vram_residency::rules::{device_problems, environment_problems};
use vram_residency::{VramError, probe_gpus};

use crate::error::{CliError, CliResult, Exit};
use crate::output::{Output, human_bytes};

pub(crate) fn run(out: Output) -> CliResult<Exit> {
    let devices = match probe_gpus() {
        Ok(d) => d,
        Err(e @ (VramError::NoGpu { .. } | VramError::DriverTooOld { .. })) => {
            let message = format!("no usable GPU: {e}");
            out.json(&json!({ "gpus": [], "usable": false, "problem": message }));
            out.result(&message);
            return Err(CliError::new(
                Exit::NoGpuOrPolicy,
                "no GPU can hold VRAM-only shards on this machine; install an NVIDIA GPU and driver, or use --backend mock for tests",
            )
            .reported_in_json());
        }
        Err(e) => return Err(e.into()),
    };
    let environment = environment_problems(|name| std::env::var(name).ok());
    let mut usable = 0usize;
    let mut report = Vec::new();
    for d in &devices {
        let problems = device_problems(d, false);
        let ok = problems.is_empty() && environment.is_empty();
        usable = usable.saturating_add(usize::from(ok));
        let ecc = match d.ecc_enabled {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown",
        };
        out.result(format!(
            "GPU {}: {} | {} | driver {} | ECC {}",
            d.ordinal,
            d.name,
            human_bytes(u64::try_from(d.total_memory).unwrap_or(u64::MAX)),
            d.driver_version.as_deref().unwrap_or("unknown"),
            ecc
        ));
        let verdict = if ok {
            "can hold VRAM-only shards"
        } else {
            "REFUSED for VRAM-only shards"
        };
        out.result(format!("  verdict: {verdict}"));
        // (what, value shown, reason when set, reason when not set)
        let checks = [
            (
                "integrated GPU",
                yes_no(d.integrated),
                d.integrated,
                "no memory of its own: refused",
                "has its own VRAM",
            ),
            (
                "pageable memory access (HMM/ATS)",
                yes_no(d.pageable_memory_access),
                d.pageable_memory_access,
                "kernels could read host RAM: refused",
                "kernels cannot read plain host RAM",
            ),
            (
                "managed memory",
                if d.managed_memory {
                    "supported"
                } else {
                    "not supported"
                },
                d.managed_memory,
                "every allocation is checked and managed memory is refused",
                "no managed allocations possible",
            ),
            (
                "unified addressing",
                yes_no(d.unified_addressing),
                !d.unified_addressing,
                "pointer checks impossible: refused",
                "pointer checks possible",
            ),
        ];
        for (what, shown, set, if_set, if_not) in checks {
            out.line(format!(
                "  {what}: {shown} ({})",
                if set { if_set } else { if_not }
            ));
        }
        for p in &problems {
            out.line(format!("  problem: {p}"));
        }
        report.push(json!({
            "index": d.ordinal, "name": d.name, "memory_bytes": d.total_memory,
            "driver": d.driver_version, "ecc_enabled": d.ecc_enabled,
            "integrated": d.integrated, "pageable_memory_access": d.pageable_memory_access,
            "managed_memory": d.managed_memory, "unified_addressing": d.unified_addressing,
            "usable": ok, "problems": problems,
        }));
    }
    for p in &environment {
        out.result(format!("environment: {p}"));
    }
    out.json(&json!({ "gpus": report, "environment_problems": environment, "usable": usable > 0 }));
    if usable > 0 {
        Ok(Exit::Ok)
    } else {
        Err(CliError::new(
            Exit::NoGpuOrPolicy,
            "no GPU here can hold VRAM-only shards (see the reasons above)",
        )
        .reported_in_json())
    }
}

fn yes_no(v: bool) -> &'static str {
    if v { "yes" } else { "no" }
}
