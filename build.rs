//! Build script: compiles `kernels/*.cu` into fat binaries (sm_80 and sm_90a machine code plus
//! compute_80 PTX for newer GPUs) embedded in the library, and runs bindgen over `csrc/*.h`, the
//! C ABI shared by the kernels and the Rust launch code.
//!
//! With the `cuda` feature (default), nvcc is found through `NVCC`, then `$CUDA_HOME/bin/nvcc`,
//! then `PATH` (`LORAFLEET_REQUIRE_NVCC=1`: an error when it is not). Without it the build
//! emits one warning, embeds no kernels and leaves the `has_kernels` cfg unset; everything else
//! builds and its tests pass (the CUDA tests skip, or fail under LORAFLEET_REQUIRE_GPU=1).

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Targets of every fatbin: Ampere and Hopper machine code (sm_90a for wgmma), and compute_80 PTX
/// that the driver JIT-compiles on GPUs newer than both.
const GENCODE: &[&str] = &["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a", "-gencode=arch=compute_80,code=compute_80"];

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
    // The `cuda` feature (default): kernels when nvcc is found, and the CPU emulator of them.
    // Without it (an embedder's CPU-only build) neither is compiled: a shorter build, and the
    // CUDA backend reports that the binary has no kernels.
    let cuda = env::var_os("CARGO_FEATURE_CUDA").is_some();
    println!("cargo::rerun-if-env-changed=LORAFLEET_REQUIRE_NVCC");
    if cuda {
        emulator(&root, &out, &kernels);
    } else {
        write_emu_rs(&out, None);
    }

    let mut table = String::from("/// Embedded CUDA modules: (file stem, fatbin bytes).\npub const MODULES: &[(&str, &[u8])] = &[\n");
    let mut resources: Vec<String> = Vec::new();
    let mut nvcc_release = String::new();
    match if cuda { find_nvcc() } else { None } {
        None if !cuda => {}
        None if env::var("LORAFLEET_REQUIRE_NVCC").is_ok_and(|v| v == "1") => {
            panic!(
                "LORAFLEET_REQUIRE_NVCC=1 but nvcc was not found: set NVCC to an nvcc binary, or CUDA_HOME, or put nvcc on PATH \
                 (scripts/install-cuda-toolchain.sh installs CUDA 13.0 from PyPI); the CUDA kernels cannot be built without it"
            );
        }
        None => {
            println!(
                "cargo::warning=nvcc not found (set NVCC, CUDA_HOME or PATH; scripts/install-cuda-toolchain.sh installs one): \
                 building without CUDA kernels (LORAFLEET_REQUIRE_NVCC=1 makes this an error)"
            );
        }
        Some(nvcc) => {
            let built = compile_all(&nvcc, &root, &out, &kernels);
            for (stem, path, _) in &built {
                writeln!(table, "    ({stem:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
            }
            resources = built.into_iter().flat_map(|(_, _, r)| r).collect();
            let v = Command::new(&nvcc).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            nvcc_release = v.lines().find(|l| l.contains("release")).unwrap_or_default().trim().to_string();
            println!("cargo::rustc-cfg=has_kernels");
        }
    }
    table.push_str("];\n");
    writeln!(table, "/// The nvcc that built `MODULES` (its `--version` release line; empty without nvcc).\npub const NVCC_RELEASE: &str = {nvcc_release:?};")
        .unwrap();
    table.push_str("/// ptxas's report of each kernel of `MODULES`, per architecture (empty without nvcc).\npub const RESOURCES: &[KernelResources] = &[\n");
    for r in &resources {
        table.push_str(r);
    }
    table.push_str("];\n");
    std::fs::write(out.join("kernels.rs"), table).expect("write kernels.rs");
}

/// ptxas's `-v` report in nvcc's stderr for module `stem`: one `KernelResources { .. },` Rust
/// literal per (kernel, architecture), and the other lines (warnings, shown to the user).
fn ptxas_resources(stem: &str, stderr: &str) -> (Vec<String>, Vec<String>) {
    let num =
        |line: &str, after: &str| -> u32 { line.split(after).next().and_then(|head| head.split_whitespace().last()).and_then(|n| n.parse().ok()).unwrap_or(0) };
    let (mut out, mut other) = (Vec::new(), Vec::new());
    let (mut kernel, mut arch) = (String::new(), String::new());
    let (mut stack, mut spill_st, mut spill_ld) = (0, 0, 0);
    for line in stderr.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("ptxas info    : Compiling entry function '") {
            // `NAME' for 'sm_90a'`
            let mut parts = rest.split('\'');
            kernel = parts.next().unwrap_or_default().to_string();
            arch = parts.nth(1).unwrap_or_default().to_string();
            (stack, spill_st, spill_ld) = (0, 0, 0);
        } else if t.contains("bytes stack frame") {
            stack = num(t, " bytes stack frame");
            spill_st = num(t, " bytes spill stores");
            spill_ld = num(t, " bytes spill loads");
        } else if t.starts_with("ptxas info    : Used ") && !kernel.is_empty() {
            let regs = num(t, " registers");
            let smem = if t.contains(" bytes smem") { num(t, " bytes smem") } else { 0 };
            out.push(format!(
                "    KernelResources {{ module: {stem:?}, kernel: {kernel:?}, arch: {arch:?}, registers: {regs}, shared_static: {smem}, stack: {stack}, spill_stores: {spill_st}, spill_loads: {spill_ld} }},\n"
            ));
            kernel.clear();
        } else if !t.starts_with("ptxas info") {
            other.push(line.to_string());
        }
    }
    (out, other)
}

/// Files directly in `dir` with one of the extensions, sorted (kernels/dev is not built).
fn list(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && p.extension().is_some_and(|x| exts.iter().any(|e| x == *e))).collect())
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
fn compile_all(nvcc: &Path, root: &Path, out: &Path, kernels: &[PathBuf]) -> Vec<(String, PathBuf, Vec<String>)> {
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
            // ptxas's resource report of every kernel (registers, shared memory, stack, spills),
            // per architecture: parsed into `RESOURCES` (kernels.rs) rather than printed.
            cmd.arg("-Xptxas=-v");
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
                        panic!("nvcc failed on kernels/{stem}.cu:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                    }
                    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
                    let (resources, other) = ptxas_resources(&stem, &stderr);
                    for line in other.iter().filter(|l| !l.trim().is_empty()) {
                        println!("cargo::warning=nvcc {stem}: {line}");
                    }
                    (stem, fatbin, resources)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("nvcc thread")).collect()
    })
}

/// The CPU emulator of the CUDA driver and device (kernels/emu, README of kernels/NOTES.md): the
/// stand-in `libcuda.so` (runtime.cpp, driver.cpp) and one shared object per `kernels/*.cu`
/// (plus the emulator's self-test kernels), all built by the host C++ compiler into
/// `OUT_DIR/emu`. Writes `OUT_DIR/emu.rs` with the folder, or `None` when there is no C++
/// compiler (a warning; `LORAFLEET_CUDA_EMU=1` then says the emulator is not built). Objects are
/// rebuilt only when a hash of their inputs and flags changes.
/// `emu.rs`: where the emulator's shared objects are (None: not built).
fn write_emu_rs(out: &Path, dir: Option<&Path>) {
    let v = match dir {
        Some(d) => format!("Some({:?})", d.display().to_string()),
        None => "None".into(),
    };
    std::fs::write(out.join("emu.rs"), format!("/// Where build.rs put the CUDA emulator's shared objects.\npub const BUILT_DIR: Option<&str> = {v};\n"))
        .expect("write emu.rs");
}

fn emulator(root: &Path, out: &Path, kernels: &[PathBuf]) {
    println!("cargo::rerun-if-env-changed=CXX");
    let emu_src = root.join("kernels/emu");
    println!("cargo::rerun-if-changed={}", emu_src.display());
    let inc = emu_src.join("include");
    let mut inputs: Vec<PathBuf> = list(&emu_src, &["cpp", "h", "cu"]);
    inputs.extend(list(&inc, &["h"]));
    for f in &inputs {
        println!("cargo::rerun-if-changed={}", f.display());
    }
    let write_rs = |dir: Option<&Path>| write_emu_rs(out, dir);
    let cxx = env::var("CXX").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| "c++".into());
    if !Command::new(&cxx).arg("--version").output().is_ok_and(|o| o.status.success()) {
        println!("cargo::warning=no C++ compiler ({cxx}): the CUDA emulator is not built (LORAFLEET_CUDA_EMU=1 will say so)");
        write_rs(None);
        return;
    }
    let dir = out.join("emu");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/emu");
    let mut base_flags: Vec<String> =
        ["-std=gnu++20", "-O2", "-fPIC", "-shared", "-g1", "-fno-strict-aliasing", "-fwrapv"].iter().map(|s| s.to_string()).collect();
    // CUDA contracts a * b + c into FMA by default; so does this, where the host has FMA.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        base_flags.extend(["-mfma".to_string(), "-ffp-contract=fast".to_string()]);
    }
    // Everything the objects depend on (sources, shim, csrc headers, flags, compiler).
    let mut common = String::new();
    // kernels/*.cuh (common.cuh) too: every module includes it.
    let shared_headers = list(&root.join("kernels"), &["cuh"]);
    for f in &shared_headers {
        println!("cargo::rerun-if-changed={}", f.display());
    }
    for f in inputs.iter().chain(list(&root.join("csrc"), &["h"]).iter()).chain(shared_headers.iter()) {
        common.push_str(&std::fs::read_to_string(f).unwrap_or_default());
    }
    common.push_str(&base_flags.join(" "));
    common.push_str(&cxx);

    // 1. The driver and runtime: libcuda.so.
    let mut jobs: Vec<(String, String, Command)> = Vec::new();
    let lib = dir.join("libcuda.so");
    let mut cmd = Command::new(&cxx);
    cmd.args(&base_flags)
        .args(["-Wall", "-Wextra", "-Wno-unused-parameter"])
        .arg(format!("-I{}", emu_src.display()))
        .arg("-Wl,-soname,libcuda.so")
        .arg("-o")
        .arg(&lib)
        .args(["runtime.cpp", "driver.cpp", "memory.cpp", "streams.cpp"].map(|f| emu_src.join(f)))
        .args(["-ldl", "-lpthread"]);
    jobs.push(("libcuda".into(), common.clone(), cmd));

    // 2. One module per kernels/*.cu, and the emulator's self-test kernels.
    let mut sources: Vec<PathBuf> = kernels.to_vec();
    sources.push(emu_src.join("selftest.cu"));
    let device_flags = |cmd: &mut Command| {
        cmd.args(&base_flags)
            .args(["-Wno-unknown-pragmas", "-DLF_CUDA_EMU"])
            .arg(format!("-I{}", inc.display()))
            .arg(format!("-I{}", root.join("csrc").display()))
            .arg(format!("-I{}", root.join("kernels").display()))
            .args(["-include", "lf_emu_device.h"]);
    };
    for cu in &sources {
        let stem = cu.file_stem().unwrap().to_string_lossy().into_owned();
        let names = scan_kernels(&cxx, cu, &device_flags);
        let wrapper = dir.join(format!("lf_{stem}.cpp"));
        let mut tu = format!(
            "// Generated by build.rs: the emulated module of {}.\n#include {:?}\n#include \"lf_emu_module.h\"\nLF_EMU_MODULE_BEGIN\n",
            cu.display(),
            cu.display().to_string()
        );
        for n in &names {
            writeln!(tu, "LF_EMU_KERNEL({n})").unwrap();
        }
        tu.push_str("LF_EMU_MODULE_END\n");
        std::fs::write(&wrapper, &tu).expect("write the module wrapper");
        let mut cmd = Command::new(&cxx);
        device_flags(&mut cmd);
        cmd.arg("-o").arg(dir.join(format!("lf_{stem}.so"))).arg(&wrapper).arg(format!("-L{}", dir.display())).arg("-l:libcuda.so").arg("-Wl,-rpath,$ORIGIN");
        jobs.push((format!("lf_{stem}"), format!("{common}{tu}{}", std::fs::read_to_string(cu).unwrap_or_default()), cmd));
    }

    // The driver first (the modules link against it), then the modules in parallel.
    let run = |(name, key, mut cmd): (String, String, Command)| {
        let stamp = dir.join(format!("{name}.hash"));
        let hash = format!("{:016x}", fnv1a(key.as_bytes()));
        let target = dir.join(format!("{name}.so"));
        if target.exists() && std::fs::read_to_string(&stamp).is_ok_and(|h| h == hash) {
            return;
        }
        let o = cmd.output().unwrap_or_else(|e| panic!("running {cxx} for the CUDA emulator ({name}): {e}"));
        if !o.status.success() {
            panic!("building the CUDA emulator ({name}) failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        }
        for line in String::from_utf8_lossy(&o.stderr).lines().filter(|l| !l.trim().is_empty()).take(20) {
            println!("cargo::warning=emulator {name}: {line}");
        }
        std::fs::write(&stamp, hash).expect("write the emulator's build stamp");
    };
    let mut jobs = jobs.into_iter();
    run(jobs.next().expect("the driver job"));
    let rest: Vec<_> = jobs.collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).max(1);
    let queue = std::sync::Mutex::new(rest);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let job = queue.lock().unwrap().pop();
                match job {
                    Some(j) => run(j),
                    None => break,
                }
            });
        }
    });
    write_rs(Some(&dir));
}

/// The `extern "C" __global__` kernels of a .cu file, found in its preprocessed text (so kernels
/// that macros generate are found too): the shim turns `__global__` into a marker under
/// LF_EMU_SCAN.
fn scan_kernels(cxx: &str, cu: &Path, device_flags: &dyn Fn(&mut Command)) -> Vec<String> {
    let mut cmd = Command::new(cxx);
    device_flags(&mut cmd);
    cmd.args(["-E", "-P", "-DLF_EMU_SCAN", "-x", "c++"]).arg(cu);
    let o = cmd.output().unwrap_or_else(|e| panic!("preprocessing {}: {e}", cu.display()));
    if !o.status.success() {
        panic!("preprocessing {} for the CUDA emulator failed:\n{}", cu.display(), String::from_utf8_lossy(&o.stderr));
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let mut names: Vec<String> = Vec::new();
    let mut rest: &str = &text;
    while let Some(i) = rest.find("__lf_emu_global__") {
        rest = &rest[i + "__lf_emu_global__".len()..];
        let after = rest.trim_start();
        let Some(after) = after.strip_prefix("void") else { continue };
        let after = after.trim_start();
        let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The committed bindings (`src/backend/cuda/csrc_bindings.rs`): what a build without libclang
/// uses. Its first line records a hash of the headers it was generated from.
const COMMITTED_BINDINGS: &str = "src/backend/cuda/csrc_bindings.rs";
const HASH_PREFIX: &str = "// csrc-hash: ";

/// The Rust side of `csrc/*.h`, into `OUT_DIR/csrc_bindings.rs`.
///
/// With libclang present, bindgen regenerates them and the result is compared with the committed
/// copy: `LORAFLEET_WRITE_BINDINGS=1` rewrites the committed copy, `LORAFLEET_CHECK_BINDINGS=1`
/// (CI) fails the build when they differ, otherwise a difference is a warning and the fresh ones
/// are used. Without libclang the committed copy is used, after checking that the headers still
/// hash to what it was generated from (a header edited since needs libclang to regenerate).
fn bindings(root: &Path, out: &Path, headers: &[PathBuf]) {
    println!("cargo::rerun-if-env-changed=LORAFLEET_WRITE_BINDINGS");
    println!("cargo::rerun-if-env-changed=LORAFLEET_CHECK_BINDINGS");
    println!("cargo::rerun-if-env-changed=LIBCLANG_PATH");
    println!("cargo::rerun-if-changed={COMMITTED_BINDINGS}");
    let flag = |name: &str| env::var(name).is_ok_and(|v| v == "1");
    let dest = out.join("csrc_bindings.rs");
    let hs: Vec<&PathBuf> = headers.iter().filter(|h| h.extension().is_some_and(|e| e == "h")).collect();
    let hash = headers_hash(&hs);
    let committed_path = root.join(COMMITTED_BINDINGS);
    let committed = std::fs::read_to_string(&committed_path).ok();
    let committed_body = committed.as_deref().and_then(|c| c.split_once('\n'));

    match generate_bindings(root, &hs) {
        Ok(fresh) => {
            let same = committed_body.is_some_and(|(first, body)| body == fresh && first == format!("{HASH_PREFIX}{hash}"));
            if flag("LORAFLEET_WRITE_BINDINGS") && !same {
                std::fs::write(&committed_path, format!("{HASH_PREFIX}{hash}\n{fresh}")).expect("write the committed bindings");
                println!("cargo::warning=rewrote {COMMITTED_BINDINGS} from csrc/*.h");
            } else if !same {
                let msg = format!(
                    "{COMMITTED_BINDINGS} differs from a fresh bindgen run over csrc/*.h: \
                     regenerate it with `LORAFLEET_WRITE_BINDINGS=1 cargo check` and commit it"
                );
                if flag("LORAFLEET_CHECK_BINDINGS") {
                    panic!("{msg}");
                }
                println!("cargo::warning={msg} (using the fresh bindings)");
            }
            std::fs::write(&dest, fresh).expect("write bindings");
        }
        Err(why) => {
            if flag("LORAFLEET_CHECK_BINDINGS") || flag("LORAFLEET_WRITE_BINDINGS") {
                panic!("LORAFLEET_CHECK_BINDINGS / LORAFLEET_WRITE_BINDINGS need bindgen to run, and it could not: {why}");
            }
            let Some((first, body)) = committed_body else {
                panic!("{COMMITTED_BINDINGS} is missing and bindgen could not regenerate it: {why}");
            };
            if first != format!("{HASH_PREFIX}{hash}") {
                panic!(
                    "csrc/*.h changed since {COMMITTED_BINDINGS} was generated, and bindgen could not regenerate it ({why}); \
                     install libclang (Debian: apt-get install libclang1-14 libclang-common-14-dev) and build with \
                     LORAFLEET_WRITE_BINDINGS=1"
                );
            }
            std::fs::write(&dest, body).expect("write bindings");
        }
    }
}

/// bindgen over the headers, or why it could not run (no libclang).
fn generate_bindings(root: &Path, hs: &[&PathBuf]) -> Result<String, String> {
    if hs.is_empty() {
        return Ok(String::new());
    }
    let mut wrapper = String::new();
    for h in hs {
        // Relative names, so that the output does not depend on where the checkout is.
        writeln!(wrapper, "#include \"{}\"", h.file_name().unwrap().to_string_lossy()).unwrap();
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
    // bindgen panics when it cannot load libclang.
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || b.generate()));
    std::panic::set_hook(prev);
    match r {
        Ok(Ok(bindings)) => Ok(bindings.to_string()),
        Ok(Err(e)) => panic!("bindgen failed on csrc/: {e}"),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "bindgen panicked (libclang not found?)".into())),
    }
}

/// FNV-1a 64 over each header's file name and bytes (line endings normalised), in order.
fn headers_hash(hs: &[&PathBuf]) -> String {
    let mut bytes = Vec::new();
    for p in hs {
        bytes.extend_from_slice(p.file_name().unwrap().to_string_lossy().as_bytes());
        bytes.push(0);
        let text = std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        bytes.extend(text.into_iter().filter(|&b| b != b'\r'));
        bytes.push(0);
    }
    format!("{:016x}", fnv1a(&bytes))
}
