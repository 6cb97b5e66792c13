//! Adapter tests against the PEFT-written fixtures (scripts/make_peft_fixture.py).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::*;
use crate::hf::{read_config, read_weights};
use crate::safetensors::SafetensorsFile;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn fixture(rel: &str) -> PathBuf {
    Path::new(FIXTURES).join(rel)
}

fn expected() -> Value {
    let p = fixture("peft/expected.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hone-adapter-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The spec and weights of a tiny HF fixture model (`tests/fixtures/hf-tiny-*`).
pub(crate) fn tiny_model(rel: &str) -> (ModelSpec, WeightStore) {
    let dir = fixture(rel);
    (read_config(&dir).unwrap(), read_weights(&dir).unwrap())
}

/// A `LoraConfig` from the keyword arguments the fixture script passed to PEFT.
fn config_from_kwargs(kw: &Value) -> LoraConfig {
    let d = LoraConfig::default();
    let list = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
            _ => Vec::new(),
        }
    };
    LoraConfig {
        r: kw["r"].as_u64().unwrap() as usize,
        lora_alpha: kw["lora_alpha"].as_f64().unwrap(),
        lora_dropout: kw
            .get("lora_dropout")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        target_modules: list(&kw["target_modules"]),
        use_rslora: kw
            .get("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        init_lora_weights: kw
            .get("init_lora_weights")
            .map(|v| serde_json::from_value(v.clone()).unwrap())
            .unwrap_or(d.init_lora_weights),
        modules_to_save: kw.get("modules_to_save").map(list).unwrap_or_default(),
        bias: "none".into(),
    }
}

fn shapes_of(path: &Path) -> BTreeMap<String, Vec<usize>> {
    SafetensorsFile::open(path)
        .unwrap()
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect()
}

fn json_shapes(v: &Value) -> BTreeMap<String, Vec<usize>> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, s)| {
            let s = s
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize);
            (k.clone(), s.collect())
        })
        .collect()
}

#[test]
fn loads_the_peft_written_fixture_with_config_shapes_and_values() {
    let exp = expected();
    let case = &exp["cases"]["tiny-llama-adapter"];
    let dir = fixture("peft/tiny-llama-adapter");
    let a = LoraAdapter::load_peft(&dir).unwrap();
    assert_eq!(a.config.r, 4);
    assert_eq!(a.config.lora_alpha, 8.0);
    assert_eq!(a.config.lora_dropout, 0.05);
    assert_eq!(a.config.modules_to_save, ["lm_head"]);
    assert_eq!(a.config.init_lora_weights, LoraInit::Default);
    assert!(!a.config.use_rslora);
    assert_eq!(a.config.scale(), 2.0);
    assert_eq!(
        a.base_model_name_or_path.as_deref(),
        Some("tests/fixtures/hf-tiny-llama")
    );
    assert_eq!(a.source.as_deref(), Some(dir.as_path()));

    let shapes: BTreeMap<String, Vec<usize>> = a
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect();
    assert_eq!(shapes, json_shapes(&case["tensors"]));
    for (key, s) in case["summaries"].as_object().unwrap() {
        let v = &a.tensors[key].values;
        let first: Vec<f64> = v[..4].iter().map(|&x| x as f64).collect();
        let want: Vec<f64> = s["first"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(first, want, "{key}");
        assert_eq!(
            *v.last().unwrap() as f64,
            s["last"].as_f64().unwrap(),
            "{key}"
        );
        let sum: f64 = v.iter().map(|&x| x as f64).sum();
        // Same f32 values summed in f64 in another order: ~1e-15 relative.
        let want_sum = s["sum"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() <= 1e-9 * (1.0 + want_sum.abs()),
            "{key}: {sum} vs {want_sum}"
        );
    }

    let (spec, base) = tiny_model("hf-tiny-llama");
    a.check_against(&spec).unwrap();
    let targets = a.targets();
    assert_eq!(targets, a.config.resolve_targets(&spec).unwrap());
    assert_eq!(targets.len(), 14);
    // PEFT's own A init obeys the bound hone's Default init uses: U(-1/sqrt(in), 1/sqrt(in)).
    for t in &targets {
        let bound = 1.0 / (t.in_features as f32).sqrt();
        let va = &a.lora_a(&t.module_path).unwrap().values;
        assert!(va.iter().all(|x| x.abs() <= bound), "{}", t.module_path);
        let max = va.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            max > 0.9 * bound,
            "{}: max {max} bound {bound}",
            t.module_path
        );
    }
    // modules_to_save starts as a copy of the base weight: hone's copy equals PEFT's exactly.
    let ours = LoraAdapter::init(&a.config, &spec, 0, Some(&base)).unwrap();
    let key = saved_module_key("lm_head.weight");
    assert_eq!(ours.tensors[&key], a.tensors[&key]);
}

#[test]
fn saved_keys_shapes_and_config_equal_peft_for_every_fixture_case() {
    let exp = expected();
    for (name, case) in exp["cases"].as_object().unwrap() {
        let (spec, base) = tiny_model(
            case["base"]
                .as_str()
                .unwrap()
                .trim_start_matches("tests/fixtures/"),
        );
        let config = config_from_kwargs(&case["lora_config"]);
        let adapter = LoraAdapter::init(&config, &spec, 42, Some(&base)).unwrap();
        let dir = temp_dir(&format!("case-{name}"));
        let base_name = case["adapter_config"]["base_model_name_or_path"]
            .as_str()
            .unwrap();
        adapter.save_peft(&dir, base_name).unwrap();

        assert_eq!(
            shapes_of(&dir.join(ADAPTER_WEIGHTS_FILE)),
            json_shapes(&case["tensors"]),
            "{name}: key set or shapes differ from PEFT's"
        );
        let ours: Value =
            serde_json::from_slice(&std::fs::read(dir.join(ADAPTER_CONFIG_FILE)).unwrap()).unwrap();
        let peft = &case["adapter_config"];
        let keys = |v: &Value| {
            v.as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(
            keys(&ours),
            keys(peft),
            "{name}: adapter_config.json fields differ"
        );
        for k in keys(peft) {
            if k != "target_modules" {
                assert_eq!(ours[&k], peft[&k], "{name}: field {k}");
            }
        }
        // target_modules: PEFT writes a set (or expands all-linear to full paths); the modules
        // they select must be the same.
        let back = LoraAdapter::load_peft(&dir).unwrap();
        let peft_cfg = parse_peft_config(Path::new("peft"), peft.as_object().unwrap())
            .unwrap()
            .0;
        assert_eq!(
            back.config.resolve_targets(&spec).unwrap(),
            peft_cfg.resolve_targets(&spec).unwrap(),
            "{name}"
        );
        back.check_against(&spec).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

use super::peft::parse_peft_config;

#[test]
fn save_then_load_round_trips_exactly() {
    let (spec, base) = tiny_model("hf-tiny-llama");
    let config = LoraConfig {
        r: 3,
        lora_alpha: 5.5,
        lora_dropout: 0.1,
        target_modules: vec!["all-linear".into()],
        use_rslora: true,
        init_lora_weights: LoraInit::NoInit, // B random too, so every value is informative
        modules_to_save: vec!["embed_tokens".into(), "lm_head".into()],
        bias: "none".into(),
    };
    let mut a = LoraAdapter::init(&config, &spec, 7, Some(&base)).unwrap();
    // Values that text formats would mangle: subnormals, -0.0, extremes.
    let t = a.tensors.values_mut().next().unwrap();
    t.values[0] = f32::MIN_POSITIVE / 3.0;
    t.values[1] = -0.0;
    t.values[2] = f32::MAX;
    let dir = temp_dir("roundtrip");
    a.save_peft(&dir, "some/base").unwrap();
    let b = LoraAdapter::load_peft(&dir).unwrap();
    assert_eq!(
        b.tensors.keys().collect::<Vec<_>>(),
        a.tensors.keys().collect::<Vec<_>>()
    );
    for (k, t) in &a.tensors {
        let u = &b.tensors[k];
        assert_eq!(t.shape, u.shape, "{k}");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&t.values), bits(&u.values), "{k}");
    }
    assert_eq!(b.config.r, 3);
    assert_eq!(b.config.lora_alpha, 5.5);
    assert_eq!(b.config.lora_dropout, 0.1);
    assert!(b.config.use_rslora);
    assert_eq!(b.config.init_lora_weights, LoraInit::NoInit);
    assert_eq!(b.config.modules_to_save, ["embed_tokens", "lm_head"]);
    assert_eq!(
        b.config.resolve_targets(&spec).unwrap(),
        a.config.resolve_targets(&spec).unwrap()
    );
    assert_eq!(b.base_model_name_or_path.as_deref(), Some("some/base"));
    // The same folder as bytes (the browser path) parses to the same adapter.
    let (cfg, w) = a.to_peft_bytes("some/base").unwrap();
    assert_eq!(cfg, std::fs::read(dir.join(ADAPTER_CONFIG_FILE)).unwrap());
    let c = LoraAdapter::from_peft_bytes(
        "c.json",
        &cfg,
        "w.safetensors",
        crate::tensor::Bytes::from_vec(w),
    )
    .unwrap();
    assert_eq!(c.tensors, b.tensors);
    // No temporary files left behind.
    let names: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([ADAPTER_CONFIG_FILE.into(), ADAPTER_WEIGHTS_FILE.into()])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn init_is_deterministic_per_seed_and_starts_as_the_identity() {
    let (spec, _) = tiny_model("hf-tiny-llama");
    let config = LoraConfig {
        target_modules: vec!["all-linear".into()],
        ..LoraConfig::default()
    };
    let a = LoraAdapter::init(&config, &spec, 1, None).unwrap();
    let b = LoraAdapter::init(&config, &spec, 1, None).unwrap();
    let c = LoraAdapter::init(&config, &spec, 2, None).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(
        a.num_parameters(),
        2 * 8 * (64 + 64 + 64 + 32 + 64 + 32 + 64 + 64 + 64 + 128 + 64 + 128 + 128 + 64)
    );
    for t in a.targets() {
        assert!(a
            .lora_b(&t.module_path)
            .unwrap()
            .values
            .iter()
            .all(|&x| x == 0.0));
        assert!(a
            .lora_a(&t.module_path)
            .unwrap()
            .values
            .iter()
            .any(|&x| x != 0.0));
    }
    // Adding a target does not change the others' values (one stream per tensor).
    let qv = LoraAdapter::init(&LoraConfig::default(), &spec, 1, None).unwrap();
    for (k, t) in &qv.tensors {
        assert_eq!(t, &a.tensors[k], "{k}");
    }
    let e = LoraAdapter::init(
        &LoraConfig {
            modules_to_save: vec!["lm_head".into()],
            ..LoraConfig::default()
        },
        &spec,
        1,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("lm_head") && e.contains("base weights"), "{e}");
}

#[test]
fn adapter_for_another_model_names_the_first_tensor_that_does_not_fit() {
    let a = LoraAdapter::load_peft(fixture("peft/tiny-llama-adapter")).unwrap();
    let (spec, _) = tiny_model("hf-tiny-llama");

    let mut wider = spec.clone();
    wider.hidden_size = 96;
    let e = a.check_against(&wider).unwrap_err().to_string();
    assert!(e.contains("another model"), "{e}");
    assert!(
        e.contains("tiny-llama-adapter/adapter_model.safetensors"),
        "{e}"
    );
    assert!(
        e.contains("'base_model.model.lm_head.weight'")
            && e.contains("[128, 64]")
            && e.contains("[128, 96]"),
        "{e}"
    );

    let mut narrower_ffn = spec.clone();
    narrower_ffn.intermediate_size = 100;
    let e = a.check_against(&narrower_ffn).unwrap_err().to_string();
    assert!(
        e.contains("'base_model.model.model.layers.0.mlp.down_proj.lora_A.weight'"),
        "{e}"
    );
    assert!(e.contains("[4, 128]") && e.contains("[4, 100]"), "{e}");

    // The adapter's config names full paths of layer 1; a one-layer model has no such module.
    let mut shallow = spec.clone();
    shallow.num_hidden_layers = 1;
    let e = a.check_against(&shallow).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.1") && e.contains("another model"),
        "{e}"
    );

    // A hone adapter with short target names: the error is about the first tensor.
    let qv = LoraAdapter::init(&LoraConfig::default(), &spec, 0, None).unwrap();
    let e = qv.check_against(&shallow).unwrap_err().to_string();
    assert!(
        e.contains("'base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight'"),
        "{e}"
    );
    assert!(
        e.contains("no module 'model.layers.1.self_attn.q_proj'") && e.contains("another model"),
        "{e}"
    );

    let mut missing = qv.clone();
    missing
        .tensors
        .remove(&lora_b_key("model.layers.0.self_attn.v_proj"));
    missing
        .tensors
        .remove(&lora_a_key("model.layers.0.self_attn.v_proj"));
    let e = missing.check_against(&spec).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.self_attn.v_proj.lora_A.weight") && e.contains("missing"),
        "{e}"
    );
}

/// Write a PEFT folder: hone's adapter_config.json with `patch`'s fields set, and zero `tensors`.
fn write_folder(tag: &str, patch: &Value, tensors: &[(&str, Vec<usize>)]) -> PathBuf {
    let dir = temp_dir(tag);
    let base = LoraAdapter::init(
        &LoraConfig {
            r: 2,
            ..LoraConfig::default()
        },
        &tiny_model("hf-tiny-llama").0,
        0,
        None,
    )
    .unwrap();
    let mut cfg = base.peft_config_json("x").as_object().unwrap().clone();
    for (k, v) in patch.as_object().unwrap() {
        cfg.insert(k.clone(), v.clone());
    }
    std::fs::write(
        dir.join(ADAPTER_CONFIG_FILE),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, s)| vec![0u8; 4 * s.iter().product::<usize>()])
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .zip(&data)
        .map(|((n, s), d)| TensorView::new(n, s, crate::tensor::DType::F32, d))
        .collect();
    crate::safetensors::write_safetensors(dir.join(ADAPTER_WEIGHTS_FILE), &views, None).unwrap();
    dir
}

use crate::safetensors::TensorView;

#[test]
fn unsupported_or_inconsistent_peft_folders_are_errors_naming_file_and_field() {
    let q = "base_model.model.model.layers.0.self_attn.q_proj";
    let pair = || {
        vec![
            (format!("{q}.lora_A.weight"), vec![2, 64]),
            (format!("{q}.lora_B.weight"), vec![64, 2]),
        ]
    };
    // (name, fields to set in adapter_config.json, tensors, what the error must say)
    type Case<'a> = (&'a str, Value, Vec<(String, Vec<usize>)>, &'a [&'a str]);
    let none = serde_json::json!({});
    let cases: Vec<Case> = vec![
        (
            "dora",
            serde_json::json!({"use_dora": true}),
            pair(),
            &["adapter_config.json", "'use_dora'", "not supported"],
        ),
        (
            "ia3",
            serde_json::json!({"peft_type": "IA3"}),
            pair(),
            &["'peft_type'", "IA3"],
        ),
        (
            "regex",
            serde_json::json!({"target_modules": ".*q_proj"}),
            pair(),
            &["'target_modules'", "regular expression"],
        ),
        (
            "rank0",
            serde_json::json!({"r": 0}),
            pair(),
            &["'r'", "at least 1"],
        ),
        (
            "pattern",
            serde_json::json!({"rank_pattern": {"q_proj": 4}}),
            pair(),
            &["'rank_pattern'"],
        ),
        (
            "pissa",
            serde_json::json!({"init_lora_weights": "pissa"}),
            pair(),
            &["'init_lora_weights'", "pissa"],
        ),
        (
            "no-partner",
            none.clone(),
            vec![(format!("{q}.lora_A.weight"), vec![2, 64])],
            &["adapter_model.safetensors", "lora_A.weight'", "no partner"],
        ),
        (
            "wrong-r",
            none.clone(),
            vec![
                (format!("{q}.lora_A.weight"), vec![3, 64]),
                (format!("{q}.lora_B.weight"), vec![64, 3]),
            ],
            &["lora_A.weight'", "r = 2"],
        ),
        (
            "magnitude",
            none.clone(),
            vec![(format!("{q}.lora_magnitude_vector"), vec![1, 64])],
            &["lora_magnitude_vector'", "unsupported adapter tensor"],
        ),
        (
            "prefix",
            none.clone(),
            vec![(
                "model.layers.0.self_attn.q_proj.lora_A.weight".into(),
                vec![2, 64],
            )],
            &["not a PEFT key"],
        ),
    ];
    for (tag, patch, tensors, wants) in cases {
        let t: Vec<(&str, Vec<usize>)> = tensors
            .iter()
            .map(|(n, s)| (n.as_str(), s.clone()))
            .collect();
        let dir = write_folder(tag, &patch, &t);
        let e = LoraAdapter::load_peft(&dir).unwrap_err().to_string();
        for w in wants {
            assert!(e.contains(w), "{tag}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let e = LoraAdapter::load_peft(temp_dir("empty"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
}

/// Writes hone adapters for scripts/check_peft_adapter.py (PeftModel.from_pretrained):
///
///     HONE_PEFT_WRITE_DIR=/tmp/hone-peft cargo test -p hone-core --lib \
///         adapter::tests::write_adapters_for_peft_check -- --ignored
#[test]
#[ignore]
fn write_adapters_for_peft_check() {
    let out = PathBuf::from(std::env::var("HONE_PEFT_WRITE_DIR").expect("set HONE_PEFT_WRITE_DIR"));
    let (spec, base) = tiny_model("hf-tiny-llama");
    let base_dir = fixture("hf-tiny-llama");
    let base_dir = base_dir.canonicalize().unwrap();
    let configs = [
        (
            "all-linear-lm-head",
            LoraConfig {
                r: 4,
                lora_alpha: 8.0,
                lora_dropout: 0.05,
                target_modules: vec!["all-linear".into()],
                modules_to_save: vec!["lm_head".into()],
                init_lora_weights: LoraInit::NoInit,
                ..LoraConfig::default()
            },
        ),
        (
            "qv-rslora-gaussian",
            LoraConfig {
                r: 8,
                lora_alpha: 16.0,
                use_rslora: true,
                init_lora_weights: LoraInit::Gaussian,
                ..LoraConfig::default()
            },
        ),
    ];
    for (name, c) in configs {
        let mut a = LoraAdapter::init(&c, &spec, 3, Some(&base)).unwrap();
        // Give B values so that loading the wrong tensor into a module shows in the check.
        for (k, t) in a.tensors.iter_mut() {
            if k.ends_with("lora_B.weight") {
                let mut g = SplitMix64::for_stream(9, k);
                t.values
                    .iter_mut()
                    .for_each(|v| *v = g.uniform(0.05) as f32);
            }
        }
        a.save_peft(out.join(name), base_dir.to_str().unwrap())
            .unwrap();
        println!("wrote {}", out.join(name).display());
    }
}
