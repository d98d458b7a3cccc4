//! The training kernels' handles (kernels/train_ops.cu and the backward modules), loaded once
//! per backend by the first training batch (`backend::cuda::train`).

use cudarc::driver::CudaFunction;

use crate::Result;

use super::attention_train::CudaAttentionTrain;
use super::cross_entropy::CudaCrossEntropy;
use super::device::CudaDevice;
use super::lora_backward::CudaLoraBackward;
use super::ops_backward::CudaOpsBackward;

/// The training kernels, loaded once per backend by the first training batch.
pub struct TrainKernels {
    pub(crate) gemm: CudaFunction,
    pub(crate) nf4_dequant: CudaFunction,
    pub(crate) mul: CudaFunction,
    pub(crate) scatter_rows: CudaFunction,
    pub(crate) adamw: CudaFunction,
    pub(crate) sum_squares: CudaFunction,
    pub(crate) ops: CudaOpsBackward,
    pub(crate) lora: CudaLoraBackward,
    pub(crate) attention: CudaAttentionTrain,
    pub(crate) cross_entropy: CudaCrossEntropy,
}

impl TrainKernels {
    pub(crate) fn new(dev: &CudaDevice) -> Result<Self> {
        let m = dev.load_embedded("train_ops", "training")?;
        Ok(TrainKernels {
            gemm: m.function("lf_train_gemm_f32")?,
            nf4_dequant: m.function("lf_train_nf4_dequant_f32")?,
            mul: m.function("lf_train_mul_f32")?,
            scatter_rows: m.function("lf_train_scatter_rows_f32")?,
            adamw: m.function("lf_train_adamw_f32")?,
            sum_squares: m.function("lf_train_sum_squares_f32")?,
            ops: CudaOpsBackward::new(dev)?,
            lora: CudaLoraBackward::new(dev)?,
            attention: CudaAttentionTrain::new(dev)?,
            cross_entropy: CudaCrossEntropy::new(dev)?,
        })
    }
}
