//! The LoRA-targetable projections of a Llama decoder layer: names, order and shapes.

use super::ModelConfig;

/// The seven linear projections of a Llama decoder layer, in a fixed order (the index into
/// `LayerLora`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraModule {
    /// q_proj.
    Q,
    /// k_proj.
    K,
    /// v_proj.
    V,
    /// o_proj.
    O,
    /// gate_proj.
    Gate,
    /// up_proj.
    Up,
    /// down_proj.
    Down,
}

impl LoraModule {
    /// Every module, in layer order.
    pub const ALL: [LoraModule; 7] = [LoraModule::Q, LoraModule::K, LoraModule::V, LoraModule::O, LoraModule::Gate, LoraModule::Up, LoraModule::Down];

    /// The module's name in HF / peft (`q_proj`, ...).
    pub fn name(self) -> &'static str {
        match self {
            LoraModule::Q => "q_proj",
            LoraModule::K => "k_proj",
            LoraModule::V => "v_proj",
            LoraModule::O => "o_proj",
            LoraModule::Gate => "gate_proj",
            LoraModule::Up => "up_proj",
            LoraModule::Down => "down_proj",
        }
    }

    /// `self_attn` or `mlp`: the parent in the HF module path.
    pub fn parent(self) -> &'static str {
        match self {
            LoraModule::Q | LoraModule::K | LoraModule::V | LoraModule::O => "self_attn",
            _ => "mlp",
        }
    }

    /// Its index in `LayerLora` (0..7).
    pub fn index(self) -> usize {
        self as usize
    }

    /// `(out, in)` features of this projection in the model.
    pub fn dims(self, c: &ModelConfig) -> (usize, usize) {
        let (h, qd, kvd, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        match self {
            LoraModule::Q => (qd, h),
            LoraModule::K | LoraModule::V => (kvd, h),
            LoraModule::O => (h, qd),
            LoraModule::Gate | LoraModule::Up => (ff, h),
            LoraModule::Down => (h, ff),
        }
    }

    /// The module path inside the base model, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn path(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}", self.parent(), self.name())
    }

    /// The peft key of this module's `lora_A` / `lora_B` weight.
    pub fn peft_key(self, layer: usize, which: char) -> String {
        format!("base_model.model.{}.lora_{which}.weight", self.path(layer))
    }
}
