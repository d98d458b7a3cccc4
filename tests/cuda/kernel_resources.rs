//! What ptxas reported for every kernel at build time (`-Xptxas=-v`, parsed by build.rs into
//! `backend::cuda::KERNEL_RESOURCES`, per architecture), checked before any GPU sees them: no
//! register spills on the decode path (a spill is local-memory traffic on every token), static
//! shared memory within the 48 KiB a kernel gets without the opt-in attribute, and the table in
//! kernels/NOTES.md equal to the build's (`LORAFLEET_WRITE_RESOURCES=1` rewrites it) when the
//! build's nvcc is the one the table names (another nvcc allocates registers its own way: the
//! comparison is then skipped, the limits still checked).
//!
//! Only a build with nvcc has the report: without it the tests say so and skip, and with
//! `LORAFLEET_REQUIRE_NVCC=1` (CI's nvcc step) they fail instead. Still to do (issue 32): the
//! per-launch check that every `plan_*` configuration's threads x registers fit the register
//! file and its dynamic shared memory the opt-in limit.

use lorafleet::backend::cuda::{KernelResources, KERNEL_RESOURCES, NVCC_RELEASE};

/// Modules a decode step launches: no spills there.
const DECODE_MODULES: &[&str] = &["linear", "nf4_gemm", "paged_attention", "lora_sgmv", "ops", "sampling"];
/// Decode-path spills known and kept, each with why (kernels/NOTES.md, "Resources per kernel").
const KNOWN_SPILLS: &[(&str, &str, &str)] = &[
    // One 8-byte slot per thread in the 4-row bf16 GEMV's fast path on sm_80 (sm_90a: none);
    // not yet timed on a GPU, kept until the first run says whether it costs anything.
    ("lf_linear_gemv_f32_bf16_m4_fast", "sm_80", "one 8-byte slot, sm_80 only"),
    // One 4-byte slot in the head-dim-96 f32 attention on sm_90a (Phi-style heads, not the 7B /
    // 8B shapes' 128); same status.
    ("lf_paged_attn_f32_hd96", "sm_90a", "one 4-byte slot, head dim 96 only"),
];
/// Static shared memory a kernel may hold without `cudaFuncAttributeMaxDynamicSharedMemorySize`.
const STATIC_SMEM_LIMIT: u32 = 48 * 1024;
const BEGIN: &str = "<!-- kernel-resources:begin -->";
const END: &str = "<!-- kernel-resources:end -->";

fn report() -> Option<&'static [KernelResources]> {
    if !KERNEL_RESOURCES.is_empty() {
        return Some(KERNEL_RESOURCES);
    }
    let msg = "this build has no ptxas report (built without nvcc)";
    if std::env::var("LORAFLEET_REQUIRE_NVCC").as_deref() == Ok("1") {
        panic!("{msg}, and LORAFLEET_REQUIRE_NVCC=1");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

#[test]
fn the_decode_path_does_not_spill_and_static_shared_memory_fits() {
    let Some(table) = report() else { return };
    let mut problems = Vec::new();
    for r in table {
        let known = KNOWN_SPILLS.iter().any(|(k, a, _)| *k == r.kernel && *a == r.arch);
        if DECODE_MODULES.contains(&r.module) && (r.spill_stores > 0 || r.spill_loads > 0) && !known {
            problems.push(format!("{}::{} on {} spills {} bytes stored / {} loaded per thread", r.module, r.kernel, r.arch, r.spill_stores, r.spill_loads));
        }
        if r.shared_static > STATIC_SMEM_LIMIT {
            problems.push(format!("{}::{} on {} holds {} bytes of static shared memory (> 48 KiB)", r.module, r.kernel, r.arch, r.shared_static));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The allowlist names only spills that exist (a fixed one leaves the list).
    for (k, a, why) in KNOWN_SPILLS {
        assert!(
            table.iter().any(|r| r.kernel == *k && r.arch == *a && (r.spill_stores > 0 || r.spill_loads > 0)),
            "{k} on {a} ({why}) no longer spills: take it off KNOWN_SPILLS"
        );
    }
    // Both architectures of every module are reported.
    for arch in ["sm_80", "sm_90a"] {
        assert!(table.iter().any(|r| r.arch == arch), "no kernel reported for {arch}");
    }
}

fn render(table: &[KernelResources]) -> String {
    let mut rows: Vec<&KernelResources> = table.iter().collect();
    rows.sort_by_key(|r| (r.module, r.kernel, r.arch));
    let mut s = format!(
        "nvcc: {NVCC_RELEASE}\n\n| module | kernel | arch | registers | static smem (B) | stack (B) | spills st / ld (B) |\n|---|---|---|---:|---:|---:|---:|\n"
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} | {} / {} |\n",
            r.module, r.kernel, r.arch, r.registers, r.shared_static, r.stack, r.spill_stores, r.spill_loads
        ));
    }
    s
}

#[test]
fn the_table_in_kernels_notes_is_the_builds() {
    let Some(table) = report() else { return };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/NOTES.md");
    let notes = std::fs::read_to_string(&path).unwrap();
    let (Some(a), Some(b)) = (notes.find(BEGIN), notes.find(END)) else { panic!("kernels/NOTES.md has no {BEGIN} ... {END} section") };
    let want = format!("{BEGIN}\n{}{END}", render(table));
    let have = &notes[a..b + END.len()];
    let write = std::env::var("LORAFLEET_WRITE_RESOURCES").as_deref() == Ok("1");
    if !write && !have.contains(&format!("nvcc: {NVCC_RELEASE}\n")) {
        eprintln!("SKIPPED the comparison: kernels/NOTES.md's table is from another nvcc than this build's ({NVCC_RELEASE})");
        return;
    }
    if have != want {
        if write {
            std::fs::write(&path, format!("{}{want}{}", &notes[..a], &notes[b + END.len()..])).unwrap();
            eprintln!("rewrote the resource table in {}", path.display());
        } else {
            panic!("the resource table in kernels/NOTES.md is not this build's: run `LORAFLEET_WRITE_RESOURCES=1 cargo test --test cuda kernel_resources` with nvcc and commit it");
        }
    }
}
