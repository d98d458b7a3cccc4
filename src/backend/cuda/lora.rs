//! Batched LoRA on the GPU (kernels/lora_sgmv.cu, C ABI csrc/lora_sgmv.h): for segments of
//! consecutive token rows that share an adapter, `y[rows] += scale · (x[rows] · Aᵀ) · Bᵀ`, as a
//! shrink (split-K partial sums of `x · Aᵀ`, f32) then an expand (`· Bᵀ`, scaled, added into y).
//! CPU twin: `backend::cpu::lora` (same segment semantics; rows outside every segment are the base
//! model's and are left alone).
//!
//! Two kernel families compute the same sums in the same order per token:
//! - SGMV (`LoraKernel::Sgmv`): a block per tile of up to `LF_LORA_TILE_TOKENS` tokens of one
//!   segment, so a prefill segment reads each adapter row once per tile;
//! - BGMV (`LoraKernel::Bgmv`): a block per token, found through a per-token segment index
//!   (-1: base token), for decode where every segment is one token.
//!
//! `plan_lora` picks BGMV when every segment is one token and SGMV otherwise (either can be
//! forced, for tests and benches). It is a pure function of the host description and buffer
//! lengths (run and tested on any machine): it checks every argument (the CPU twin's
//! `validate_segment_shapes`, plus what the kernels need: ranks <= `LF_LORA_MAX_RANK`, finite
//! scales, counts within int32 and the grid limits) and returns what the launches use, so a launch
//! cannot use an unchecked value.

use std::marker::PhantomData;

use cudarc::driver::{CudaFunction, CudaSlice, CudaView, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::types::layout::{validate_segment_shapes, LoraSegmentShape};
use crate::Result;

use super::device::CudaDevice;
use super::dtype::{CudaElem, DType};
use super::ffi::{
    LfLoraParams, LfLoraSegment, LfLoraTile, LF_LORA_CHUNK_BYTES, LF_LORA_MAX_RANK, LF_LORA_MIN_CHUNK_BYTES, LF_LORA_TARGET_BLOCKS, LF_LORA_THREADS,
    LF_LORA_TILE_TOKENS,
};
use super::launch::launch_kernel;
use super::validate::{count_i32, invalid, mul};

// SAFETY: a `#[repr(C)]` struct of int32 fields generated from csrc/lora_sgmv.h, no pointers and
// no padding, so its bytes passed by value are exactly the kernel's C struct parameter.
unsafe impl cudarc::driver::DeviceRepr for LfLoraParams {}

/// Largest grid y (chunks of the shrink, output blocks of the expand).
const MAX_GRID_Y: usize = 65535;
/// Bytes of one `LfLoraSegment` in the metadata image (checked against bindgen's layout in tests).
const SEGMENT_BYTES: usize = 32;
/// Bytes of one `LfLoraTile`.
const TILE_BYTES: usize = 8;

/// Which kernel family runs a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraKernel {
    /// Tiles of tokens per segment (prefill).
    Sgmv,
    /// One token per block, per-token segment index (decode).
    Bgmv,
}

impl LoraKernel {
    /// BGMV when every segment is one token (decode), SGMV otherwise. Empty segments (which do
    /// nothing) do not count.
    pub fn for_segment_lens(lens: impl IntoIterator<Item = usize>) -> Self {
        if lens.into_iter().filter(|&l| l > 0).all(|l| l == 1) {
            LoraKernel::Bgmv
        } else {
            LoraKernel::Sgmv
        }
    }
}

/// Shapes of one batched LoRA step: x `[t_rows, d_in]`, y `[t_rows, d_out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraShape {
    /// Rows (tokens) of the step.
    pub t_rows: usize,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
}

/// One segment on the device: rows `start .. start + len` use A `[rank, d_in]` and B
/// `[d_out, rank]` (PEFT's lora_A / lora_B weights, in the storage type T) with `scale`.
#[derive(Debug)]
pub struct CudaLoraSegment<'a, T> {
    /// First row.
    pub start: usize,
    /// Rows.
    pub len: usize,
    /// `[rank, d_in]`.
    pub a: CudaView<'a, T>,
    /// `[d_out, rank]`.
    pub b: CudaView<'a, T>,
    /// The pair's rank.
    pub rank: usize,
    /// The factor the product is multiplied by.
    pub scale: f32,
}

/// What `plan_lora` needs of a segment: its rows, rank, scale, and the element counts and device
/// addresses of A and B.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraSegmentDesc {
    /// First row.
    pub start: usize,
    /// Rows.
    pub len: usize,
    /// The pair's rank.
    pub rank: usize,
    /// The factor the product is multiplied by.
    pub scale: f32,
    /// Elements of A.
    pub a_len: usize,
    /// Elements of B.
    pub b_len: usize,
    /// A's device address.
    pub a_ptr: u64,
    /// B's device address.
    pub b_ptr: u64,
}

/// A checked batched LoRA step: the kernels' parameters, the kernel family and the metadata
/// (csrc/lora_sgmv.h): `segments` (empty segments dropped), and `tiles` (SGMV) or `token_seg`
/// (BGMV, `[t_rows]`, -1 for a base token).
#[derive(Clone, Debug)]
pub struct LoraPlan {
    /// Launch even with no live segment (a plan a CUDA graph replays: see `pad_for_graph`).
    pub always_launch: bool,
    /// The kernels' parameters.
    pub params: LfLoraParams,
    /// SGMV or BGMV.
    pub kernel: LoraKernel,
    /// The live segments.
    pub segments: Vec<LfLoraSegment>,
    /// SGMV: the (segment, row tile) work items.
    pub tiles: Vec<LfLoraTile>,
    /// BGMV: `[t_rows]` each row's segment, -1 for the base.
    pub token_seg: Vec<i32>,
}

impl LoraPlan {
    /// Whether there is nothing to launch (no non-empty segment).
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && !self.always_launch
    }

    /// Makes a BGMV plan's launch parameters independent of the step's adapters, for a CUDA
    /// graph replayed over decode steps with other adapters: `n_segments` segment slots (unused
    /// ones zeroed; the token index never names them), `r_max` the largest rank any step may have,
    /// and a launch even when no token has an adapter (every token index is then -1).
    pub fn pad_for_graph(&mut self, n_segments: usize, r_max: usize) -> Result<()> {
        if self.kernel != LoraKernel::Bgmv {
            return Err(invalid("lora: only BGMV plans replay in a graph"));
        }
        if n_segments < self.segments.len() || r_max < self.params.r_max as usize || r_max > LF_LORA_MAX_RANK as usize {
            return Err(invalid(format!(
                "lora: pad ({n_segments} segments, rank {r_max}) below the step's ({}, {}) or above the kernel's rank limit",
                self.segments.len(),
                self.params.r_max
            )));
        }
        self.segments.resize(n_segments, LfLoraSegment::default());
        self.params.n_segments = count_i32("lora", "padded segments", n_segments)?;
        self.params.r_max = r_max as i32;
        self.always_launch = true;
        Ok(())
    }

    /// Blocks along x: tiles (SGMV) or tokens (BGMV).
    fn grid_x(&self) -> u32 {
        match self.kernel {
            LoraKernel::Sgmv => self.params.n_tiles as u32,
            LoraKernel::Bgmv => self.params.t_rows as u32,
        }
    }

    /// Grid of the shrink: (tiles or tokens, chunks of d_in).
    pub fn shrink_grid(&self) -> (u32, u32, u32) {
        (self.grid_x(), self.params.n_chunks as u32, 1)
    }

    /// Grid of the expand: (tiles or tokens, blocks of LF_LORA_THREADS outputs).
    pub fn expand_grid(&self) -> (u32, u32, u32) {
        (self.grid_x(), (self.params.d_out as u32).div_ceil(LF_LORA_THREADS), 1)
    }

    /// f32 elements of the split-K workspace `part [n_chunks, t_rows, r_max]`.
    pub fn part_len(&self) -> usize {
        let p = &self.params;
        p.n_chunks as usize * p.t_rows as usize * p.r_max as usize
    }

    /// The metadata as one little-endian byte image, uploaded with one copy: the segments
    /// (`LfLoraSegment`, 32 bytes each), then the tiles (SGMV, `LfLoraTile`, 8 bytes each) or
    /// `token_seg` (BGMV, int32). Returns the image and the byte offset of the second array
    /// (a multiple of 8).
    /// Bytes of `metadata_bytes()`, without building it.
    pub fn metadata_len(&self) -> usize {
        self.segments.len() * SEGMENT_BYTES
            + match self.kernel {
                LoraKernel::Sgmv => self.tiles.len() * TILE_BYTES,
                LoraKernel::Bgmv => self.token_seg.len() * 4,
            }
    }

    /// The metadata as one byte buffer (uploaded in one copy) and the offset of each part.
    pub fn metadata_bytes(&self) -> (Vec<u8>, usize) {
        let index_bytes = match self.kernel {
            LoraKernel::Sgmv => self.tiles.len() * TILE_BYTES,
            LoraKernel::Bgmv => self.token_seg.len() * 4,
        };
        let mut out = Vec::with_capacity(self.segments.len() * SEGMENT_BYTES + index_bytes);
        for s in &self.segments {
            out.extend_from_slice(&s.a.to_le_bytes());
            out.extend_from_slice(&s.b.to_le_bytes());
            out.extend_from_slice(&s.start.to_le_bytes());
            out.extend_from_slice(&s.len.to_le_bytes());
            out.extend_from_slice(&s.rank.to_le_bytes());
            out.extend_from_slice(&s.scale.to_le_bytes());
        }
        let offset = out.len();
        match self.kernel {
            LoraKernel::Sgmv => {
                for t in &self.tiles {
                    out.extend_from_slice(&t.segment.to_le_bytes());
                    out.extend_from_slice(&t.token0.to_le_bytes());
                }
            }
            LoraKernel::Bgmv => {
                for s in &self.token_seg {
                    out.extend_from_slice(&s.to_le_bytes());
                }
            }
        }
        (out, offset)
    }
}

/// Checks a batched LoRA step and builds its metadata. `dtype`: storage type of x, y, A and B;
/// `x_len`, `y_len`: elements of x and y; `kernel`: the family to use, or `None` to pick
/// (BGMV when every segment is one token).
pub fn plan_lora(dtype: DType, shape: LoraShape, x_len: usize, y_len: usize, segs: &[LoraSegmentDesc], kernel: Option<LoraKernel>) -> Result<LoraPlan> {
    const OP: &str = "lora";
    let LoraShape { t_rows, d_in, d_out } = shape;
    let t = count_i32(OP, "t_rows", t_rows)?;
    let di = count_i32(OP, "d_in", d_in)?;
    let dout = count_i32(OP, "d_out", d_out)?;
    for (name, len, width, dim) in [("x", x_len, d_in, "d_in"), ("y", y_len, d_out, "d_out")] {
        let want = mul(OP, &format!("t_rows * {dim}"), t_rows, width)?;
        if len != want {
            return Err(invalid(format!("{OP}: `{name}` has {len} elements; its shape [{t_rows}, {width}] needs {want}")));
        }
    }
    let shapes = segs.iter().map(|s| LoraSegmentShape { start: s.start, len: s.len, rank: s.rank, a_len: s.a_len, b_len: s.b_len });
    validate_segment_shapes(shapes, t_rows, d_in, d_out, LF_LORA_MAX_RANK as usize)?;
    for (i, s) in segs.iter().enumerate() {
        if !s.scale.is_finite() {
            return Err(invalid(format!("{OP}: segment {i}: scale {} is not finite", s.scale)));
        }
        if s.a_ptr == 0 || s.b_ptr == 0 {
            return Err(invalid(format!("{OP}: segment {i}: A or B has a null device address")));
        }
    }
    let live: Vec<&LoraSegmentDesc> = segs.iter().filter(|s| s.len > 0).collect();
    let n_segments = count_i32(OP, "number of segments", live.len().max(1))?;
    let r_max = live.iter().map(|s| s.rank).max().unwrap_or(1);
    let out_blocks = d_out.div_ceil(LF_LORA_THREADS as usize);
    if out_blocks > MAX_GRID_Y {
        return Err(invalid(format!("{OP}: d_out = {d_out} needs {out_blocks} blocks; the grid allows {MAX_GRID_Y}")));
    }
    let kernel = kernel.unwrap_or_else(|| LoraKernel::for_segment_lens(live.iter().map(|s| s.len)));

    // Every value below fits int32: t_rows does, and segments lie inside the batch.
    let segments: Vec<LfLoraSegment> =
        live.iter().map(|s| LfLoraSegment { a: s.a_ptr, b: s.b_ptr, start: s.start as i32, len: s.len as i32, rank: s.rank as i32, scale: s.scale }).collect();
    let (mut tiles, mut token_seg) = (Vec::new(), Vec::new());
    match kernel {
        LoraKernel::Sgmv => {
            let tile = LF_LORA_TILE_TOKENS as usize;
            for (i, s) in live.iter().enumerate() {
                for token0 in (s.start..s.start + s.len).step_by(tile) {
                    tiles.push(LfLoraTile { segment: i as i32, token0: token0 as i32 });
                }
            }
        }
        LoraKernel::Bgmv => {
            token_seg = vec![-1i32; t_rows];
            for (i, s) in live.iter().enumerate() {
                token_seg[s.start..s.start + s.len].fill(i as i32);
            }
        }
    }
    let n_tiles = count_i32(OP, "number of tiles", tiles.len().max(1))?;
    let grid_x = match kernel {
        LoraKernel::Sgmv => tiles.len(),
        LoraKernel::Bgmv => t_rows,
    };
    let chunk = shrink_chunk(dtype, d_in, grid_x);
    let n_chunks = d_in.div_ceil(chunk);
    if n_chunks > MAX_GRID_Y {
        return Err(invalid(format!("{OP}: d_in = {d_in} needs {n_chunks} chunks; the grid allows {MAX_GRID_Y}")));
    }
    let part = mul(OP, "n_chunks * t_rows", n_chunks, t_rows)?;
    mul(OP, "n_chunks * t_rows * r_max", part, r_max)?;
    let params = LfLoraParams {
        t_rows: t,
        d_in: di,
        d_out: dout,
        r_max: r_max as i32,
        n_segments: if live.is_empty() { 0 } else { n_segments },
        n_tiles: if tiles.is_empty() { 0 } else { n_tiles },
        chunk: chunk as i32,
        n_chunks: n_chunks as i32,
    };
    Ok(LoraPlan { always_launch: false, params, kernel, segments, tiles, token_seg })
}

/// Elements of d_in per shrink chunk (split-K) when the shrink has `grid_x` tiles or tokens: the
/// largest chunk (`LF_LORA_CHUNK_BYTES`, fewest partial sums to add up in the expand) unless that
/// leaves fewer than `LF_LORA_TARGET_BLOCKS` blocks, then smaller, down to
/// `LF_LORA_MIN_CHUNK_BYTES` (one 16-byte vector per lane). Always a multiple of the smallest,
/// so every chunk is whole vectors for all 32 lanes (the kernels check it).
pub fn shrink_chunk(dtype: DType, d_in: usize, grid_x: usize) -> usize {
    let (min, max) = (LF_LORA_MIN_CHUNK_BYTES as usize / dtype.size(), LF_LORA_CHUNK_BYTES as usize / dtype.size());
    let want_chunks = (LF_LORA_TARGET_BLOCKS as usize).div_ceil(grid_x.max(1));
    d_in.div_ceil(want_chunks).next_multiple_of(min).clamp(min, max)
}

/// The four kernels of `kernels/lora_sgmv.cu` for one storage type.
struct LoraFns {
    sgmv_shrink: CudaFunction,
    sgmv_expand: CudaFunction,
    bgmv_shrink: CudaFunction,
    bgmv_expand: CudaFunction,
}

/// The batched-LoRA module loaded on a `CudaDevice` device.
pub struct CudaLora {
    f32: LoraFns,
    bf16: LoraFns,
}

/// A batched LoRA step ready to run on the device: its checked plan, the metadata uploaded, and
/// the split-K workspace. Borrows the segments (and so the adapters' weights) for as long as it
/// lives: the metadata holds their device addresses.
pub struct PreparedLora<'a, T: CudaElem> {
    plan: LoraPlan,
    segs: &'a [CudaLoraSegment<'a, T>],
    /// `plan.metadata_bytes()` on the device, and the offset of the tiles / token_seg array.
    meta: Option<(CudaSlice<u8>, usize)>,
    /// `[n_chunks, t_rows, r_max]` f32, written by `shrink`, read by `expand`.
    part: Option<CudaSlice<f32>>,
    /// Whether `shrink` has been enqueued, so `part` holds what `expand` reads.
    shrunk: bool,
    _t: PhantomData<T>,
}

impl<T: CudaElem> PreparedLora<'_, T> {
    /// The plan the last launch used.
    pub fn plan(&self) -> &LoraPlan {
        &self.plan
    }
}

impl CudaLora {
    /// Loads the SGMV / BGMV kernels on the device.
    pub fn new(ops: &CudaDevice) -> Result<Self> {
        let module = ops.load_embedded("lora_sgmv", "batched LoRA")?;
        let get = |name: String| module.function(&name);
        let fns = |d: DType| -> Result<LoraFns> {
            let s = d.suffix();
            Ok(LoraFns {
                sgmv_shrink: get(format!("lf_lora_sgmv_shrink_{s}"))?,
                sgmv_expand: get(format!("lf_lora_sgmv_expand_{s}"))?,
                bgmv_shrink: get(format!("lf_lora_bgmv_shrink_{s}"))?,
                bgmv_expand: get(format!("lf_lora_bgmv_expand_{s}"))?,
            })
        };
        Ok(CudaLora { f32: fns(DType::F32)?, bf16: fns(DType::Bf16)? })
    }

    fn fns(&self, d: DType) -> &LoraFns {
        match d {
            DType::F32 => &self.f32,
            DType::Bf16 => &self.bf16,
        }
    }

    /// Checks a step over `segs` (in row order, disjoint, inside the batch), uploads its metadata
    /// and allocates its workspace. `kernel`: `None` picks BGMV when every segment is one token.
    pub fn prepare<'a, T: CudaElem>(
        &self,
        ops: &CudaDevice,
        shape: LoraShape,
        segs: &'a [CudaLoraSegment<'a, T>],
        kernel: Option<LoraKernel>,
    ) -> Result<PreparedLora<'a, T>> {
        const OP: &str = "lora";
        let mut descs = Vec::with_capacity(segs.len());
        for (i, s) in segs.iter().enumerate() {
            ops.check_context(OP, &format!("A of segment {i}"), &s.a)?;
            ops.check_context(OP, &format!("B of segment {i}"), &s.b)?;
            // The addresses stay valid while `segs` is borrowed ('a); every launch takes the
            // views' guards again, so stream ordering is tracked at launch time.
            let (a_ptr, _a) = s.a.device_ptr(&ops.stream);
            let (b_ptr, _b) = s.b.device_ptr(&ops.stream);
            descs.push(LoraSegmentDesc { start: s.start, len: s.len, rank: s.rank, scale: s.scale, a_len: s.a.len(), b_len: s.b.len(), a_ptr, b_ptr });
        }
        // x and y are checked against the shape when they are passed (shrink, expand).
        let (t, di, dout) = (shape.t_rows, shape.d_in, shape.d_out);
        let plan = plan_lora(T::DTYPE, shape, t.saturating_mul(di), t.saturating_mul(dout), &descs, kernel)?;
        if plan.is_empty() {
            return Ok(PreparedLora { plan, segs, meta: None, part: None, shrunk: false, _t: PhantomData });
        }
        let (bytes, offset) = plan.metadata_bytes();
        let meta = ops.upload(&bytes)?;
        let part = ops.alloc_for_output::<f32>(plan.part_len())?;
        Ok(PreparedLora { plan, segs, meta: Some((meta, offset)), part: Some(part), shrunk: false, _t: PhantomData })
    }

    /// The shrink of a prepared step: `v = x · Aᵀ` per segment, as split-K partial sums in the
    /// step's workspace. x: `[t_rows, d_in]`.
    pub fn shrink<T: CudaElem>(&self, ops: &CudaDevice, x: &impl DevicePtr<T>, prep: &mut PreparedLora<'_, T>) -> Result<()> {
        const OP: &str = "lora shrink";
        let p = prep.plan.params;
        let want = p.t_rows as usize * p.d_in as usize;
        if x.len() != want {
            return Err(invalid(format!("{OP}: `x` has {} elements; its shape [{}, {}] needs {want}", x.len(), p.t_rows, p.d_in)));
        }
        ops.check_context(OP, "x", x)?;
        let (Some((meta, offset)), Some(part)) = (&prep.meta, &mut prep.part) else {
            return Ok(()); // no segment: nothing to do
        };
        let stream = &ops.stream;
        let fns = self.fns(T::DTYPE);
        let f = match prep.plan.kernel {
            LoraKernel::Sgmv => &fns.sgmv_shrink,
            LoraKernel::Bgmv => &fns.bgmv_shrink,
        };
        let (xp, _x) = x.device_ptr(stream);
        let (mp, _m) = meta.device_ptr(stream);
        let ip = mp + *offset as u64;
        let (pp, _p) = part.device_ptr_mut(stream);
        let _weights: Vec<_> = prep.segs.iter().map(|s| s.a.device_ptr(stream).1).collect();
        let cfg = LaunchConfig { grid_dim: prep.plan.shrink_grid(), block_dim: (LF_LORA_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: lf_lora_{sgmv,bgmv}_shrink_<T>(const T* x, const LfLoraSegment* segs,
        // const LfLoraTile* tiles | const int32_t* token_seg, float* part, LfLoraParams).
        // x holds t_rows * d_in elements of T (checked above) on this context; the metadata image
        // (uploaded in `prepare`, stream-ordered before this launch) holds n_segments segments
        // then n_tiles tiles or t_rows token indices, every segment inside the batch with a rank
        // <= r_max <= LF_LORA_MAX_RANK and A the address of a [rank, d_in] buffer of T that `segs`
        // keeps alive (plan_lora checked the lengths of the views, whose guards are held above);
        // part holds n_chunks * t_rows * r_max f32 and is owned by `prep`, borrowed mutably here.
        unsafe { launch_kernel(stream, f, "lf_lora shrink", cfg, &[&xp, &mp, &ip, &pp, &p]) }?;
        prep.shrunk = true;
        Ok(())
    }

    /// The expand of a prepared step whose shrink was enqueued: `y += scale · v · Bᵀ` per segment.
    /// y: `[t_rows, d_out]`.
    pub fn expand<T: CudaElem>(&self, ops: &CudaDevice, y: &mut impl DevicePtrMut<T>, prep: &PreparedLora<'_, T>) -> Result<()> {
        const OP: &str = "lora expand";
        let p = prep.plan.params;
        let want = p.t_rows as usize * p.d_out as usize;
        if y.len() != want {
            return Err(invalid(format!("{OP}: `y` has {} elements; its shape [{}, {}] needs {want}", y.len(), p.t_rows, p.d_out)));
        }
        ops.check_context(OP, "y", y)?;
        let (Some((meta, offset)), Some(part)) = (&prep.meta, &prep.part) else {
            return Ok(());
        };
        if !prep.shrunk {
            return Err(invalid(format!("{OP}: the step's shrink has not run; its workspace holds nothing yet")));
        }
        let stream = &ops.stream;
        let fns = self.fns(T::DTYPE);
        let f = match prep.plan.kernel {
            LoraKernel::Sgmv => &fns.sgmv_expand,
            LoraKernel::Bgmv => &fns.bgmv_expand,
        };
        let (yp, _y) = y.device_ptr_mut(stream);
        let (pp, _p) = part.device_ptr(stream);
        let (mp, _m) = meta.device_ptr(stream);
        let ip = mp + *offset as u64;
        let _weights: Vec<_> = prep.segs.iter().map(|s| s.b.device_ptr(stream).1).collect();
        let cfg = LaunchConfig { grid_dim: prep.plan.expand_grid(), block_dim: (LF_LORA_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: lf_lora_{sgmv,bgmv}_expand_<T>(T* y, const float* part, const LfLoraSegment* segs,
        // const LfLoraTile* tiles | const int32_t* token_seg, LfLoraParams). y holds t_rows * d_out
        // elements of T (checked above) on this context, borrowed mutably so it aliases nothing
        // else here; part was filled by this step's shrink (enqueued before, same stream) for
        // exactly the (chunk, token, k < rank) entries this kernel reads; the metadata is as in
        // `shrink`, with B the address of a [d_out, rank] buffer of T kept alive by `segs`.
        unsafe { launch_kernel(stream, f, "lf_lora expand", cfg, &[&yp, &pp, &mp, &ip, &p]) }?;
        Ok(())
    }

    /// Shrink then expand of a plan whose metadata is already on the device (a forward step's)
    /// with a caller-owned split-K workspace: `y[rows] += scale · (x[rows] · Aᵀ) · Bᵀ`.
    ///
    /// # Safety
    /// `plan` must come from `plan_lora` for this dtype, x `[t_rows, d_in]` and y `[t_rows,
    /// d_out]`; `meta` must hold `plan.metadata_bytes()` (the index array at `index_offset`
    /// bytes); every segment's A and B addresses must stay allocated until both launches have
    /// run; `part` must hold at least `plan.part_len()` f32.
    pub unsafe fn apply_planned<T: CudaElem>(
        &self,
        ops: &CudaDevice,
        y: &mut impl DevicePtrMut<T>,
        x: &impl DevicePtr<T>,
        plan: &LoraPlan,
        meta: &impl DevicePtr<u8>,
        index_offset: usize,
        part: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const OP: &str = "lora";
        if plan.is_empty() {
            return Ok(());
        }
        let p = plan.params;
        if x.len() != p.t_rows as usize * p.d_in as usize || y.len() != p.t_rows as usize * p.d_out as usize {
            return Err(invalid(format!("{OP}: x and y must be [{}, {}] and [{}, {}] as planned", p.t_rows, p.d_in, p.t_rows, p.d_out)));
        }
        let (bytes, offset) = (plan.metadata_len(), index_offset);
        if meta.len() < bytes || part.len() < plan.part_len() {
            return Err(invalid(format!("{OP}: the device metadata or workspace is shorter than the plan")));
        }
        ops.check_context(OP, "x", x)?;
        ops.check_context(OP, "y", y)?;
        ops.check_context(OP, "metadata", meta)?;
        let stream = &ops.stream;
        let fns = self.fns(T::DTYPE);
        let (shrink, expand) = match plan.kernel {
            LoraKernel::Sgmv => (&fns.sgmv_shrink, &fns.sgmv_expand),
            LoraKernel::Bgmv => (&fns.bgmv_shrink, &fns.bgmv_expand),
        };
        let (xp, _x) = x.device_ptr(stream);
        let (mp, _m) = meta.device_ptr(stream);
        let ip = mp + offset as u64;
        let (pp, _p) = part.device_ptr_mut(stream);
        let cfg = LaunchConfig { grid_dim: plan.shrink_grid(), block_dim: (LF_LORA_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: as `shrink`: x holds t_rows * d_in elements (checked above); by this
        // function's contract the metadata holds the plan's segments and index array and every A
        // is alive; part holds n_chunks * t_rows * r_max f32 (checked above), borrowed mutably.
        unsafe { launch_kernel(stream, shrink, "lf_lora shrink", cfg, &[&xp, &mp, &ip, &pp, &p]) }?;
        let (yp, _y) = y.device_ptr_mut(stream);
        let cfg = LaunchConfig { grid_dim: plan.expand_grid(), block_dim: (LF_LORA_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: as `expand`: y holds t_rows * d_out elements (checked above), a mutable borrow;
        // part was filled by the shrink just enqueued on the same stream; every B is alive.
        unsafe { launch_kernel(stream, expand, "lf_lora expand", cfg, &[&yp, &pp, &mp, &ip, &p]) }?;
        Ok(())
    }

    /// The whole step: `y[rows] += scale · (x[rows] · Aᵀ) · Bᵀ` for each segment (as
    /// `cpu::lora::lora_apply`). x `[t_rows, d_in]`, y `[t_rows, d_out]`.
    pub fn apply<T: CudaElem>(
        &self,
        ops: &CudaDevice,
        y: &mut impl DevicePtrMut<T>,
        x: &impl DevicePtr<T>,
        shape: LoraShape,
        segs: &[CudaLoraSegment<'_, T>],
        kernel: Option<LoraKernel>,
    ) -> Result<()> {
        let mut prep = self.prepare(ops, shape, segs, kernel)?;
        self.shrink(ops, x, &mut prep)?;
        self.expand(ops, y, &prep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_layout_matches_the_c_structs() {
        assert_eq!(std::mem::size_of::<LfLoraSegment>(), SEGMENT_BYTES);
        assert_eq!(std::mem::offset_of!(LfLoraSegment, a), 0);
        assert_eq!(std::mem::offset_of!(LfLoraSegment, b), 8);
        assert_eq!(std::mem::offset_of!(LfLoraSegment, start), 16);
        assert_eq!(std::mem::offset_of!(LfLoraSegment, len), 20);
        assert_eq!(std::mem::offset_of!(LfLoraSegment, rank), 24);
        assert_eq!(std::mem::offset_of!(LfLoraSegment, scale), 28);
        assert_eq!(std::mem::size_of::<LfLoraTile>(), TILE_BYTES);
        assert_eq!(std::mem::offset_of!(LfLoraTile, token0), 4);
        // Every chunk is whole 16-byte vectors for all 32 lanes, within the kernels' buffer.
        for d in [DType::F32, DType::Bf16] {
            for d_in in [1, 77, 100, 576, 4096, 14336, 1 << 20] {
                for grid_x in [0, 1, 5, 64, 300, 100_000] {
                    let c = shrink_chunk(d, d_in, grid_x);
                    assert_eq!(c % (32 * d.vec_elems()), 0, "{d:?} {d_in} {grid_x}");
                    assert!(c * d.size() <= LF_LORA_CHUNK_BYTES as usize);
                }
            }
        }
    }
}
