//! Tests of HF folder reading and writing, against folders saved by transformers
//! (tests/fixtures/hf-tiny-*, made by scripts/make_hf_fixture.py).

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::Value;

use super::*;
use crate::safetensors::{write_safetensors, TensorView};
use crate::spec::{Architecture, RopeScaling};
use crate::tensor::{DType, TensorEntry};

const LLAMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/hf-tiny-llama"
);
const QWEN2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/hf-tiny-qwen2"
);

/// A word-level tokenizer.json small enough to inline.
const TINY_TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[
 {"id":0,"content":"<pad>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
 {"id":1,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
 {"id":2,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
 {"id":3,"content":"<unk>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<pad>":0,"<s>":1,"</s>":2,"<unk>":3,"hello":4,"world":5,"user":6,"hi":7},"unk_token":"<unk>"}}"#;

const TINY_TEMPLATE: &str =
    "{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}</s>{% endfor %}";

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hone-hf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Stored values as f64, decoded here (not by the code under test).
fn values(t: &TensorEntry) -> Vec<f64> {
    let b = t.data.as_slice();
    match t.dtype {
        DType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        d => panic!("unexpected {d}"),
    }
}

fn expected(dir: &str) -> Value {
    let p = Path::new(dir).join("expected.json");
    serde_json::from_slice(&std::fs::read(&p).expect("run scripts/make_hf_fixture.py")).unwrap()
}

/// Compare the stored tensors with the values transformers saved (expected.json).
fn check_against_expected(dir: &str, weights: &WeightStore, dtype: DType) {
    let exp = expected(dir);
    let names: Vec<&str> = exp["tensor_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let got: Vec<&str> = weights.tensors.keys().map(String::as_str).collect();
    assert_eq!(got, names);
    for (name, e) in exp["tensors"].as_object().unwrap() {
        let t = weights.get(name).unwrap();
        assert_eq!(t.dtype, dtype, "{name}");
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        let v = values(t);
        // bf16/f32 -> f64 is exact on both sides: the stored values must match exactly.
        for (i, want) in e["first"].as_array().unwrap().iter().enumerate() {
            assert_eq!(v[i], want.as_f64().unwrap(), "{name}[{i}]");
        }
        assert_eq!(
            *v.last().unwrap(),
            e["last"].as_f64().unwrap(),
            "{name} last"
        );
        // Only the summation order differs from torch's.
        let sum: f64 = v.iter().sum();
        let want = e["sum"].as_f64().unwrap();
        assert!(
            (sum - want).abs() < 1e-9 * (1.0 + want.abs()),
            "{name}: sum {sum} vs {want}"
        );
    }
}

#[test]
fn llama_saved_by_transformers_reads_spec_and_weights() {
    let spec = read_config(LLAMA).unwrap();
    assert_eq!(spec.architecture, Architecture::Llama);
    assert_eq!(
        (
            spec.hidden_size,
            spec.intermediate_size,
            spec.num_hidden_layers
        ),
        (64, 128, 2)
    );
    assert_eq!(
        (
            spec.num_attention_heads,
            spec.num_key_value_heads,
            spec.head_dim
        ),
        (4, 2, 16)
    );
    assert_eq!((spec.vocab_size, spec.max_position_embeddings), (128, 512));
    assert_eq!(spec.rms_norm_eps, 1e-5);
    assert_eq!(spec.rope_theta, 500000.0);
    assert_eq!(
        spec.rope_scaling,
        Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        })
    );
    assert!(!spec.tie_word_embeddings && !spec.has_qkv_bias() && !spec.mlp_bias);
    assert_eq!(spec.hidden_act, "silu");
    assert_eq!(
        (
            spec.bos_token_id,
            spec.eos_token_id.clone(),
            spec.pad_token_id
        ),
        (Some(1), vec![2, 3], Some(0))
    );
    let weights = read_weights(LLAMA).unwrap();
    weights.check_against(&spec).unwrap();
    check_against_expected(LLAMA, &weights, DType::BF16);

    let gen = read_generation_config(Path::new(LLAMA).join(GENERATION_CONFIG_FILE)).unwrap();
    assert_eq!(gen.eos_token_id, vec![2, 3]);
    assert_eq!(
        (
            gen.temperature,
            gen.top_k,
            gen.top_p,
            gen.repetition_penalty
        ),
        (Some(0.7), Some(20), Some(0.9), Some(1.1))
    );
}

#[test]
fn qwen2_saved_by_transformers_has_qkv_biases_and_tied_embeddings() {
    let spec = read_config(Path::new(QWEN2).join("config.json")).unwrap();
    assert_eq!(spec.architecture, Architecture::Qwen2);
    assert!(spec.qkv_bias && spec.has_qkv_bias() && !spec.has_o_bias() && !spec.mlp_bias);
    assert!(spec.tie_word_embeddings);
    assert_eq!((spec.intermediate_size, spec.head_dim), (80, 16));
    assert_eq!((spec.rope_theta, spec.rope_scaling.clone()), (1e6, None));
    assert_eq!(
        (
            spec.bos_token_id,
            spec.eos_token_id.clone(),
            spec.pad_token_id
        ),
        (Some(5), vec![6], None)
    );
    let weights = read_weights(QWEN2).unwrap();
    assert!(weights.try_get("lm_head.weight").is_none());
    weights.check_against(&spec).unwrap();
    check_against_expected(QWEN2, &weights, DType::F32);
    let gen = read_generation_config(Path::new(QWEN2).join(GENERATION_CONFIG_FILE)).unwrap();
    assert_eq!((gen.eos_token_id, gen.temperature), (vec![6], Some(0.6)));
}

#[test]
fn open_without_tokenizer_json_names_the_folder() {
    let e = HfFolder::open(LLAMA).unwrap_err().to_string();
    assert!(
        e.contains("hf-tiny-llama") && e.contains("tokenizer.json absent"),
        "{e}"
    );
    let e = HfFolder::open(Path::new(LLAMA).join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a folder"), "{e}");
}

fn parse(json: &str) -> Result<ModelSpec> {
    let obj = parse_json_object(Path::new("/m/config.json"), json.as_bytes())?;
    spec_from_config(Path::new("/m/config.json"), &obj)
}

const MINIMAL: &str = r#""model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100"#;

#[test]
fn minimal_config_takes_transformers_defaults() {
    let s = parse(&format!("{{{MINIMAL}}}")).unwrap();
    assert_eq!((s.num_key_value_heads, s.head_dim), (4, 16));
    assert_eq!((s.rope_theta, s.rope_scaling.clone()), (10000.0, None));
    assert_eq!((s.max_position_embeddings, s.rms_norm_eps), (2048, 1e-6));
    assert!(!s.tie_word_embeddings && !s.attention_bias && !s.qkv_bias && !s.mlp_bias);
    assert_eq!(s.hidden_act, "silu");
    assert_eq!(
        (s.bos_token_id, s.eos_token_id.len(), s.pad_token_id),
        (None, 0, None)
    );
    // architectures[] alone is enough; nulls count as absent.
    let s = parse(&format!(
        r#"{{{}, "architectures": ["Qwen2ForCausalLM"], "num_key_value_heads": null,
            "eos_token_id": [7, 8], "tie_word_embeddings": true}}"#,
        MINIMAL.replace(r#""model_type": "llama","#, "")
    ))
    .unwrap();
    assert_eq!(s.architecture, Architecture::Qwen2);
    assert!(s.qkv_bias && s.tie_word_embeddings);
    assert_eq!(
        (s.eos_token_id, s.max_position_embeddings),
        (vec![7, 8], 32768)
    );
}

#[test]
fn missing_field_names_config_path_and_field() {
    let e = parse(&format!(
        "{{{}}}",
        MINIMAL.replace(r#""hidden_size": 64,"#, "")
    ))
    .unwrap_err();
    assert!(matches!(e, Error::MissingField { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "/m/config.json: missing required field 'hidden_size'"
    );
    let e = parse(r#"{"hidden_size": 64}"#).unwrap_err().to_string();
    assert!(e.contains("'model_type'"), "{e}");
}

#[test]
fn wrong_type_is_an_invalid_field() {
    let e = parse(&format!("{{{MINIMAL}, \"rms_norm_eps\": \"tiny\"}}")).unwrap_err();
    assert!(matches!(e, Error::InvalidField { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("/m/config.json") && e.contains("'rms_norm_eps'"),
        "{e}"
    );
    assert!(e.contains("expected a number, got \"tiny\""), "{e}");
    let e = parse(&format!("{{{}}}", MINIMAL.replace("64", "64.5")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'hidden_size': expected a non-negative integer, got 64.5"),
        "{e}"
    );
    let e = parse(&format!("{{{}}}", MINIMAL.replace("64", "-64")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'hidden_size'") && e.contains("non-negative integer"),
        "{e}"
    );
    let e = parse(&format!("{{{MINIMAL}, \"num_key_value_heads\": 3}}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 does not divide num_attention_heads 4"), "{e}");
    let e = parse(&format!("{{{MINIMAL}, \"hidden_act\": \"gelu\"}}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("'hidden_act'") && e.contains("gelu"), "{e}");
    let e = parse(&format!("{{{MINIMAL}, \"eos_token_id\": [1, \"x\"]}}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("'eos_token_id'"), "{e}");
    let e = parse("[1]").unwrap_err().to_string();
    assert!(e.contains("expected a JSON object"), "{e}");
    let e = parse("{").unwrap_err().to_string();
    assert!(e.contains("/m/config.json: invalid JSON"), "{e}");
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let e = parse(&format!("{{{}}}", MINIMAL.replace("llama", "gemma2"))).unwrap_err();
    assert!(matches!(e, Error::UnsupportedArchitecture { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("'gemma2'") && e.contains(Architecture::SUPPORTED),
        "{e}"
    );
}

#[test]
fn transformers5_rope_parameters_form_parses() {
    let s = parse(&format!(
        r#"{{{MINIMAL}, "rope_parameters": {{"rope_type": "linear", "factor": 4.0, "rope_theta": 250000}}}}"#
    ))
    .unwrap();
    assert_eq!(s.rope_theta, 250000.0);
    assert_eq!(s.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
    // theta inside the dict wins; "default" means no scaling.
    let s = parse(&format!(
        r#"{{{MINIMAL}, "rope_theta": 5.0, "rope_parameters": {{"rope_type": "default", "rope_theta": 7.0}}}}"#
    ))
    .unwrap();
    assert_eq!((s.rope_theta, s.rope_scaling), (7.0, None));
}

#[test]
fn llama3_rope_scaling_form_parses() {
    // The Llama 3.1/3.2 config.json form (transformers 4): top-level theta, `rope_type` key.
    let llama31 = r#""rope_theta": 500000.0, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
        "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}"#;
    let s = parse(&format!("{{{MINIMAL}, {llama31}}}")).unwrap();
    let want = RopeScaling::Llama3 {
        factor: 32.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    assert_eq!(
        (s.rope_theta, s.rope_scaling),
        (500000.0, Some(want.clone()))
    );
    // Older files use `type`; rope_scaling wins over rope_parameters, as in transformers 5.
    let old = llama31.replace("rope_type", "type");
    let s = parse(&format!(
        r#"{{{MINIMAL}, {old}, "rope_parameters": {{"rope_type": "default"}}}}"#
    ))
    .unwrap();
    assert_eq!(s.rope_scaling, Some(want));
    let e = parse(&format!(
        "{{{MINIMAL}, {}}}",
        llama31.replace(r#""low_freq_factor": 1.0,"#, "")
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("'rope_scaling.low_freq_factor'"), "{e}");
    let e = parse(&format!(
        r#"{{{MINIMAL}, "rope_scaling": {{"rope_type": "yarn", "factor": 4.0}}}}"#
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("'rope_scaling.rope_type'") && e.contains("'yarn'"),
        "{e}"
    );
}

#[test]
fn config_json_round_trips_through_the_parser() {
    for dir in [LLAMA, QWEN2] {
        let spec = read_config(dir).unwrap();
        let v = config_json(&spec, DType::F32);
        let back = spec_from_config(Path::new("x"), v.as_object().unwrap()).unwrap();
        assert_eq!(back, spec);
        assert_eq!(v["architectures"][0], spec.architecture.hf_class());
        assert_eq!(v["dtype"], "float32");
    }
}

#[test]
fn tokenizer_config_forms_parse() {
    let p = Path::new("/m/tokenizer_config.json");
    let obj = parse_json_object(
        p,
        br#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
            "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
            "eos_token": "</s>", "pad_token": null, "add_bos_token": true}"#,
    )
    .unwrap();
    let c = tokenizer_config_from_json(p, &obj).unwrap();
    assert_eq!(c.chat_template.as_deref(), Some("D"));
    assert_eq!(c.special_tokens.bos_token.as_deref(), Some("<s>"));
    assert_eq!(c.special_tokens.eos_token.as_deref(), Some("</s>"));
    assert_eq!(c.special_tokens.pad_token, None);
    assert_eq!(c.special_tokens.add_bos_token, Some(true));
    let obj = parse_json_object(p, br#"{"chat_template": "X", "eos_token": 5}"#).unwrap();
    let e = tokenizer_config_from_json(p, &obj).unwrap_err().to_string();
    assert!(
        e.contains("/m/tokenizer_config.json: field 'eos_token'"),
        "{e}"
    );
    let obj = parse_json_object(p, br#"{"chat_template": [{"name": "x"}]}"#).unwrap();
    let e = tokenizer_config_from_json(p, &obj).unwrap_err().to_string();
    assert!(
        e.contains("'chat_template'") && e.contains("entry 0"),
        "{e}"
    );
}

#[test]
fn sharded_folder_loads_and_a_missing_shard_is_named() {
    let whole = read_weights(QWEN2).unwrap();
    let dir = temp_dir("sharded");
    std::fs::copy(
        Path::new(QWEN2).join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let names: Vec<&String> = whole.tensors.keys().collect();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (i, part) in [first, second].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<TensorView<'_>> = part
            .iter()
            .map(|n| TensorView::from(&whole.tensors[*n]))
            .collect();
        write_safetensors(dir.join(&file), &views, None).unwrap();
        for n in part.iter() {
            map.insert((*n).clone(), Value::String(file.clone()));
        }
    }
    let index =
        serde_json::json!({"metadata": {"total_size": whole.total_bytes()}, "weight_map": map});
    std::fs::write(dir.join(WEIGHTS_INDEX_FILE), index.to_string()).unwrap();

    let sharded = read_weights(&dir).unwrap();
    assert_eq!(sharded.source, dir.join(WEIGHTS_INDEX_FILE));
    assert_eq!(sharded.tensors.len(), whole.tensors.len());
    for (name, t) in &whole.tensors {
        let s = sharded.get(name).unwrap();
        assert_eq!((&s.shape, s.dtype), (&t.shape, t.dtype));
        assert_eq!(s.data.as_slice(), t.data.as_slice(), "{name}");
    }
    sharded.check_against(&read_config(&dir).unwrap()).unwrap();

    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = read_weights(&dir).unwrap_err().to_string();
    assert!(e.contains(WEIGHTS_INDEX_FILE), "{e}");
    assert!(
        e.contains("shard 'model-00002-of-00002.safetensors'") && e.contains("is missing"),
        "{e}"
    );

    // The index lists a tensor that its shard lacks; a shard path leaving the folder.
    map.insert(
        "extra.weight".into(),
        "model-00001-of-00002.safetensors".into(),
    );
    for n in second {
        map.insert((*n).clone(), "model-00001-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"weight_map": map});
    std::fs::write(dir.join(WEIGHTS_INDEX_FILE), index.to_string()).unwrap();
    let e = read_weights(&dir).unwrap_err().to_string();
    assert!(
        e.contains("model-00001-of-00002.safetensors: tensor '"),
        "{e}"
    );
    let index = serde_json::json!({"weight_map": {"a": "../x.safetensors"}});
    std::fs::write(dir.join(WEIGHTS_INDEX_FILE), index.to_string()).unwrap();
    let e = read_weights(&dir).unwrap_err().to_string();
    assert!(
        e.contains("'weight_map.a'") && e.contains("not a file inside"),
        "{e}"
    );
    std::fs::remove_file(dir.join(WEIGHTS_INDEX_FILE)).unwrap();
    let e = read_weights(&dir).unwrap_err().to_string();
    assert!(
        e.contains("no model.safetensors or model.safetensors.index.json"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn extras<'a>(gen: &'a GenerationDefaults) -> FolderExtras<'a> {
    FolderExtras {
        tokenizer_json: Some(TINY_TOKENIZER),
        chat_template: Some(TINY_TEMPLATE),
        special_tokens: SpecialTokens {
            bos_token: Some("<s>".into()),
            eos_token: Some("</s>".into()),
            pad_token: Some("<pad>".into()),
            unk_token: Some("<unk>".into()),
            add_bos_token: Some(false),
            add_eos_token: None,
        },
        generation: Some(gen),
    }
}

/// Write `src` (a transformers-made fixture plus our tokenizer) with `write_folder` into `out`.
fn rewrite(src: &str, out: &Path) -> (ModelSpec, WeightStore, GenerationDefaults) {
    let spec = read_config(src).unwrap();
    let weights = read_weights(src).unwrap();
    let gen = read_generation_config(Path::new(src).join(GENERATION_CONFIG_FILE)).unwrap();
    write_folder(out, &spec, &weights, &extras(&gen)).unwrap();
    (spec, weights, gen)
}

#[test]
fn write_folder_then_open_gives_back_everything() {
    for src in [LLAMA, QWEN2] {
        let dir = temp_dir("write").join("model");
        let (spec, weights, gen) = rewrite(src, &dir);
        let f = HfFolder::open(&dir).unwrap();
        assert_eq!(f.spec, spec);
        assert_eq!(f.generation, gen);
        assert_eq!(f.chat_template.as_deref(), Some(TINY_TEMPLATE));
        assert_eq!(f.special_tokens, extras(&gen).special_tokens);
        assert_eq!(f.tokenizer_json, dir.join(TOKENIZER_FILE));
        assert_eq!(f.tokenizer_config, Some(dir.join(TOKENIZER_CONFIG_FILE)));
        assert_eq!(f.weights.tensors.len(), weights.tensors.len());
        for (name, t) in &weights.tensors {
            let w = f.weights.get(name).unwrap();
            assert_eq!((&w.shape, w.dtype), (&t.shape, t.dtype), "{name}");
            assert_eq!(w.data.as_slice(), t.data.as_slice(), "{name}");
        }
        let config: Value =
            serde_json::from_slice(&std::fs::read(dir.join(CONFIG_FILE)).unwrap()).unwrap();
        let want_dtype = if src == LLAMA { "bfloat16" } else { "float32" };
        assert_eq!(config["dtype"], want_dtype);
        assert_eq!(config["torch_dtype"], want_dtype);
        // chat_template.jinja wins over tokenizer_config.json, as in transformers.
        std::fs::write(dir.join(CHAT_TEMPLATE_FILE), "J").unwrap();
        assert_eq!(
            HfFolder::open(&dir).unwrap().chat_template.as_deref(),
            Some("J")
        );
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}

#[test]
fn write_folder_refuses_incomplete_weights() {
    let spec = read_config(LLAMA).unwrap();
    let mut weights = read_weights(LLAMA).unwrap();
    weights.tensors.remove("lm_head.weight");
    let dir = temp_dir("incomplete");
    let e = write_folder(&dir, &spec, &weights, &FolderExtras::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("'lm_head.weight'"), "{e}");
    assert!(!dir.join(WEIGHTS_FILE).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Not for CI: writes both fixtures with `write_folder` into `$HONE_HF_WRITE_DIR/{llama,qwen2}`
/// for `scripts/make_hf_fixture.py --verify` to load with transformers.
#[test]
#[ignore]
fn write_folder_for_transformers_check() {
    let out = PathBuf::from(std::env::var("HONE_HF_WRITE_DIR").expect("set HONE_HF_WRITE_DIR"));
    rewrite(LLAMA, &out.join("llama"));
    rewrite(QWEN2, &out.join("qwen2"));
}
