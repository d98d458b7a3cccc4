//! The CPU backend: the reference implementation of every op (f32 throughout, multi-threaded
//! with rayon), and the default where no GPU is present.

pub mod attention;
pub mod backward;
pub mod bf16;
pub mod frozen;
mod gemm;
pub mod isa;
pub mod lora;
pub mod matmul;
pub mod nf4;
pub mod ops;
pub mod q8;
pub mod simd;
pub mod train;

use super::{Backend, HostWeight, LoraRun, StepSpec};
use crate::kv::{BatchLayout, KvLayout};
use crate::types::LoraModule;
use crate::{Error, Result};
use rayon::iter::ParallelExtend;

/// The reference backend: every op in f32 on the CPU (its SIMD kernels at the level `isa::selected` chose), in parallel on rayon's pool.
#[derive(Debug, Default, Clone)]
pub struct CpuBackend;

/// A `[rows, cols]` row-major f32 activation.
#[derive(Debug, Clone)]
pub struct CpuTensor {
    /// `rows * cols` values.
    pub data: Vec<f32>,
    /// Rows (tokens).
    pub rows: usize,
    /// Columns (features).
    pub cols: usize,
}

/// A frozen weight matrix `[rows, cols]` in one of the CPU's formats.
#[derive(Debug)]
pub struct CpuMatrix {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// The values, dense or quantized.
    pub weight: CpuWeight,
}

/// How a `CpuMatrix` is stored.
#[derive(Debug)]
pub enum CpuWeight {
    /// `[rows, cols]` row-major f32.
    Dense(Vec<f32>),
    /// NF4; `linear` dequantizes tiles on the fly, never the whole matrix.
    Nf4(nf4::Nf4Matrix),
    /// bf16 (half of f32's memory), decoded a tile at a time as NF4 is.
    Bf16(bf16::Bf16Matrix),
    /// 8-bit codes with a scale per 32 values (an lm_head option, `--lm-head q8`).
    Q8(q8::Q8Matrix),
}

impl CpuWeight {
    /// Bytes the stored weight takes (NF4: the packed codes plus the f32 block scales).
    pub fn bytes(&self) -> usize {
        match self {
            CpuWeight::Dense(d) => d.len() * 4,
            CpuWeight::Nf4(m) => m.packed.len() + m.absmax.len() * 4,
            CpuWeight::Bf16(m) => m.bytes(),
            CpuWeight::Q8(m) => m.bytes(),
        }
    }
}

/// RoPE's cos/sin tables, one row per position.
#[derive(Debug)]
pub struct CpuRope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    max_pos: usize,
}

/// A forward step on the CPU: the batch layout, ids, logit rows, head layout and LoRA runs.
pub struct CpuStep<'a> {
    batch: BatchLayout,
    ids: Vec<u32>,
    rows: Vec<usize>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    lora: Vec<LoraRun<'a, CpuBackend>>,
}

/// The paged KV cache in host memory: K and V of every layer, f32, block by block.
#[derive(Debug)]
pub struct CpuKv {
    layout: KvLayout,
    /// Per layer: (K, V), each `[num_blocks * block_size, kv_heads * head_dim]`.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::InvalidArgument(msg()))
    }
}

impl CpuBackend {
    /// The CPU backend (stateless: the pool and the ISA level are process-wide).
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type Rope = CpuRope;
    type Kv = CpuKv;
    type Step<'a> = CpuStep<'a>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        on_pool(step)
    }

    fn kv_elem_bytes(&self) -> usize {
        4
    }

    fn matrix_bytes(&self, m: &CpuMatrix) -> usize {
        m.weight.bytes()
    }

    fn upload_matrix(&self, m: impl Into<HostWeight>) -> Result<CpuMatrix> {
        match m.into() {
            HostWeight::Dense(m) => {
                check(m.data.len() == m.rows * m.cols, || format!("{}: data is not [{}, {}]", m.name, m.rows, m.cols))?;
                Ok(CpuMatrix { rows: m.rows, cols: m.cols, weight: CpuWeight::Dense(m.data) })
            }
            HostWeight::Nf4 { name, tensor } => {
                let m = nf4::Nf4Matrix::new(&tensor).map_err(|e| Error::InvalidArgument(format!("{name}: {e}")))?;
                Ok(CpuMatrix { rows: m.rows, cols: m.cols, weight: CpuWeight::Nf4(m) })
            }
            HostWeight::Bf16 { name, rows, cols, data } => {
                check(data.len() == rows * cols, || format!("{name}: data is not [{rows}, {cols}]"))?;
                Ok(CpuMatrix { rows, cols, weight: CpuWeight::Bf16(bf16::Bf16Matrix { rows, cols, data }) })
            }
            HostWeight::Random(spec) => self.upload_matrix(super::random::materialize(&spec)),
        }
    }

    fn upload_head(&self, m: super::HostMatrix, format: crate::types::HeadFormat) -> Result<CpuMatrix> {
        match format {
            crate::types::HeadFormat::Q8 => {
                let q = q8::Q8Matrix::from_f32(&m.data, m.rows, m.cols).map_err(|e| Error::InvalidArgument(format!("{}: {e}", m.name)))?;
                Ok(CpuMatrix { rows: m.rows, cols: m.cols, weight: CpuWeight::Q8(q) })
            }
            _ => super::upload_head_default(self, m, format),
        }
    }

    fn upload_vector(&self, v: &[f32]) -> Result<Vec<f32>> {
        Ok(v.to_vec())
    }

    fn upload_rope(&self, cos: Vec<f32>, sin: Vec<f32>, half_dim: usize) -> Result<CpuRope> {
        check(half_dim > 0 && cos.len() == sin.len() && cos.len().is_multiple_of(half_dim), || "bad rope tables".into())?;
        Ok(CpuRope { max_pos: cos.len() / half_dim, cos, sin })
    }

    fn alloc_kv(&self, layout: KvLayout) -> Result<CpuKv> {
        let n = layout.layer_elems();
        // Refuse a cache this process cannot hold (the allocation would abort it or wake the OOM
        // killer): checked against what it may still allocate (free memory, its address-space
        // limit, its cgroup's limit) before anything is allocated.
        let bytes = layout.bytes_per_block(4).checked_mul(layout.num_blocks);
        super::host_memory::check_fits(&format!("a KV cache of {} blocks (option `kv_cache_bytes`)", layout.num_blocks), bytes)
            .map_err(crate::Error::InvalidArgument)?;
        Ok(CpuKv { layout, layers: (0..layout.num_layers).map(|_| (vec![0.0; n], vec![0.0; n])).collect() })
    }

    fn kv_layout(&self, kv: &CpuKv) -> KvLayout {
        kv.layout
    }

    fn begin_step<'a>(&'a self, spec: &StepSpec<'_, 'a, Self>) -> Result<CpuStep<'a>> {
        let c = spec.config;
        Ok(CpuStep {
            batch: spec.batch.clone(),
            ids: spec.ids.to_vec(),
            rows: spec.logit_rows.to_vec(),
            n_heads: c.num_heads,
            n_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            lora: spec.lora.to_vec(),
        })
    }

    fn tensor_from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CpuTensor> {
        check(data.len() == rows * cols, || format!("{} values are not [{rows}, {cols}]", data.len()))?;
        Ok(CpuTensor { data: data.to_vec(), rows, cols })
    }

    fn to_host(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.data.clone())
    }

    fn dims(&self, t: &CpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn embedding(&self, table: &CpuMatrix, step: &CpuStep<'_>) -> Result<CpuTensor> {
        let ids = &step.ids;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= table.rows) {
            return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocabulary of {}", table.rows)));
        }
        let mut out = zeroed(ids.len() * table.cols);
        let CpuWeight::Dense(data) = &table.weight else {
            return Err(Error::InvalidArgument("embedding: the table must be dense f32, not NF4 or bf16".into()));
        };
        ops::embedding(data, table.cols, ids, &mut out);
        Ok(CpuTensor { data: out, rows: ids.len(), cols: table.cols })
    }

    fn rms_norm(&self, x: &CpuTensor, w: &Vec<f32>, eps: f32) -> Result<CpuTensor> {
        check(w.len() == x.cols, || format!("rms_norm: weight {} vs row {}", w.len(), x.cols))?;
        let mut out = zeroed(x.data.len());
        ops::rms_norm(&x.data, w, eps, &mut out);
        Ok(CpuTensor { data: out, rows: x.rows, cols: x.cols })
    }

    fn linear(&self, x: &CpuTensor, w: &CpuMatrix, bias: Option<&Vec<f32>>) -> Result<CpuTensor> {
        check(x.cols == w.cols, || format!("linear: x has {} columns, weight expects {}", x.cols, w.cols))?;
        let mut out = match &w.weight {
            CpuWeight::Dense(data) => matmul::linear_new(&x.data, x.rows, x.cols, data, w.rows),
            CpuWeight::Nf4(m) => {
                let mut out = zeroed(x.rows * w.rows);
                nf4::linear(&x.data, x.rows, m, &mut out);
                out
            }
            CpuWeight::Bf16(m) => {
                let mut out = zeroed(x.rows * w.rows);
                bf16::linear(&x.data, x.rows, m, &mut out);
                out
            }
            CpuWeight::Q8(m) => {
                let mut out = zeroed(x.rows * w.rows);
                q8::linear(&x.data, x.rows, m, &mut out);
                out
            }
        };
        add_bias(&mut out, w.rows, bias)?;
        Ok(CpuTensor { data: out, rows: x.rows, cols: w.rows })
    }

    /// Decode through NF4 weights (a layer's q, k, v; gate, up) runs as one parallel loop over
    /// all their rows (`gemv::linear_many`); everything else is one `linear` per weight.
    fn linears(&self, x: &CpuTensor, ws: &[(&CpuMatrix, Option<&Vec<f32>>)]) -> Result<Vec<CpuTensor>> {
        let nf4: Option<Vec<&nf4::Nf4Matrix>> = ws
            .iter()
            .map(|(w, _)| match &w.weight {
                CpuWeight::Nf4(m) if m.cols == x.cols && nf4::gemv::supports(m) => Some(m),
                _ => None,
            })
            .collect();
        let Some(ms) = nf4.filter(|ms| ms.len() > 1 && (1..=nf4::gemv::MAX_ROWS).contains(&x.rows)) else {
            return ws.iter().map(|&(w, b)| self.linear(x, w, b)).collect();
        };
        let mut data: Vec<Vec<f32>> = ms.iter().map(|m| zeroed(x.rows * m.rows)).collect();
        let mut outs: Vec<&mut [f32]> = data.iter_mut().map(|d| d.as_mut_slice()).collect();
        nf4::gemv::linear_many(&x.data, x.rows, &ms, &mut outs);
        let mut tensors = Vec::with_capacity(ws.len());
        for (mut d, &(w, bias)) in data.into_iter().zip(ws) {
            add_bias(&mut d, w.rows, bias)?;
            tensors.push(CpuTensor { data: d, rows: x.rows, cols: w.rows });
        }
        Ok(tensors)
    }

    fn rope(&self, q: &mut CpuTensor, k: &mut CpuTensor, step: &CpuStep<'_>, rope: &CpuRope) -> Result<()> {
        let (n_heads, n_kv_heads, head_dim) = (step.n_heads, step.n_kv_heads, step.head_dim);
        let positions = &step.batch.positions;
        for (x, heads) in [(&*q, n_heads), (&*k, n_kv_heads)] {
            check(x.cols == heads * head_dim && positions.len() == x.rows, || "rope: shape".into())?;
        }
        check(head_dim / 2 * rope.max_pos == rope.cos.len(), || "rope: table width differs from head_dim".into())?;
        if let Some(&p) = positions.iter().find(|&&p| p as usize >= rope.max_pos) {
            return Err(Error::InvalidArgument(format!("position {p} is past the RoPE table ({})", rope.max_pos)));
        }
        ops::rope_inplace(&mut q.data, positions, n_heads, head_dim, &rope.cos, &rope.sin);
        ops::rope_inplace(&mut k.data, positions, n_kv_heads, head_dim, &rope.cos, &rope.sin);
        Ok(())
    }

    fn silu_mul(&self, gate: &CpuTensor, up: &CpuTensor) -> Result<CpuTensor> {
        check(gate.rows == up.rows && gate.cols == up.cols, || "silu_mul: shapes differ".into())?;
        let mut out = zeroed(gate.data.len());
        ops::silu_mul(&gate.data, &up.data, &mut out);
        Ok(CpuTensor { data: out, rows: gate.rows, cols: gate.cols })
    }

    fn add_assign(&self, x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
        check(x.rows == y.rows && x.cols == y.cols, || "add: shapes differ".into())?;
        ops::add_assign(&mut x.data, &y.data);
        Ok(())
    }

    fn attention(&self, q: &CpuTensor, k: &CpuTensor, v: &CpuTensor, kv: &mut CpuKv, layer: usize, step: &mut CpuStep<'_>) -> Result<CpuTensor> {
        let batch = &step.batch;
        let l = kv.layout;
        let kv_dim = l.num_kv_heads * l.head_dim;
        let t = batch.n_tokens();
        check(layer < l.num_layers, || format!("layer {layer} of {}", l.num_layers))?;
        check(k.cols == kv_dim && v.cols == kv_dim && k.rows == t && v.rows == t && q.rows == t, || "attention: k/v/q shapes do not match the batch".into())?;
        check(q.cols.is_multiple_of(l.head_dim) && (q.cols / l.head_dim).is_multiple_of(l.num_kv_heads), || {
            "attention: q heads are not a multiple of kv heads".into()
        })?;
        check(batch.block_size == l.block_size, || "attention: block size differs from the cache".into())?;
        let rows = l.num_blocks * l.block_size;
        check(batch.slots.iter().all(|&s| (s as usize) < rows), || "attention: slot outside the cache".into())?;
        for s in &batch.seqs {
            let need = (s.context_len + s.n_new).div_ceil(l.block_size);
            check(s.blocks.len() >= need && s.blocks.iter().all(|&b| (b as usize) < l.num_blocks), || {
                "attention: block table does not cover the context".into()
            })?;
        }
        let (kc, vc) = &mut kv.layers[layer];
        attention::write_kv(&k.data, &v.data, &batch.slots, kv_dim, kc, vc);
        let n_heads = q.cols / l.head_dim;
        let mut out = zeroed(q.data.len());
        attention::paged_attention(&q.data, kc, vc, batch, n_heads, l.num_kv_heads, l.head_dim, &mut out);
        Ok(CpuTensor { data: out, rows: q.rows, cols: q.cols })
    }

    fn gather_logit_rows(&self, x: &CpuTensor, step: &CpuStep<'_>) -> Result<CpuTensor> {
        let rows = &step.rows;
        check(rows.iter().all(|&r| r < x.rows), || "gather_rows: row out of range".into())?;
        let mut data = Vec::with_capacity(rows.len() * x.cols);
        for &r in rows {
            data.extend_from_slice(&x.data[r * x.cols..(r + 1) * x.cols]);
        }
        Ok(CpuTensor { data, rows: rows.len(), cols: x.cols })
    }

    fn lora_apply(&self, y: &mut CpuTensor, x: &CpuTensor, step: &mut CpuStep<'_>, layer: usize, module: LoraModule) -> Result<()> {
        check(x.rows == y.rows, || format!("lora: x has {} rows, y {}", x.rows, y.rows))?;
        let segments: Vec<super::LoraSegment<'_, CpuMatrix>> = step
            .lora
            .iter()
            .filter_map(|r| r.adapter.pair(layer, module).map(|p| super::LoraSegment { start: r.start, len: r.len, a: &p.a, b: &p.b, scale: p.scale }))
            .collect();
        if segments.is_empty() {
            return Ok(());
        }
        let mut refs = Vec::with_capacity(segments.len());
        for s in &segments {
            let (CpuWeight::Dense(a), CpuWeight::Dense(b)) = (&s.a.weight, &s.b.weight) else {
                return Err(Error::InvalidArgument("lora: A and B must be dense matrices, not NF4".into()));
            };
            check(s.a.cols == x.cols && s.b.rows == y.cols && s.b.cols == s.a.rows, || {
                format!("lora: A [{}, {}] and B [{}, {}] do not fit x [_, {}] -> y [_, {}]", s.a.rows, s.a.cols, s.b.rows, s.b.cols, x.cols, y.cols)
            })?;
            refs.push(lora::LoraSegmentRef { start: s.start, len: s.len, a, b, rank: s.a.rows, scale: s.scale });
        }
        lora::lora_apply(&x.data, x.cols, &refs, &mut y.data, y.cols)
    }
}

/// `out [T, cols] += bias [cols]` on every row (nothing without a bias).
fn add_bias(out: &mut [f32], cols: usize, bias: Option<&Vec<f32>>) -> Result<()> {
    if let Some(b) = bias {
        check(b.len() == cols, || format!("linear: bias of {} for {cols} outputs", b.len()))?;
        for row in out.chunks_exact_mut(cols) {
            for (o, &bv) in row.iter_mut().zip(b) {
                *o += bv;
            }
        }
    }
    Ok(())
}

/// Runs `work` on a thread of rayon's global pool and waits for it. Every CPU op is a parallel
/// loop (`par_chunks`, `gemm` with `Parallelism::Rayon`); issued from a thread outside the pool,
/// each one is injected into the pool's queue and the caller sleeps on a latch until it is done,
/// hundreds of hand-offs per training step, and the caller itself runs `gemm`'s first share as a
/// third thread on two cores. Issued from a pool thread, a loop is split in place.
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}

/// `n` zeros; large buffers are cleared by the pool's threads. The heap keeps freed blocks for
/// reuse (`heap::keep_freed_memory`), so calloc clears a reused block with a memset on the
/// calling thread while the pool waits: activations of 1-10 MB each, several per layer.
pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    /// Below this, one thread's memset is shorter than a hand-off.
    const PARALLEL_MIN: usize = 1 << 16;
    if n < PARALLEL_MIN {
        return vec![0.0; n];
    }
    let mut v = Vec::with_capacity(n);
    // An indexed iterator: rayon writes each part straight into the spare capacity.
    v.par_extend(rayon::iter::repeat_n(0.0f32, n));
    v
}
