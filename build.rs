//! Build script: compiles `kernels/*.cu` into fat binaries (sm_80 and sm_90a machine code plus
//! compute_80 PTX for newer GPUs) embedded in the library, and runs bindgen over `csrc/*.h`, the
//! C ABI shared by the kernels and the Rust launch code.
//!
//! nvcc is found through `NVCC`, then `$CUDA_HOME/bin/nvcc`, then `PATH`. Without it the build
//! emits one warning, embeds no kernels and leaves the `has_kernels` cfg unset; everything else
//! builds and its tests pass (the CUDA tests skip, or fail under LORAFLEET_REQUIRE_GPU=1).

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Targets of every fatbin: Ampere and Hopper machine code (sm_90a for wgmma), and compute_80 PTX
/// that the driver JIT-compiles on GPUs newer than both.
const GENCODE: &[&str] = &[
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_80,code=compute_80",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_kernels)");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=LORAFLEET_PTXAS_VERBOSE");
    println!("cargo::rerun-if-changed=build.rs");
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    let headers = list(&root.join("csrc"), &["h", "cuh"]);
    let kernels = list(&root.join("kernels"), &["cu"]);
    // Watch the folders too, so that a new file triggers a rebuild.
    println!("cargo::rerun-if-changed=csrc");
    println!("cargo::rerun-if-changed=kernels");
    for f in headers.iter().chain(&kernels) {
        println!("cargo::rerun-if-changed={}", f.display());
    }

    bindings(&root, &out, &headers);

    let mut table = String::from("/// Embedded CUDA modules: (file stem, fatbin bytes).\npub const MODULES: &[(&str, &[u8])] = &[\n");
    match find_nvcc() {
        None => {
            println!(
                "cargo::warning=nvcc not found (set NVCC, CUDA_HOME or PATH; scripts/install-cuda-toolchain.sh installs one): \
                 building without CUDA kernels"
            );
        }
        Some(nvcc) => {
            let built = compile_all(&nvcc, &root, &out, &kernels);
            for (stem, path) in &built {
                writeln!(table, "    ({stem:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
            }
            println!("cargo::rustc-cfg=has_kernels");
        }
    }
    table.push_str("];\n");
    std::fs::write(out.join("kernels.rs"), table).expect("write kernels.rs");
}

/// Files directly in `dir` with one of the extensions, sorted (kernels/dev is not built).
fn list(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| exts.iter().any(|e| x == *e)))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn find_nvcc() -> Option<PathBuf> {
    let works = |p: &Path| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
    if let Some(p) = env::var_os("NVCC").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if works(&p) {
            return Some(p);
        }
        println!("cargo::warning=NVCC={} does not run; looking elsewhere", p.display());
    }
    if let Some(home) = env::var_os("CUDA_HOME") {
        let p = PathBuf::from(home).join("bin/nvcc");
        if works(&p) {
            return Some(p);
        }
    }
    let p = PathBuf::from("nvcc");
    works(&p).then_some(p)
}

/// Compiles each .cu file to `OUT_DIR/<stem>.fatbin`, the files in parallel. A compile error
/// fails the build with nvcc's output: a kernel that does not build is a bug, not a missing tool.
fn compile_all(nvcc: &Path, root: &Path, out: &Path, kernels: &[PathBuf]) -> Vec<(String, PathBuf)> {
    let jobs: Vec<_> = kernels
        .iter()
        .map(|cu| {
            let stem = cu.file_stem().unwrap().to_string_lossy().into_owned();
            let fatbin = out.join(format!("{stem}.fatbin"));
            let mut cmd = Command::new(nvcc);
            cmd.arg("--fatbin")
                .args(GENCODE)
                .args(["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"])
                .arg("-I")
                .arg(root.join("csrc"))
                .arg("-o")
                .arg(&fatbin)
                .arg(cu);
            if env::var_os("LORAFLEET_PTXAS_VERBOSE").is_some() {
                cmd.arg("-Xptxas=-v");
            }
            (stem, fatbin, cmd)
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(stem, fatbin, mut cmd)| {
                s.spawn(move || {
                    let o = cmd.output().unwrap_or_else(|e| panic!("running nvcc for {stem}: {e}"));
                    if !o.status.success() {
                        panic!(
                            "nvcc failed on kernels/{stem}.cu:\n{}{}",
                            String::from_utf8_lossy(&o.stdout),
                            String::from_utf8_lossy(&o.stderr)
                        );
                    }
                    for line in String::from_utf8_lossy(&o.stderr).lines().filter(|l| !l.trim().is_empty()) {
                        println!("cargo::warning=nvcc {stem}: {line}");
                    }
                    (stem, fatbin)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("nvcc thread")).collect()
    })
}

/// bindgen over every csrc header, into `OUT_DIR/csrc_bindings.rs`.
fn bindings(root: &Path, out: &Path, headers: &[PathBuf]) {
    let dest = out.join("csrc_bindings.rs");
    let hs: Vec<_> = headers.iter().filter(|h| h.extension().is_some_and(|e| e == "h")).collect();
    if hs.is_empty() {
        std::fs::write(&dest, "").expect("write bindings");
        return;
    }
    let mut wrapper = String::new();
    for h in &hs {
        writeln!(wrapper, "#include \"{}\"", h.display()).unwrap();
    }
    let csrc = root.join("csrc").display().to_string();
    let b = bindgen::Builder::default()
        .header_contents("lorafleet_csrc.h", &wrapper)
        .clang_arg(format!("-I{csrc}"))
        .allowlist_file(format!("{csrc}/.*"))
        .derive_default(true)
        .derive_copy(true)
        .derive_debug(true)
        .layout_tests(false)
        .generate_comments(true)
        .use_core();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || b.generate())) {
        Ok(Ok(bindings)) => bindings.write_to_file(&dest).expect("write bindings"),
        Ok(Err(e)) => panic!("bindgen failed on csrc/: {e}"),
        Err(_) => panic!(
            "bindgen could not run: it needs libclang (Debian: apt-get install libclang1-14 libclang-common-14-dev; \
             or set LIBCLANG_PATH)"
        ),
    }
}
