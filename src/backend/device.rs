//! `--device auto|cpu|cuda[:N]`: which backend a command runs on, chosen once at start-up and
//! said on stderr. `auto` takes CUDA device 0 when one is available (a real GPU; the CPU
//! emulator only when `LORAFLEET_CUDA_EMU=1` asks for it) and the CPU otherwise, saying why.

use std::fmt;
use std::str::FromStr;

use super::cpu::CpuBackend;
use super::cuda::{check_available, CudaBackend, DType};
use crate::{Error, Result};

/// Where a command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 if available, else the CPU.
    #[default]
    Auto,
    /// The CPU backend.
    Cpu,
    /// CUDA device N (an error if it is not available).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!("{s:?}: expected auto, cpu, cuda or cuda:N")),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Activation dtype of a CUDA backend (`--act-dtype`); the CPU computes in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ActDtype {
    /// 32-bit float activations.
    #[default]
    F32,
    /// bfloat16 activations (f32 accumulation).
    Bf16,
}

impl FromStr for ActDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(ActDtype::F32),
            "bf16" => Ok(ActDtype::Bf16),
            _ => Err(format!("{s:?}: expected f32 or bf16")),
        }
    }
}

impl ActDtype {
    fn dtype(self) -> DType {
        match self {
            ActDtype::F32 => DType::F32,
            ActDtype::Bf16 => DType::Bf16,
        }
    }
}

/// The backend a command opened.
pub enum OpenedBackend {
    /// The CPU backend.
    Cpu(CpuBackend),
    /// A CUDA device.
    Cuda(CudaBackend),
}

/// Opens the backend `choice` names; `note` says what was chosen and, for `auto` on the CPU, why.
/// `cuda_graphs`: decode steps replay as CUDA graphs (`--no-cuda-graphs` turns it off).
pub fn open_backend(choice: DeviceChoice, act: ActDtype, cuda_graphs: bool) -> Result<(OpenedBackend, String)> {
    let cuda = |n: usize| -> Result<(OpenedBackend, String)> {
        let be = CudaBackend::new(n, act.dtype())?;
        be.set_graphs(cuda_graphs);
        let note = format!(
            "device: cuda:{n} ({}), {} activations, CUDA graphs {}",
            be.device().device_name(),
            act.dtype().suffix(),
            if cuda_graphs { "on" } else { "off" }
        );
        Ok((OpenedBackend::Cuda(be), note))
    };
    let cpu = |why: Option<String>| -> Result<(OpenedBackend, String)> {
        if act == ActDtype::Bf16 && why.is_none() {
            return Err(Error::InvalidArgument("option `act_dtype` bf16 needs a CUDA device; the CPU backend computes in f32".into()));
        }
        // A LORAFLEET_CPU_ISA the CPU cannot run stops here, before any work.
        let level = super::cpu::isa::selected()?;
        let mut note = format!("device: cpu, {} kernels", level.isa());
        if let Some(why) = why {
            note.push_str(&format!(" (no CUDA device: {why})"));
            if act == ActDtype::Bf16 {
                note.push_str("; activations in f32 on the CPU");
            }
        }
        Ok((OpenedBackend::Cpu(CpuBackend::new()), note))
    };
    match choice {
        DeviceChoice::Cpu => cpu(None),
        DeviceChoice::Cuda(n) => {
            check_available(n).map_err(|why| Error::Cuda(format!("device cuda:{n} (option `device`): {why}")))?;
            cuda(n)
        }
        DeviceChoice::Auto => match check_available(0) {
            Ok(()) => cuda(0),
            Err(why) => cpu(Some(why.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choice_parses() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("cuda:x".parse::<DeviceChoice>().unwrap_err().contains("cuda:N"));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        assert_eq!("bf16".parse(), Ok(ActDtype::Bf16));
        assert!("fp16".parse::<ActDtype>().is_err());
    }

    #[test]
    fn cpu_with_bf16_activations_is_refused() {
        let e = open_backend(DeviceChoice::Cpu, ActDtype::Bf16, true).err().expect("refused");
        assert!(e.to_string().contains("needs a CUDA device"), "{e}");
        let (be, note) = open_backend(DeviceChoice::Cpu, ActDtype::F32, true).unwrap();
        assert!(matches!(be, OpenedBackend::Cpu(_)));
        assert_eq!(note, format!("device: cpu, {} kernels", crate::backend::cpu::isa::current().isa()));
    }
}
