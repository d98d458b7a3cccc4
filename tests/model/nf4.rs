//! NF4 quantization against bitsandbytes: packed bytes, absmax and double-quant statistics and
//! dequantized values equal the goldens (`nf4.tJ.*`, from `quantize_4bit(blocksize=64,
//! quant_type="nf4")` with and without `compress_statistics`), and the reader of bitsandbytes'
//! serialization round-trips against quantizing the real weight.

use crate::common;

use lorafleet::quant::nf4::{DYNAMIC_CODE, NF4_CODE};
use lorafleet::quant::{bnb, Absmax, Nf4Tensor};
use lorafleet::weights::WeightFiles;

fn u8s(w: &WeightFiles, name: &str) -> Vec<u8> {
    w.raw(name).unwrap().3.to_vec()
}

/// Floats equal within 1e-6 relative (of the larger magnitude; exact zeros compare exactly).
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-6 * g.abs().max(w.abs());
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn code_tables_match_bitsandbytes() {
    let g = common::golden_tensors();
    assert_eq!(g.f32("nf4.t0.plain.code").unwrap().data, NF4_CODE);
    assert_eq!(g.f32("nf4.t0.dq.nested_code").unwrap().data, DYNAMIC_CODE);
}

#[test]
fn quantize_matches_bitsandbytes_goldens() {
    let g = common::golden_tensors();
    for j in 0..3 {
        let input = g.f32(&format!("nf4.t{j}.input")).unwrap();
        for (kind, double) in [("plain", false), ("dq", true)] {
            let p = format!("nf4.t{j}.{kind}");
            let t = Nf4Tensor::quantize(&input.data, &input.shape, double);
            let want_packed = u8s(&g, &format!("{p}.packed"));
            let diff = t.packed.iter().zip(&want_packed).filter(|(a, b)| a != b).count();
            assert_eq!(diff, 0, "{p}: {diff} of {} packed bytes differ", want_packed.len());
            assert_eq!(t.packed, want_packed, "{p}.packed");
            match &t.absmax {
                Absmax::Plain(a) => assert_close(a, &g.f32(&format!("{p}.absmax")).unwrap().data, &format!("{p}.absmax")),
                Absmax::Double { q, offset, nested_absmax, .. } => {
                    assert_eq!(q, &u8s(&g, &format!("{p}.absmax_u8")), "{p}.absmax_u8");
                    // Exact: torch's float32 mean and the 8-bit quantizer are reproduced to the bit.
                    assert_eq!([*offset], g.f32(&format!("{p}.absmax_offset")).unwrap().data[..], "{p}.offset");
                    assert_eq!(nested_absmax, &g.f32(&format!("{p}.nested_absmax")).unwrap().data, "{p}.nested");
                }
            }
            let want = g.f32(&format!("{p}.dequant")).unwrap().data;
            let [rows, cols] = input.shape[..] else { panic!("2-D golden input") };
            if cols % t.blocksize == 0 {
                assert_close(&t.dequantize(), &want, &format!("{p}.dequant"));
            } else {
                // t2 ([130, 96]): bitsandbytes 0.50.2's CPU dequantize_4bit kernel indexes the
                // scale of element (r, c) as absmax[r * (cols / blocksize) + c / blocksize], which
                // is the flat block `(r * cols + c) / blocksize` only when the block divides the
                // row; the golden records that. Our dequantize is the flat-block one (as
                // bitsandbytes' CUDA and default kernels); check that the golden is exactly the
                // CPU kernel's indexing applied to our (equal) bytes and absmax.
                assert_close(&bnb_cpu_dequantize(&t, rows, cols), &want, &format!("{p}.dequant (bnb CPU indexing)"));
                assert_ne!(t.dequantize(), want, "{p}: expected the golden to show the CPU kernel's row indexing");
            }
        }
    }
}

/// bitsandbytes 0.50.2 `cdequantize_blockwise_cpu_nf4_fp32` on a [rows, cols] weight, as measured
/// against the library: `code[q(r, c)] * absmax[r * (cols / blocksize) + c / blocksize]`.
fn bnb_cpu_dequantize(t: &Nf4Tensor, rows: usize, cols: usize) -> Vec<f32> {
    let absmax = t.block_absmax();
    let per_row = cols / t.blocksize;
    (0..rows * cols).map(|i| t.code[t.index(i) as usize] * absmax[(i / cols) * per_row + (i % cols) / t.blocksize]).collect()
}

const UP3: &str = "model.layers.3.mlp.up_proj.weight";

#[test]
fn reads_bitsandbytes_serialization_of_a_real_weight() {
    let ser = WeightFiles::open_files(&[common::golden_dir().join("nf4_serialized.safetensors")]).unwrap();
    assert!(bnb::is_nf4(&ser, UP3));
    let read = bnb::read(&ser, UP3).unwrap();
    assert_eq!(read.shape, [1536, 576]);

    let model = WeightFiles::open_dir(&common::model_dir()).unwrap();
    let w = model.f32_shaped(UP3, &[1536, 576]).unwrap();
    let ours = Nf4Tensor::quantize(&w.data, &w.shape, true);
    assert_eq!(ours.packed, read.packed, "packed bytes");
    let (Absmax::Double { q: qa, offset: oa, nested_absmax: na, .. }, Absmax::Double { q: qb, offset: ob, nested_absmax: nb, .. }) =
        (&ours.absmax, &read.absmax)
    else {
        panic!("both double-quantized")
    };
    assert_eq!(qa, qb, "up_proj absmax u8");
    assert_eq!(oa.to_bits(), ob.to_bits(), "offset");
    assert_eq!(na, nb, "nested absmax");
    assert_close(&ours.dequantize(), &read.dequantize(), "up_proj dequant");

    // Our writer, read back by our reader: the same tensor.
    let dir_guard = tempfile::Builder::new().prefix("lorafleet-nf4-").tempdir().unwrap();
    let dir = dir_guard.path().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    bnb::write_safetensors(&path, &bnb::serialize(UP3, &ours, "float32")).unwrap();
    let back = bnb::read(&WeightFiles::open_files(&[path]).unwrap(), UP3).unwrap();
    assert_eq!(back, ours);
    std::fs::remove_dir_all(&dir).ok();
}
