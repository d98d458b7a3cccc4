//! `TrainBackend` on the CPU: the training ops as the functions of `backward` (and `ops`,
//! `matmul`, `frozen`), each argument checked here so that a bad shape is an error, never one of
//! those functions' asserts.

use super::simd::dispatch;
use super::{backward as bw, check, frozen, matmul, ops, zeroed, CpuBackend, CpuMatrix, CpuRope, CpuTensor, CpuWeight};
use crate::backend::train::{AdamWStep, TrainBackend};
use crate::types::config::ModelConfig;
use crate::types::layout::SeqSpan;
use crate::types::TrainBatch;
use crate::{Error, Result};

/// A training batch on the CPU: its layout as the trainer built it, and the head layout.
pub struct CpuTrainBatch {
    ids: Vec<u32>,
    positions: Vec<u32>,
    seqs: Vec<SeqSpan>,
    label_rows: Vec<usize>,
    targets: Vec<u32>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl CpuTrainBatch {
    fn rows(&self) -> usize {
        self.ids.len()
    }
}

fn tensor(data: Vec<f32>, rows: usize, cols: usize) -> CpuTensor {
    CpuTensor { data, rows, cols }
}

fn same_shape(what: &str, a: &CpuTensor, b: &CpuTensor) -> Result<()> {
    check(a.rows == b.rows && a.cols == b.cols, || format!("{what}: [{}, {}] vs [{}, {}]", a.rows, a.cols, b.rows, b.cols))
}

/// The f32 rows of a dense table (embeddings, lm_head), or an error naming the op.
fn dense_table<'m>(op: &str, m: &'m CpuMatrix) -> Result<&'m [f32]> {
    match &m.weight {
        CpuWeight::Dense(d) => Ok(d),
        CpuWeight::Nf4(_) | CpuWeight::Bf16(_) | CpuWeight::Q8(_) => {
            Err(Error::InvalidArgument(format!("{op}: the table must be dense f32, not NF4, bf16 or Q8")))
        }
    }
}

impl TrainBackend for CpuBackend {
    type Batch = CpuTrainBatch;

    fn begin_batch(&self, batch: &TrainBatch, c: &ModelConfig) -> Result<CpuTrainBatch> {
        batch.check_against(c)?;
        Ok(CpuTrainBatch {
            ids: batch.ids.clone(),
            positions: batch.positions.clone(),
            seqs: batch.seqs.clone(),
            label_rows: batch.label_rows.clone(),
            targets: batch.targets.clone(),
            n_heads: c.num_heads,
            n_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        })
    }

    fn embed_batch(&self, table: &CpuMatrix, b: &CpuTrainBatch) -> Result<CpuTensor> {
        let data = dense_table("embedding", table)?;
        check(b.ids.iter().all(|&i| (i as usize) < table.rows), || "embedding: a token id past the table".into())?;
        let mut out = zeroed(b.rows() * table.cols);
        ops::embedding(data, table.cols, &b.ids, &mut out);
        Ok(tensor(out, b.rows(), table.cols))
    }

    fn rope_batch(&self, q: &mut CpuTensor, k: &mut CpuTensor, b: &CpuTrainBatch, rope: &CpuRope, backward: bool) -> Result<()> {
        let d = b.head_dim;
        for (x, heads) in [(&*q, b.n_heads), (&*k, b.n_kv_heads)] {
            check(x.cols == heads * d && x.rows == b.rows(), || format!("rope: [{}, {}] is not [{}, {heads} x {d}]", x.rows, x.cols, b.rows()))?;
        }
        check(d / 2 * rope.max_pos == rope.cos.len(), || "rope: table width differs from head_dim".into())?;
        if let Some(&p) = b.positions.iter().find(|&&p| p as usize >= rope.max_pos) {
            return Err(Error::InvalidArgument(format!("position {p} is past the RoPE table ({})", rope.max_pos)));
        }
        let f = if backward { bw::rope_backward_inplace } else { ops::rope_inplace };
        f(&mut q.data, &b.positions, b.n_heads, d, &rope.cos, &rope.sin);
        f(&mut k.data, &b.positions, b.n_kv_heads, d, &rope.cos, &rope.sin);
        Ok(())
    }

    fn causal_attention(&self, q: &CpuTensor, k: &CpuTensor, v: &CpuTensor, b: &CpuTrainBatch) -> Result<(CpuTensor, CpuTensor)> {
        check_qkv(q, k, v, b)?;
        let (out, lse) = bw::causal_attention_forward(&q.data, &k.data, &v.data, &b.seqs, b.n_heads, b.n_kv_heads, b.head_dim);
        Ok((tensor(out, q.rows, q.cols), tensor(lse, q.rows, b.n_heads)))
    }

    fn causal_attention_backward(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        out: &CpuTensor,
        lse: &CpuTensor,
        dout: &CpuTensor,
        b: &CpuTrainBatch,
    ) -> Result<(CpuTensor, CpuTensor, CpuTensor)> {
        check_qkv(q, k, v, b)?;
        same_shape("attention backward: out", out, q)?;
        same_shape("attention backward: dout", dout, q)?;
        check(lse.rows == q.rows && lse.cols == b.n_heads, || "attention backward: lse is not [T, heads]".into())?;
        let (dq, dk, dv) =
            bw::causal_attention_backward(&q.data, &k.data, &v.data, &out.data, &lse.data, &dout.data, &b.seqs, b.n_heads, b.n_kv_heads, b.head_dim);
        Ok((tensor(dq, q.rows, q.cols), tensor(dk, k.rows, k.cols), tensor(dv, v.rows, v.cols)))
    }

    fn linear_dx(&self, dy: &CpuTensor, w: &CpuMatrix, dx: &mut CpuTensor, accumulate: bool) -> Result<()> {
        check(dy.cols == w.rows && dx.cols == w.cols && dx.rows == dy.rows, || {
            format!("linear_dx: dy [{}, {}] · W [{}, {}] -> dx [{}, {}]", dy.rows, dy.cols, w.rows, w.cols, dx.rows, dx.cols)
        })?;
        let t = dy.rows;
        match &w.weight {
            CpuWeight::Dense(d) => bw::gemm(t, w.cols, w.rows, &dy.data, false, d, false, &mut dx.data, accumulate, 1.0),
            CpuWeight::Nf4(m) => frozen::linear_backward_dx(&dy.data, t, m, &mut dx.data, accumulate),
            CpuWeight::Bf16(m) => frozen::linear_backward_dx(&dy.data, t, m, &mut dx.data, accumulate),
            CpuWeight::Q8(m) => frozen::linear_backward_dx(&dy.data, t, m, &mut dx.data, accumulate),
        }
        Ok(())
    }

    fn rms_norm_backward(&self, x: &CpuTensor, w: &Vec<f32>, eps: f32, dy: &CpuTensor, dx: &mut CpuTensor, accumulate: bool) -> Result<()> {
        check(w.len() == x.cols && !w.is_empty(), || format!("rms_norm_backward: weight {} vs row {}", w.len(), x.cols))?;
        same_shape("rms_norm_backward: dy", dy, x)?;
        same_shape("rms_norm_backward: dx", dx, x)?;
        bw::rms_norm_backward(&x.data, w, eps, &dy.data, &mut dx.data, accumulate);
        Ok(())
    }

    fn silu_mul_backward(&self, gate: &CpuTensor, up: &CpuTensor, dout: &CpuTensor) -> Result<(CpuTensor, CpuTensor)> {
        same_shape("silu_mul_backward: up", up, gate)?;
        same_shape("silu_mul_backward: dout", dout, gate)?;
        let (mut dg, mut du) = (zeroed(gate.data.len()), zeroed(gate.data.len()));
        bw::silu_mul_backward(&gate.data, &up.data, &dout.data, &mut dg, &mut du);
        Ok((tensor(dg, gate.rows, gate.cols), tensor(du, gate.rows, gate.cols)))
    }

    fn lora_forward(&self, y: &mut CpuTensor, x: &CpuTensor, a: &CpuTensor, b: &CpuTensor, scale: f32) -> Result<CpuTensor> {
        check_lora(x, y, a, b)?;
        let (t, r) = (x.rows, a.rows);
        let mut xa = vec![0.0; t * r];
        matmul::linear(&x.data, t, x.cols, &a.data, r, &mut xa);
        bw::gemm(t, y.cols, r, &xa, false, &b.data, true, &mut y.data, true, scale);
        Ok(tensor(xa, t, r))
    }

    fn lora_backward(
        &self,
        x: &CpuTensor,
        xa: &CpuTensor,
        dy: &CpuTensor,
        a: &CpuTensor,
        b: &CpuTensor,
        scale: f32,
        da: &mut CpuTensor,
        db: &mut CpuTensor,
        dx: &mut CpuTensor,
    ) -> Result<()> {
        check_lora(x, dy, a, b)?;
        check(xa.rows == x.rows && xa.cols == a.rows, || "lora_backward: xa is not [T, r]".into())?;
        same_shape("lora_backward: dA", da, a)?;
        same_shape("lora_backward: dB", db, b)?;
        same_shape("lora_backward: dx", dx, x)?;
        bw::lora_backward(&x.data, &xa.data, &dy.data, x.rows, &a.data, &b.data, a.rows, scale, &mut da.data, &mut db.data, Some(&mut dx.data));
        Ok(())
    }

    fn mul(&self, x: &CpuTensor, mask: &CpuTensor) -> Result<CpuTensor> {
        same_shape("mul", mask, x)?;
        Ok(tensor(x.data.iter().zip(&mask.data).map(|(a, m)| a * m).collect(), x.rows, x.cols))
    }

    fn gather_label_rows(&self, x: &CpuTensor, b: &CpuTrainBatch) -> Result<CpuTensor> {
        check(x.rows == b.rows(), || format!("gather_label_rows: {} rows for a batch of {}", x.rows, b.rows()))?;
        let w = x.cols;
        let mut data = Vec::with_capacity(b.label_rows.len() * w);
        for &r in &b.label_rows {
            data.extend_from_slice(&x.data[r * w..(r + 1) * w]);
        }
        Ok(tensor(data, b.label_rows.len(), w))
    }

    fn scatter_label_rows(&self, d: &CpuTensor, b: &CpuTrainBatch) -> Result<CpuTensor> {
        check(d.rows == b.label_rows.len(), || format!("scatter_label_rows: {} rows for {} labelled rows", d.rows, b.label_rows.len()))?;
        let w = d.cols;
        let mut out = zeroed(b.rows() * w);
        for (i, &r) in b.label_rows.iter().enumerate() {
            for (o, &v) in out[r * w..(r + 1) * w].iter_mut().zip(&d.data[i * w..(i + 1) * w]) {
                *o += v;
            }
        }
        Ok(tensor(out, b.rows(), w))
    }

    fn cross_entropy(&self, h: &CpuTensor, table: &CpuMatrix, b: &CpuTrainBatch, weight: f32, chunk: usize) -> Result<(f64, CpuTensor)> {
        let w = dense_table("cross_entropy", table)?;
        check(h.rows == b.targets.len() && h.cols == table.cols && chunk > 0, || {
            format!("cross_entropy: h [{}, {}] for {} targets, table [{}, {}], chunk {chunk}", h.rows, h.cols, b.targets.len(), table.rows, table.cols)
        })?;
        check(b.targets.iter().all(|&t| (t as usize) < table.rows), || "cross_entropy: a target past the lm_head".into())?;
        let weights = vec![weight; b.targets.len()];
        let (loss, dh) = bw::cross_entropy_lm_head(&h.data, w, h.cols, &b.targets, &weights, chunk);
        Ok((loss, tensor(dh, h.rows, h.cols)))
    }

    fn adamw_step(&self, p: &mut CpuTensor, g: &CpuTensor, m: &mut CpuTensor, v: &mut CpuTensor, step: &AdamWStep) -> Result<()> {
        same_shape("adamw: gradient", g, p)?;
        same_shape("adamw: first moment", m, p)?;
        same_shape("adamw: second moment", v, p)?;
        // A plain loop, vectorised by the compiler for the level it is dispatched to.
        dispatch!(super::isa::current(), _s => {
            for (((p, &g), m), v) in p.data.iter_mut().zip(&g.data).zip(m.data.iter_mut()).zip(v.data.iter_mut()) {
                (*p, *m, *v) = step.apply(*p, g, *m, *v);
            }
        });
        Ok(())
    }

    fn sum_squares(&self, x: &CpuTensor) -> Result<f64> {
        Ok(x.data.iter().map(|&v| v as f64 * v as f64).sum())
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<CpuTensor> {
        Ok(tensor(zeroed(rows * cols), rows, cols))
    }

    fn fill_zero(&self, x: &mut CpuTensor) -> Result<()> {
        x.data.fill(0.0);
        Ok(())
    }

    fn copy(&self, x: &CpuTensor) -> Result<CpuTensor> {
        Ok(x.clone())
    }
}

fn check_qkv(q: &CpuTensor, k: &CpuTensor, v: &CpuTensor, b: &CpuTrainBatch) -> Result<()> {
    let (qw, kw) = (b.n_heads * b.head_dim, b.n_kv_heads * b.head_dim);
    check(q.rows == b.rows() && q.cols == qw, || format!("attention: q [{}, {}] is not [{}, {qw}]", q.rows, q.cols, b.rows()))?;
    check(k.rows == b.rows() && k.cols == kw, || format!("attention: k [{}, {}] is not [{}, {kw}]", k.rows, k.cols, b.rows()))?;
    same_shape("attention: v", v, k)
}

/// `x [T, in]`, `y [T, out]`, `A [r, in]`, `B [out, r]`.
fn check_lora(x: &CpuTensor, y: &CpuTensor, a: &CpuTensor, b: &CpuTensor) -> Result<()> {
    check(x.rows == y.rows && a.cols == x.cols && b.rows == y.cols && b.cols == a.rows && a.rows > 0, || {
        format!("lora: A [{}, {}] and B [{}, {}] do not fit x [{}, {}] -> y [{}, {}]", a.rows, a.cols, b.rows, b.cols, x.rows, x.cols, y.rows, y.cols)
    })
}
