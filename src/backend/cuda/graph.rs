//! CUDA graphs for decode steps: a decode step's whole forward (every kernel of every layer) is
//! captured once per shape and replayed thereafter with one launch, the step's metadata read
//! from the step buffers `begin_step` refills before each replay.
//!
//! A shape (`GraphKey`) is what the launches' parameters and grids depend on: the number of
//! decode rows, the attention pad (table width and partition count, in powers of two of the
//! longest context, so a graph serves until a context doubles), and which (layer, projection)
//! pairs run LoRA (BGMV padded to one segment per row at the kernels' largest rank, so the
//! adapters in use may change from step to step). The step buffers must not have moved since
//! the capture (`StepArena::generation`).
//!
//! A shape is first run eagerly with the graph's private activation pool (which warms it: the
//! capture then allocates nothing, which capture forbids), captured the second time, and replayed
//! from then on. The private pool stays the graph's: the buffers its kernels write are never
//! handed to another tensor, and the logits it writes stay checked out as its output.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use crate::{Error, Result};

use super::context::CudaContext;
use super::pool::{BufPool, SharedPool};
use super::step::{CudaStep, GraphKey, GraphPhase};
use super::values::CudaTensor;

/// A captured graph. cudarc's `CudaGraph` is not `Send` because CUDA graph objects are not
/// internally synchronized: calls on one graph must be serialized.
struct SendGraph(CudaGraph);

// SAFETY: every use of a `SendGraph` (launch, drop) happens with the `Graphs` table's mutex held
// (it lives only inside that table), so calls on the graph are serialized across threads, which
// is all the driver asks of graph objects; the graph's stream is cudarc's `Arc<CudaStream>`, which
// is `Send + Sync`.
unsafe impl Send for SendGraph {}

struct Entry {
    pool: SharedPool,
    /// Shapes seen once (warm) have no graph yet.
    graph: Option<SendGraph>,
    /// The logits buffer the graph writes (kept checked out of its pool).
    output: Option<CudaTensor>,
    generation: u64,
}

/// The backend's graphs, by shape.
#[derive(Default)]
pub(crate) struct Graphs {
    entries: HashMap<GraphKey, Entry>,
    /// Graph replays so far (for tests and stats).
    pub(crate) replays: u64,
    pub(crate) captures: u64,
}

/// Replays the graph of this step's shape, if one was captured against the current step
/// buffers: returns the logits `[rows, vocab]` (a copy out of the graph's output buffer).
pub(crate) fn replay(cx: &CudaContext, graphs: &Mutex<Graphs>, step: &mut CudaStep<'_>) -> Result<Option<CudaTensor>> {
    let Some(key) = step.graph_key.clone() else { return Ok(None) };
    let mut g = graphs.lock().map_err(|_| Error::Cuda("the graph table's lock is poisoned".into()))?;
    let generation = step.generation();
    let stale = g.entries.get(&key).is_some_and(|e| e.generation != generation);
    if stale {
        // The step buffers moved: the captured addresses are dead.
        g.entries.remove(&key);
    }
    match g.entries.get(&key) {
        Some(Entry { graph: Some(SendGraph(graph)), output: Some(out), .. }) => {
            graph.launch().map_err(super::device::cuda_err("launching a decode graph"))?;
            let copy = cx.copy_tensor(out)?;
            g.replays += 1;
            step.graph_phase = GraphPhase::Eager;
            Ok(Some(copy))
        }
        Some(_) => {
            step.graph_phase = GraphPhase::Capture;
            Ok(None)
        }
        None => {
            step.graph_phase = GraphPhase::WarmUp;
            Ok(None)
        }
    }
}

/// Before the forward's first op: switches to the shape's private pool, and starts capturing
/// when this is the capture run.
pub(crate) fn begin(cx: &CudaContext, graphs: &Mutex<Graphs>, step: &mut CudaStep<'_>) -> Result<()> {
    if step.graph_phase == GraphPhase::Eager {
        return Ok(());
    }
    let key = step.graph_key.clone().ok_or_else(|| Error::Cuda("a graph phase without a key".into()))?;
    let pool = {
        let mut g = graphs.lock().map_err(|_| Error::Cuda("the graph table's lock is poisoned".into()))?;
        let generation = step.generation();
        g.entries.entry(key).or_insert_with(|| Entry { pool: Arc::new(Mutex::new(BufPool::default())), graph: None, output: None, generation }).pool.clone()
    };
    step.saved_pool = Some(cx.swap_pool(pool)?);
    if step.graph_phase == GraphPhase::Capture {
        cx.device()
            .stream()
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(super::device::cuda_err("beginning a decode graph capture"))?;
    }
    Ok(())
}

/// After the forward: restores the pool; after a capture, instantiates and stores the graph,
/// replays it once (the capture computed nothing) and returns a copy of its logits.
pub(crate) fn end(cx: &CudaContext, graphs: &Mutex<Graphs>, step: &mut CudaStep<'_>, out: CudaTensor) -> Result<CudaTensor> {
    let Some(saved) = step.saved_pool.take() else { return Ok(out) };
    let phase = std::mem::replace(&mut step.graph_phase, GraphPhase::Eager);
    let ended = if phase == GraphPhase::Capture { Some(cx.device().stream().end_capture(CUgraphInstantiate_flags(0))) } else { None };
    cx.swap_pool(saved)?;
    let Some(ended) = ended else { return Ok(out) };
    let graph = ended
        .map_err(super::device::cuda_err("ending a decode graph capture"))?
        .ok_or_else(|| Error::Cuda("the decode graph capture recorded nothing".into()))?;
    graph.launch().map_err(super::device::cuda_err("launching a new decode graph"))?;
    let copy = cx.copy_tensor(&out)?;
    let key = step.graph_key.clone().ok_or_else(|| Error::Cuda("a capture without a key".into()))?;
    let mut g = graphs.lock().map_err(|_| Error::Cuda("the graph table's lock is poisoned".into()))?;
    if let Some(e) = g.entries.get_mut(&key) {
        e.graph = Some(SendGraph(graph));
        e.output = Some(out);
        e.generation = step.generation();
    }
    g.captures += 1;
    Ok(copy)
}

/// (captures, replays) so far.
pub(crate) fn stats(graphs: &Mutex<Graphs>) -> (u64, u64) {
    graphs.lock().map(|g| (g.captures, g.replays)).unwrap_or((0, 0))
}
