//! The GGUF importer tests' fixtures: a minimal GGUF writer, random tensors of each type with
//! their expected values, the tiny model, and scratch files.

use std::path::{Path, PathBuf};

use half::{bf16, f16};

// ---------------------------------------------------------------------------------------------
// A minimal GGUF writer.

/// A metadata value with its GGUF type id (arrays carry their element type).
#[derive(Clone)]
pub(crate) enum Val {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Arr(u32, Vec<Val>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Val {
    pub(crate) fn type_id(&self) -> u32 {
        match self {
            Val::U8(_) => 0,
            Val::I8(_) => 1,
            Val::U16(_) => 2,
            Val::I16(_) => 3,
            Val::U32(_) => 4,
            Val::I32(_) => 5,
            Val::F32(_) => 6,
            Val::Bool(_) => 7,
            Val::Str(_) => 8,
            Val::Arr(..) => 9,
            Val::U64(_) => 10,
            Val::I64(_) => 11,
            Val::F64(_) => 12,
        }
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        match self {
            Val::U8(v) => out.push(*v),
            Val::I8(v) => out.push(*v as u8),
            Val::U16(v) => out.extend(v.to_le_bytes()),
            Val::I16(v) => out.extend(v.to_le_bytes()),
            Val::U32(v) => out.extend(v.to_le_bytes()),
            Val::I32(v) => out.extend(v.to_le_bytes()),
            Val::F32(v) => out.extend(v.to_le_bytes()),
            Val::Bool(v) => out.push(*v as u8),
            Val::Str(s) => write_str(out, s),
            Val::Arr(t, items) => {
                out.extend(t.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(out);
                }
            }
            Val::U64(v) => out.extend(v.to_le_bytes()),
            Val::I64(v) => out.extend(v.to_le_bytes()),
            Val::F64(v) => out.extend(v.to_le_bytes()),
        }
    }
}

pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

pub(crate) fn strs(v: &[String]) -> Val {
    Val::Arr(8, v.iter().map(|s| Val::Str(s.clone())).collect())
}

pub(crate) struct RawTensor {
    pub(crate) name: String,
    /// ggml ne order (ne[0] = columns).
    pub(crate) dims: Vec<u64>,
    pub(crate) ty: u32,
    pub(crate) data: Vec<u8>,
}

#[derive(Default)]
pub(crate) struct Gguf {
    pub(crate) version: u32,
    /// Data alignment; 0 means GGUF's default, 32.
    pub(crate) align: usize,
    pub(crate) kvs: Vec<(String, Val)>,
    pub(crate) tensors: Vec<RawTensor>,
}

impl Gguf {
    pub(crate) fn kv(&mut self, k: &str, v: Val) {
        self.kvs.retain(|(key, _)| key != k);
        self.kvs.push((k.to_string(), v));
    }

    /// Serializes; returns (bytes, offset of the data section). No padding after the last
    /// tensor, so cutting any byte off the end truncates tensor data.
    pub(crate) fn bytes(&self) -> (Vec<u8>, usize) {
        let align = if self.align == 0 { 32 } else { self.align };
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            write_str(&mut out, k);
            out.extend(v.type_id().to_le_bytes());
            v.write(&mut out);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            write_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset = (offset + t.data.len()).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        let data_start = out.len();
        for t in &self.tensors {
            out.resize(data_start + (out.len() - data_start).next_multiple_of(align), 0);
            out.extend(&t.data);
        }
        (out, data_start)
    }
}

// ---------------------------------------------------------------------------------------------
// Random tensors of each type, with their expected f32 values computed element by element.

/// splitmix64: a fixed-seed generator, so failures reproduce.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        lorafleet::rng::splitmix64_next(&mut self.0)
    }
    /// Uniform in [-1, 1), never exactly zero.
    pub(crate) fn f(&mut self) -> f32 {
        let v = (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        if v == 0.0 {
            0.5
        } else {
            v
        }
    }
    pub(crate) fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

pub(crate) const F32: u32 = 0;
pub(crate) const F16: u32 = 1;
pub(crate) const Q4_0: u32 = 2;
pub(crate) const Q4_1: u32 = 3;
pub(crate) const Q8_0: u32 = 8;
pub(crate) const BF16: u32 = 30;

/// Random raw data of `n` elements of type `ty` and the f32 values it stands for.
pub(crate) fn random_tensor(rng: &mut Rng, ty: u32, n: usize) -> (Vec<u8>, Vec<f32>) {
    let mut data = Vec::new();
    let mut vals = Vec::with_capacity(n);
    match ty {
        F32 => {
            for _ in 0..n {
                let v = rng.f();
                data.extend(v.to_le_bytes());
                vals.push(v);
            }
        }
        F16 => {
            for _ in 0..n {
                let v = f16::from_f32(rng.f() * 4.0);
                data.extend(v.to_le_bytes());
                vals.push(v.to_f32());
            }
        }
        BF16 => {
            for _ in 0..n {
                let v = bf16::from_f32(rng.f() * 4.0);
                data.extend(v.to_le_bytes());
                vals.push(v.to_f32());
            }
        }
        Q8_0 | Q4_0 | Q4_1 => {
            assert_eq!(n % 32, 0);
            for _ in 0..n / 32 {
                let d = f16::from_f32(rng.f() * 0.1);
                let m = f16::from_f32(rng.f() * 0.5);
                data.extend(d.to_le_bytes());
                if ty == Q4_1 {
                    data.extend(m.to_le_bytes());
                }
                let nq = if ty == Q8_0 { 32 } else { 16 };
                let qs: Vec<u8> = (0..nq).map(|_| rng.byte()).collect();
                data.extend(&qs);
                let (d, m) = (d.to_f32(), m.to_f32());
                for j in 0..32 {
                    // Element j of a 4-bit block: low nibble of byte j for j < 16, else the
                    // high nibble of byte j - 16.
                    let nib = |j: usize| if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 };
                    vals.push(match ty {
                        Q8_0 => qs[j] as i8 as f32 * d,
                        Q4_0 => (nib(j) as f32 - 8.0) * d,
                        _ => nib(j) as f32 * d + m,
                    });
                }
            }
        }
        _ => unreachable!(),
    }
    (data, vals)
}

/// llama.cpp's forward permutation of q/k rows, written as numpy does it:
/// `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub(crate) fn llama_cpp_permute(w: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
    let cols = w.len() / rows;
    let half = rows / n_head / 2;
    // After swapaxes the array is indexed [h][i][s][c] and holds w[h][s][i][c].
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for i in 0..half {
            for s in 0..2 {
                let src_row = (h * 2 + s) * half + i;
                out.extend_from_slice(&w[src_row * cols..(src_row + 1) * cols]);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A tiny llama model with a byte-level BPE tokenizer.

pub(crate) const HIDDEN: usize = 64;
pub(crate) const FFN: usize = 96;
pub(crate) const N_HEAD: usize = 4;
pub(crate) const N_KV: usize = 2;
pub(crate) const HEAD_DIM: usize = HIDDEN / N_HEAD;
pub(crate) const N_LAYER: usize = 2;
pub(crate) const N_SPECIAL: usize = 3;

/// GPT-2's byte -> printable char map (`bytes_to_unicode`).
pub(crate) fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        out[*b as usize] = char::from_u32(c).unwrap();
    }
    out
}

/// Tokens: 3 control tokens, the 256 byte tokens (id = 3 + byte), then merged tokens.
pub(crate) fn vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    tokens.extend(byte_chars().iter().map(|c| c.to_string()));
    let merges: Vec<String> = ["Ġ t", "h e", "Ġt he", "1 2"].map(String::from).to_vec();
    tokens.extend(["Ġt", "he", "Ġthe", "12"].map(String::from));
    let mut types = vec![1i32; tokens.len()];
    types[..N_SPECIAL].fill(3);
    (tokens, types, merges)
}

pub(crate) fn byte_id(b: u8) -> u32 {
    N_SPECIAL as u32 + b as u32
}

pub(crate) const CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}";

/// The expected HF tensors of a model, by name.
pub(crate) type Expected = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Builds the tiny model: every supported type appears, q/k in several types.
pub(crate) fn tiny_model(tied: bool) -> (Gguf, Expected) {
    let mut rng = Rng(42);
    let (tokens, types, merges) = vocab();
    let vocab_n = tokens.len();
    let mut g = Gguf { version: 3, ..Default::default() };
    g.kv("general.architecture", Val::Str("llama".into()));
    g.kv("general.name", Val::Str("tiny".into()));
    g.kv("general.alignment", Val::U32(32));
    g.kv("llama.block_count", Val::U32(N_LAYER as u32));
    g.kv("llama.context_length", Val::U32(512));
    g.kv("llama.embedding_length", Val::U32(HIDDEN as u32));
    g.kv("llama.feed_forward_length", Val::U32(FFN as u32));
    g.kv("llama.attention.head_count", Val::U32(N_HEAD as u32));
    g.kv("llama.attention.head_count_kv", Val::U32(N_KV as u32));
    g.kv("llama.rope.freq_base", Val::F32(100000.0));
    g.kv("llama.attention.layer_norm_rms_epsilon", Val::F32(1e-5));
    g.kv("llama.rope.dimension_count", Val::U32(HEAD_DIM as u32));
    g.kv("llama.vocab_size", Val::U32(vocab_n as u32));
    g.kv("tokenizer.ggml.model", Val::Str("gpt2".into()));
    g.kv("tokenizer.ggml.pre", Val::Str("smollm".into()));
    g.kv("tokenizer.ggml.tokens", strs(&tokens));
    g.kv("tokenizer.ggml.token_type", Val::Arr(5, types.iter().map(|&t| Val::I32(t)).collect()));
    g.kv("tokenizer.ggml.merges", strs(&merges));
    g.kv("tokenizer.ggml.bos_token_id", Val::U32(1));
    g.kv("tokenizer.ggml.eos_token_id", Val::U32(2));
    g.kv("tokenizer.ggml.unknown_token_id", Val::U32(0));
    g.kv("tokenizer.ggml.padding_token_id", Val::U32(2));
    g.kv("tokenizer.ggml.add_bos_token", Val::Bool(false));
    g.kv("tokenizer.chat_template", Val::Str(CHAT_TEMPLATE.into()));

    let mut expected = Vec::new();
    // `add(gguf name, hf name, hf shape, type, permute heads)`.
    let mut add = |g: &mut Gguf, name: &str, hf: &str, shape: Vec<usize>, ty: u32, permute: Option<usize>| {
        let n: usize = shape.iter().product();
        let (data, vals) = random_tensor(&mut rng, ty, n);
        let hf_vals = match permute {
            None => vals,
            Some(heads) => {
                // The file holds permuted rows: GGUF row r holds HF row src[r].
                let rows = shape[0];
                let idx: Vec<f32> = (0..rows).map(|r| r as f32).collect();
                let src = llama_cpp_permute(&idx, rows, heads);
                let cols = n / rows;
                let mut hf_vals = vec![0f32; n];
                for (r, &s) in src.iter().enumerate() {
                    let s = s as usize;
                    hf_vals[s * cols..(s + 1) * cols].copy_from_slice(&vals[r * cols..(r + 1) * cols]);
                }
                hf_vals
            }
        };
        g.tensors.push(RawTensor { name: name.into(), dims: shape.iter().rev().map(|&d| d as u64).collect(), ty, data });
        expected.push((hf.to_string(), shape, hf_vals));
    };
    add(&mut g, "token_embd.weight", "model.embed_tokens.weight", vec![vocab_n, HIDDEN], Q8_0, None);
    let q = N_HEAD * HEAD_DIM;
    let kv = N_KV * HEAD_DIM;
    // Per layer: the types of (q, k, v, o, gate, up, down).
    let layer_types = [[F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_1], [Q4_1, Q4_0, Q8_0, F16, BF16, Q4_0, F32]];
    for (l, ty) in layer_types.iter().enumerate() {
        let b = |s: &str| format!("blk.{l}.{s}");
        let m = |s: &str| format!("model.layers.{l}.{s}");
        add(&mut g, &b("attn_norm.weight"), &m("input_layernorm.weight"), vec![HIDDEN], F32, None);
        add(&mut g, &b("attn_q.weight"), &m("self_attn.q_proj.weight"), vec![q, HIDDEN], ty[0], Some(N_HEAD));
        add(&mut g, &b("attn_k.weight"), &m("self_attn.k_proj.weight"), vec![kv, HIDDEN], ty[1], Some(N_KV));
        add(&mut g, &b("attn_v.weight"), &m("self_attn.v_proj.weight"), vec![kv, HIDDEN], ty[2], None);
        add(&mut g, &b("attn_output.weight"), &m("self_attn.o_proj.weight"), vec![HIDDEN, q], ty[3], None);
        add(&mut g, &b("ffn_norm.weight"), &m("post_attention_layernorm.weight"), vec![HIDDEN], F32, None);
        add(&mut g, &b("ffn_gate.weight"), &m("mlp.gate_proj.weight"), vec![FFN, HIDDEN], ty[4], None);
        add(&mut g, &b("ffn_up.weight"), &m("mlp.up_proj.weight"), vec![FFN, HIDDEN], ty[5], None);
        add(&mut g, &b("ffn_down.weight"), &m("mlp.down_proj.weight"), vec![HIDDEN, FFN], ty[6], None);
    }
    add(&mut g, "output_norm.weight", "model.norm.weight", vec![HIDDEN], F32, None);
    if !tied {
        add(&mut g, "output.weight", "lm_head.weight", vec![vocab_n, HIDDEN], Q4_1, None);
    }
    (g, expected)
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A fresh, empty scratch directory for one test.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lorafleet-test-gguf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub(crate) fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

pub(crate) fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// All tensors of a safetensors file as (dtype, shape, raw bytes).
pub(crate) fn read_safetensors(p: &Path) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let buf = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    let mut out: Vec<_> = st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub(crate) fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
