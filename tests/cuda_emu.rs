//! Tests of the CPU emulator of the CUDA driver and device itself (kernels/emu), through the same
//! cudarc path lorafleet's launchers take: each check the emulator makes must fire (a
//! one-past-the-end read or write, a divergent barrier, a shuffle mask that misses a lane, a
//! missing barrier in a reduction under the seeded order), and its twins of the inline PTX must
//! follow the documented layouts (ldmatrix, mma.m16n8k16, ld.global.nc), and CUDA's bf16 rounding
//! bit for bit. The kernels are in kernels/emu/selftest.cu.
//!
//! These need the emulator, not a GPU: on a machine whose tests run on a real GPU they skip.

use std::sync::Arc;

use cudarc::driver::{CudaModule, CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;
use lorafleet::backend::cuda::{emu, test_device, tests_on_emulator, CudaDevice};
use lorafleet::rng::SplitMix64 as Rng;

/// The device and the self-test module, when the tests run on the emulator.
fn emulator(test: &str) -> Option<(CudaDevice, Arc<CudaModule>)> {
    let ops = test_device(test)?;
    if !tests_on_emulator() {
        eprintln!("SKIP {test}: the CUDA tests of this process run on a real GPU; this one tests the emulator");
        return None;
    }
    assert!(ops.device_name().contains("emulator"), "the emulated device names itself: {}", ops.device_name());
    let m = ops.raw_module("selftest").expect("the emulator's self-test module");
    Some((ops, m))
}

/// Serialises the tests that switch the emulator's allocation alignment (a process-wide mode).
static ALIGNMENT_MODE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cfg(grid: u32, block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// The error of a launch that must fail, as text (cuGetErrorString carries the emulator's detail).
fn launch_error(r: Result<(), cudarc::driver::DriverError>) -> String {
    match r {
        Ok(()) => panic!("the launch succeeded; the emulator should have refused it"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn device_names_itself_and_reports_limits() {
    let Some((ops, _)) = emulator("device_names_itself_and_reports_limits") else { return };
    assert_eq!(ops.device_name(), "lorafleet CPU emulator of sm_90 (not a GPU)");
    let ctx = ops.context();
    use cudarc::driver::sys::CUdevice_attribute as A;
    assert_eq!(ctx.attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).unwrap(), 9);
    assert_eq!(ctx.attribute(A::CU_DEVICE_ATTRIBUTE_WARP_SIZE).unwrap(), 32);
    assert_eq!(ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK).unwrap(), 1024);
}

#[test]
fn one_past_the_end_read_is_caught_and_names_the_kernel() {
    let Some((ops, m)) = emulator("one_past_the_end_read") else { return };
    let _mode = ALIGNMENT_MODE.lock().unwrap_or_else(|e| e.into_inner());
    // Every buffer flush against its guard page, whatever its size.
    emu::set_tight_alignment(true);
    let f = m.load_function("lf_emu_test_read").unwrap();
    let s = ops.stream();
    for len in [1usize, 7, 64, 1000, 4096] {
        let x: CudaSlice<f32> = ops.upload(&vec![1.5f32; len]).unwrap();
        let mut y: CudaSlice<f32> = ops.upload(&[0f32]).unwrap();
        // In bounds: the last element.
        let last = len as i64 - 1;
        let mut b = s.launch_builder(&f);
        b.arg(&x).arg(&mut y).arg(&last);
        // SAFETY: lf_emu_test_read(const float* x, float* y, int64_t idx) reads x[idx], writes y[0].
        unsafe { b.launch(cfg(1, 32)) }.expect("an in-bounds read");
        assert_eq!(ops.download(&y).unwrap(), vec![1.5]);
        // One past the end.
        let past = len as i64;
        let mut b = s.launch_builder(&f);
        b.arg(&x).arg(&mut y).arg(&past);
        // SAFETY: the read is out of bounds on purpose; the emulator's guard page turns it into an
        // error instead of undefined behaviour (this test runs only on the emulator).
        let e = launch_error(unsafe { b.launch(cfg(1, 32)) }.map(|_| ()));
        assert!(e.contains("lf_emu_test_read"), "the error names the kernel: {e}");
        assert!(e.contains("invalid read"), "{e}");
        assert!(e.contains("past the end"), "{e}");
        assert!(e.contains(&format!("{}-byte device allocation", len * 4)), "{e}");
    }
    emu::set_tight_alignment(false);
}

#[test]
fn one_past_the_end_write_is_caught() {
    let Some((ops, m)) = emulator("one_past_the_end_write") else { return };
    let _mode = ALIGNMENT_MODE.lock().unwrap_or_else(|e| e.into_inner());
    let f = m.load_function("lf_emu_test_write").unwrap();
    let s = ops.stream();
    // CUDA's 256-byte alignment (the default): a buffer whose size is not a multiple of 256 bytes
    // ends before its guard page; a write into those bytes is caught by the canary check that
    // follows every launch. Multiples of 256 bytes end at the guard page and fault at once.
    emu::set_tight_alignment(false);
    for len in [1usize, 3, 63, 255, 1000] {
        let mut y: CudaSlice<f32> = ops.upload(&vec![0f32; len]).unwrap();
        let (past, v) = (len as i64, 2.5f32);
        let mut b = s.launch_builder(&f);
        b.arg(&mut y).arg(&past).arg(&v);
        // SAFETY: out of bounds on purpose, caught by the emulator's canary check.
        let e = launch_error(unsafe { b.launch(cfg(1, 1)) }.map(|_| ()));
        assert!(e.contains("lf_emu_test_write") && e.contains("invalid write") && e.contains("0 bytes past the end"), "{e}");
        assert!(e.contains("found after the launch"), "{e}");
    }
    // And flush against the guard page, whatever the size: the write faults.
    emu::set_tight_alignment(true);
    for len in [1usize, 3, 256, 1023] {
        let mut y: CudaSlice<f32> = ops.upload(&vec![0f32; len]).unwrap();
        let (last, v) = (len as i64 - 1, 2.5f32);
        let mut b = s.launch_builder(&f);
        b.arg(&mut y).arg(&last).arg(&v);
        // SAFETY: lf_emu_test_write(float* y, int64_t idx, float v) writes y[idx], in bounds here.
        unsafe { b.launch(cfg(1, 1)) }.expect("an in-bounds write");
        assert_eq!(ops.download(&y).unwrap()[len - 1], 2.5);
        let past = len as i64;
        let mut b = s.launch_builder(&f);
        b.arg(&mut y).arg(&past).arg(&v);
        // SAFETY: out of bounds on purpose, caught by the emulator's guard page.
        let e = launch_error(unsafe { b.launch(cfg(1, 1)) }.map(|_| ()));
        assert!(e.contains("lf_emu_test_write") && e.contains("invalid write") && e.contains("0 bytes past the end"), "{e}");
        assert!(!e.contains("found after the launch"), "a fault, not the canary: {e}");
    }
    emu::set_tight_alignment(false);
}

fn barrier_launch(ops: &CudaDevice, m: &Arc<CudaModule>, mode: i32, split: i32, block: u32) -> Result<Vec<f32>, String> {
    let f = m.load_function("lf_emu_test_barrier").unwrap();
    let mut y: CudaSlice<f32> = ops.upload(&vec![0f32; 2 * block as usize]).unwrap();
    let mut b = ops.stream().launch_builder(&f);
    b.arg(&mut y).arg(&mode).arg(&split);
    // SAFETY: lf_emu_test_barrier(float* y, int mode, int split) writes y[blockIdx.x * blockDim.x
    // + threadIdx.x]: 2 blocks of `block` threads fit y.
    unsafe { b.launch(LaunchConfig { grid_dim: (2, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }) }.map_err(|e| e.to_string())?;
    Ok(ops.download(&y).unwrap())
}

#[test]
fn divergent_syncthreads_is_an_error_not_a_hang() {
    let Some((ops, m)) = emulator("divergent_syncthreads") else { return };
    // The valid barrier runs.
    assert_eq!(barrier_launch(&ops, &m, 0, 0, 64).expect("a uniform barrier"), vec![1.0; 128]);
    // Some threads skip the barrier and return.
    for (split, block) in [(16, 64), (1, 32), (63, 64), (100, 256)] {
        let e = barrier_launch(&ops, &m, 1, split, block).expect_err("a divergent barrier must fail");
        assert!(e.contains("divergent __syncthreads") && e.contains("lf_emu_test_barrier"), "{e}");
        assert!(e.contains(&format!("{split} of {block} threads wait")), "{e}");
    }
    // Two halves at two different barriers.
    let e = barrier_launch(&ops, &m, 2, 32, 64).expect_err("two barriers must fail");
    assert!(e.contains("divergent __syncthreads") && e.contains("selftest.cu"), "{e}");
}

fn block_sum(ops: &CudaDevice, m: &Arc<CudaModule>, x: &[f32], first_barrier: i32) -> f32 {
    let f = m.load_function("lf_emu_test_block_sum").unwrap();
    let xd: CudaSlice<f32> = ops.upload(x).unwrap();
    let mut out: CudaSlice<f32> = ops.upload(&[0f32]).unwrap();
    let mut b = ops.stream().launch_builder(&f);
    b.arg(&xd).arg(&mut out).arg(&first_barrier);
    // SAFETY: lf_emu_test_block_sum(const float* x, float* out, int) reads x[0..blockDim.x) and
    // writes out[0]; blockDim.x = x.len(), a power of two <= 256.
    unsafe { b.launch(cfg(1, x.len() as u32)) }.expect("block sum");
    ops.download(&out).unwrap()[0]
}

#[test]
fn a_reduction_missing_a_barrier_gives_a_wrong_result() {
    let Some((ops, m)) = emulator("reduction_missing_barrier") else { return };
    let mut rng = Rng::new(15);
    for n in [32usize, 64, 256] {
        // Integers, so the order of the sum does not matter.
        let x: Vec<f32> = (0..n).map(|_| (rng.below(100) + 1) as f32).collect();
        let want: f32 = x.iter().sum();
        assert_eq!(block_sum(&ops, &m, &x, 1), want, "with the barrier, n = {n}");
        let got = block_sum(&ops, &m, &x, 0);
        assert!(got != want, "without the barrier the seeded order must expose the race (n = {n}): got {got}");
    }
}

fn shfl_xor(ops: &CudaDevice, m: &Arc<CudaModule>, mask: u32, active: i32) -> Result<Vec<f32>, String> {
    let f = m.load_function("lf_emu_test_shfl_xor").unwrap();
    let mut y: CudaSlice<f32> = ops.upload(&[0f32; 64]).unwrap();
    let mut b = ops.stream().launch_builder(&f);
    b.arg(&mut y).arg(&mask).arg(&active);
    // SAFETY: lf_emu_test_shfl_xor(float* y, unsigned mask, int active) writes y[threadIdx.x].
    unsafe { b.launch(cfg(1, 64)) }.map_err(|e| e.to_string())?;
    Ok(ops.download(&y).unwrap())
}

#[test]
fn a_shuffle_mask_missing_a_lane_is_reported() {
    let Some((ops, m)) = emulator("shuffle_mask") else { return };
    // Full mask, every lane: y[t] = t ^ 1.
    let y = shfl_xor(&ops, &m, u32::MAX, 32).expect("a full-warp shuffle");
    assert_eq!(y, (0..64).map(|t| (t ^ 1) as f32).collect::<Vec<_>>());
    // Lanes 0..16 with the mask naming exactly them.
    let y = shfl_xor(&ops, &m, 0xffff, 16).expect("a half-warp shuffle");
    assert_eq!(y[5], 4.0);
    assert_eq!(y[20], 20.0);
    // An arriving lane the mask does not name.
    let e = shfl_xor(&ops, &m, 0xffff_fffe, 32).expect_err("lane 0 is not in the mask");
    // Whichever comes first under the seeded order: lane 0 arriving with a mask that leaves it
    // out, or lane 1 reading lane 0 outside the mask.
    assert!(e.contains("lane 0") && e.contains("does not name"), "{e}");
    // The mask names lanes that never arrive: an error, not a hang.
    let e = shfl_xor(&ops, &m, u32::MAX, 16).expect_err("lanes 16..32 never arrive");
    assert!(e.contains("never arrive") && e.contains("16,17"), "{e}");
}

#[test]
fn warp_shuffles_and_votes_follow_cuda_semantics() {
    let Some((ops, m)) = emulator("warp_shuffles") else { return };
    let f = m.load_function("lf_emu_test_shfl_all").unwrap();
    let mut out: CudaSlice<f32> = ops.upload(&[0f32; 160]).unwrap();
    let mut b = ops.stream().launch_builder(&f);
    b.arg(&mut out);
    // SAFETY: lf_emu_test_shfl_all(float* out) writes out[0..160) from one warp.
    unsafe { b.launch(cfg(1, 32)) }.unwrap();
    let o = ops.download(&out).unwrap();
    for l in 0..32usize {
        assert_eq!(o[l], 528.0, "butterfly sum at lane {l}");
        assert_eq!(o[32 + l], if l + 3 < 32 { (l + 3) as f32 } else { l as f32 }, "down at {l}");
        assert_eq!(o[64 + l], if l >= 2 { (l - 2) as f32 } else { l as f32 }, "up at {l}");
        assert_eq!(o[96 + l], 7.0, "idx at {l}");
        assert_eq!(o[128 + l], 0xaaaa_aaaau32 as f32, "ballot at {l}");
    }
}

/// CUDA's __float2bfloat16_rn (cvt.rn.bf16.f32): round to nearest even; every NaN to 0x7fff;
/// infinities and subnormals kept. Written from that definition, separately from the shim.
fn bf16_rn_reference(f: f32) -> u16 {
    let u = f.to_bits();
    if f.is_nan() {
        return 0x7fff;
    }
    let upper = (u >> 16) as u16;
    let lower = u & 0xffff;
    match lower.cmp(&0x8000) {
        std::cmp::Ordering::Less => upper,
        std::cmp::Ordering::Greater => upper.wrapping_add(1),
        std::cmp::Ordering::Equal => upper.wrapping_add(upper & 1),
    }
}

#[test]
fn float2bfloat16_rn_is_bit_exact_on_ties_nan_infinities_and_subnormals() {
    let Some((ops, m)) = emulator("float2bfloat16_rn") else { return };
    let mut cases: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001), // signalling NaN
        f32::from_bits(0xffc1_2345),
        f32::MAX,                    // rounds up to infinity
        f32::from_bits(0x7f7f_8000), // a tie just under the top: to even (infinity)
        f32::from_bits(0x0000_0001), // smallest subnormal
        f32::from_bits(0x0000_8000), // subnormal tie, even: stays 0
        f32::from_bits(0x0001_8000), // subnormal tie, odd: rounds up
        f32::from_bits(0x807f_ffff), // largest negative subnormal
        f32::from_bits(0x3f80_8000), // 1 + 2^-8: tie, even: 1.0
        f32::from_bits(0x3f81_8000), // tie, odd: up
        f32::from_bits(0x3f80_8001), // just over a tie: up
        f32::from_bits(0x3f80_7fff), // just under: down
        f32::from_bits(0xbf81_8000), // negative tie, odd
    ];
    let mut rng = Rng::new(0xbf16);
    for _ in 0..4096 {
        cases.push(f32::from_bits(rng.next_u64() as u32));
    }
    let n = cases.len();
    let f = m.load_function("lf_emu_test_f2bf").unwrap();
    let x: CudaSlice<f32> = ops.upload(&cases).unwrap();
    let mut y: CudaSlice<u16> = ops.upload(&vec![0u16; n]).unwrap();
    let nn = n as i32;
    let mut b = ops.stream().launch_builder(&f);
    b.arg(&x).arg(&mut y).arg(&nn);
    // SAFETY: lf_emu_test_f2bf(const float* x, uint16_t* y, int n): one thread per element < n.
    unsafe { b.launch(cfg(n.div_ceil(128) as u32, 128)) }.unwrap();
    let got = ops.download(&y).unwrap();
    for (i, (&c, &g)) in cases.iter().zip(&got).enumerate() {
        assert_eq!(g, bf16_rn_reference(c), "case {i}: {c:e} (0x{:08x})", c.to_bits());
        if !c.is_nan() {
            assert_eq!(g, bf16::from_f32(c).to_bits(), "case {i} agrees with half's RNE too");
        }
    }
}

#[test]
fn atomic_add_is_safe_across_parallel_blocks() {
    let Some((ops, m)) = emulator("atomic_add") else { return };
    let f = m.load_function("lf_emu_test_atomic").unwrap();
    let mut acc: CudaSlice<f32> = ops.upload(&[0f32]).unwrap();
    let mut b = ops.stream().launch_builder(&f);
    b.arg(&mut acc);
    // SAFETY: lf_emu_test_atomic(float* acc) adds 1 to acc[0] from every thread.
    unsafe { b.launch(cfg(257, 128)) }.unwrap();
    assert_eq!(ops.download(&acc).unwrap()[0], (257 * 128) as f32);
}

#[test]
fn shared_memory_is_poisoned_and_dynamic_shared_memory_is_bounded() {
    let Some((ops, m)) = emulator("shared_memory") else { return };
    let f = m.load_function("lf_emu_test_shared_poison").unwrap();
    let mut y: CudaSlice<f32> = ops.upload(&[0f32; 64]).unwrap();
    let never = 0i32;
    let mut b = ops.stream().launch_builder(&f);
    b.arg(&mut y).arg(&never);
    // SAFETY: lf_emu_test_shared_poison(float* y, int never) writes y[threadIdx.x], 64 threads.
    unsafe { b.launch(cfg(1, 64)) }.unwrap();
    assert!(ops.download(&y).unwrap().iter().all(|v| v.is_nan()), "never-written shared memory reads as NaN");

    let f = m.load_function("lf_emu_test_dyn_smem").unwrap();
    for (threads, extra, ok) in [(64u32, 0i32, true), (100, 0, true), (64, 1, false), (32, 4096, false)] {
        let mut y: CudaSlice<f32> = ops.upload(&vec![0f32; threads as usize]).unwrap();
        let mut b = ops.stream().launch_builder(&f);
        b.arg(&mut y).arg(&extra);
        let c = LaunchConfig { grid_dim: (3, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: threads * 4 };
        // SAFETY: lf_emu_test_dyn_smem(float* y, int extra) writes s[t + extra] in `threads` floats
        // of dynamic shared memory (past it when extra > 0: caught by the emulator), y[t].
        let r = unsafe { b.launch(c) };
        if ok {
            r.unwrap();
            let got = ops.download(&y).unwrap();
            let want: Vec<f32> = (0..threads).map(|t| (((t + 1) % threads) * 2) as f32).collect();
            assert_eq!(got, want);
        } else {
            let e = launch_error(r.map(|_| ()));
            assert!(e.contains("lf_emu_test_dyn_smem") && e.contains("invalid write"), "{e}");
        }
    }
    // More dynamic shared memory than the function allows is refused at launch.
    let mut y: CudaSlice<f32> = ops.upload(&[0f32; 32]).unwrap();
    let zero = 0i32;
    let mut b = ops.stream().launch_builder(&f);
    b.arg(&mut y).arg(&zero);
    let c = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 64 * 1024 };
    // SAFETY: refused before anything runs.
    let e = launch_error(unsafe { b.launch(c) }.map(|_| ()));
    assert!(e.contains("dynamic shared memory exceed"), "{e}");
}

#[test]
fn launches_past_the_device_limits_are_refused() {
    let Some((ops, m)) = emulator("launch_limits") else { return };
    let f = m.load_function("lf_emu_test_atomic").unwrap();
    let mut acc: CudaSlice<f32> = ops.upload(&[0f32]).unwrap();
    for (grid, block) in [((1, 1, 1), (1025, 1, 1)), ((1, 1, 1), (32, 32, 2)), ((1, 70000, 1), (32, 1, 1))] {
        let mut b = ops.stream().launch_builder(&f);
        b.arg(&mut acc);
        let c = LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: 0 };
        // SAFETY: refused before anything runs.
        let e = launch_error(unsafe { b.launch(c) }.map(|_| ()));
        assert!(e.contains("exceeds the device limits"), "{e}");
    }
}

/// Row-major 4 x 8 x 8 bf16 matrices, lane l's registers by the documented ldmatrix layout.
fn ldmatrix_reference(src: &[u16], trans: bool) -> Vec<u32> {
    let mut out = vec![0u32; 32 * 4];
    for l in 0..32 {
        for i in 0..4 {
            let el = |j: usize| {
                let (row, col) = if trans { (2 * (l % 4) + j, l / 4) } else { (l / 4, 2 * (l % 4) + j) };
                src[i * 64 + row * 8 + col] as u32
            };
            out[l * 4 + i] = el(0) | (el(1) << 16);
        }
    }
    out
}

#[test]
fn ldmatrix_twin_follows_the_documented_layout() {
    let Some((ops, m)) = emulator("ldmatrix_twin") else { return };
    let f = m.load_function("lf_emu_test_ldmatrix").unwrap();
    let mut rng = Rng::new(8);
    let src: Vec<u16> = (0..256).map(|_| bf16::from_f32(rng.uniform()).to_bits()).collect();
    let d: CudaSlice<u16> = ops.upload(&src).unwrap();
    for trans in [0i32, 1] {
        let mut out: CudaSlice<u32> = ops.upload(&[0u32; 128]).unwrap();
        let mut b = ops.stream().launch_builder(&f);
        b.arg(&d).arg(&mut out).arg(&trans);
        // SAFETY: lf_emu_test_ldmatrix(const bf16* src, uint32_t* out, int trans): src 256
        // elements, out 128 words, one warp.
        unsafe { b.launch(cfg(1, 32)) }.unwrap();
        assert_eq!(ops.download(&out).unwrap(), ldmatrix_reference(&src, trans != 0), "trans = {trans}");
    }
}

fn mma(ops: &CudaDevice, m: &Arc<CudaModule>, a: &[bf16], bm: &[bf16], c: &[f32], wrong: i32) -> Vec<f32> {
    let f = m.load_function("lf_emu_test_mma").unwrap();
    let (da, db, dc) = (ops.upload(a).unwrap(), ops.upload(bm).unwrap(), ops.upload(c).unwrap());
    let mut dd: CudaSlice<f32> = ops.upload(&[0f32; 128]).unwrap();
    let mut b = ops.stream().launch_builder(&f);
    b.arg(&da).arg(&db).arg(&dc).arg(&mut dd).arg(&wrong);
    // SAFETY: lf_emu_test_mma(const bf16* A[256], const bf16* B[128], const float* C[128],
    // float* D[128], int): one warp.
    unsafe { b.launch(cfg(1, 32)) }.unwrap();
    ops.download(&dd).unwrap()
}

#[test]
fn mma_twin_computes_the_product_and_a_wrong_fragment_layout_is_wrong() {
    let Some((ops, m)) = emulator("mma_twin") else { return };
    let mut rng = Rng::new(16816);
    for _ in 0..4 {
        let a: Vec<bf16> = (0..256).map(|_| bf16::from_f32(rng.uniform())).collect();
        let bm: Vec<bf16> = (0..128).map(|_| bf16::from_f32(rng.uniform())).collect();
        let c: Vec<f32> = (0..128).map(|_| rng.uniform()).collect();
        let mut want = vec![0f64; 128];
        for r in 0..16 {
            for n in 0..8 {
                let mut s = c[r * 8 + n] as f64;
                for k in 0..16 {
                    s += a[r * 16 + k].to_f64() * bm[k * 8 + n].to_f64();
                }
                want[r * 8 + n] = s;
            }
        }
        let got = mma(&ops, &m, &a, &bm, &c, 0);
        for i in 0..128 {
            assert!((got[i] as f64 - want[i]).abs() <= 1e-5 * want[i].abs().max(1.0), "D[{i}]: {} vs {}", got[i], want[i]);
        }
        let wrong = mma(&ops, &m, &a, &bm, &c, 1);
        let diff = (0..128).filter(|&i| (wrong[i] as f64 - want[i]).abs() > 1e-3).count();
        assert!(diff > 64, "a transposed A fragment must give a different product ({diff} of 128 differ)");
    }
}

#[test]
fn ld_global_nc_twin_loads_four_words_and_checks_alignment() {
    let Some((ops, m)) = emulator("ld_global_nc_twin") else { return };
    let f = m.load_function("lf_emu_test_ld_nc").unwrap();
    let bytes: Vec<u8> = (0..64u32).map(|i| (i * 7 + 3) as u8).collect();
    let d: CudaSlice<u8> = ops.upload(&bytes).unwrap();
    for (off, ok) in [(0i64, true), (16, true), (48, true), (4, false)] {
        let mut out: CudaSlice<u32> = ops.upload(&[0u32; 4]).unwrap();
        let mut b = ops.stream().launch_builder(&f);
        b.arg(&d).arg(&off).arg(&mut out);
        // SAFETY: lf_emu_test_ld_nc(const uint8_t* p, int64_t offset, uint32_t* out) reads 16
        // bytes at p + offset (offset + 16 <= 64) and writes out[0..4).
        let r = unsafe { b.launch(cfg(1, 1)) };
        if ok {
            r.unwrap();
            let o = off as usize;
            let want: Vec<u32> = (0..4).map(|i| u32::from_le_bytes(bytes[o + 4 * i..o + 4 * i + 4].try_into().unwrap())).collect();
            assert_eq!(ops.download(&out).unwrap(), want);
        } else {
            let e = launch_error(r.map(|_| ()));
            assert!(e.contains("not 16-byte aligned"), "{e}");
        }
    }
}

#[test]
fn fresh_allocations_are_poisoned_and_the_counters_count() {
    let Some((ops, _)) = emulator("copies_and_counters") else { return };
    let before = emu::counters().expect("the emulator's counters");
    let d: CudaSlice<f32> = ops.upload(&[1.0f32, 2.0, 3.0]).unwrap();
    let back = ops.download(&d).unwrap();
    assert_eq!(back, vec![1.0, 2.0, 3.0]);
    let after = emu::counters().unwrap();
    assert!(after.allocs > before.allocs && after.htod > before.htod && after.dtoh > before.dtoh);
    // A freshly allocated buffer reads as the poison pattern.
    // SAFETY: the contents are read back uninitialised on purpose (the emulator fills them).
    let fresh: CudaSlice<f32> = unsafe { ops.stream().alloc::<f32>(5) }.unwrap();
    assert!(ops.download(&fresh).unwrap().iter().all(|v| v.to_bits() == 0xffff_ffff));
}

#[test]
fn stream_capture_records_and_graphs_replay() {
    let Some((ops, m)) = emulator("stream_capture") else { return };
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let f = m.load_function("lf_emu_test_atomic").unwrap();
    let mut acc: CudaSlice<f32> = ops.upload(&[0f32]).unwrap();
    let s2 = ops.context().new_stream().unwrap();
    ops.synchronize().unwrap();
    let before = emu::counters().unwrap();
    // Thread-local captures: a global-mode capture makes every capture-unsafe call of the process
    // fail while it lasts (as the driver does), and the other tests of this binary allocate on
    // their own threads at the same time (one CI run failed so, in an unrelated test's upload).
    s2.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    let mut b = s2.launch_builder(&f);
    b.arg(&mut acc);
    // SAFETY: lf_emu_test_atomic(float* acc) adds 1 to acc[0] per thread; recorded, not run.
    unsafe { b.launch(cfg(3, 64)) }.unwrap();
    let graph = s2.end_capture(CUgraphInstantiate_flags(0)).unwrap().expect("a graph");
    assert_eq!(ops.download(&acc).unwrap()[0], 0.0, "capturing runs nothing");
    for _ in 0..2 {
        graph.launch().unwrap();
    }
    s2.synchronize().unwrap();
    assert_eq!(ops.download(&acc).unwrap()[0], 2.0 * 192.0, "each replay runs the captured launch");
    let after = emu::counters().unwrap();
    assert_eq!(after.graph_launches - before.graph_launches, 2);

    // An allocation on the capturing thread is refused and invalidates the capture.
    s2.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    // SAFETY: the allocation is refused; nothing is read.
    let r = unsafe { s2.alloc::<f32>(16) };
    let e = r.expect_err("cuMemAlloc during a thread-local capture, on its thread").to_string();
    assert!(e.contains("capturing"), "{e}");
    assert!(s2.end_capture(CUgraphInstantiate_flags(0)).is_err(), "the capture was invalidated");
}
