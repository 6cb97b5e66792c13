//! The CPU engine against PyTorch + PEFT on the real SmolLM2-135M (the Q4_1 GGUF; fixture by
//! scripts/make_smollm2_train_fixture.py): LoRA r=8, alpha=16 on the seven projections of all
//! 30 layers, every A and B set by a closed formula both sides evaluate identically, one
//! forward + backward of the mean token loss on two right-padded rows of examples/polarity.jsonl.
//! Checked: the loss and the gradients of the 14 layer-0 LoRA tensors, which the backward
//! reaches only through all 30 layers.
//!
//! The reference takes the log-softmax of its fp32 logits in f64 (the fixture script says why:
//! torch's f32 CPU log-softmax is biased on this vocabulary by ~1.4e-5 per token, which the
//! backward grows to 1e-3 in the top layers' gradients). Both sides then compute in f32 from the
//! same dequantized weights and differ only in summation orders; the fixture records how far the
//! fp32 reference itself is from a float64 run (~5e-6 per tensor). Tolerances:
//! - loss: 1e-6 relative to the reference (observed ~1e-7; f32 noise after 30 layers), and
//!   1e-5 relative to HF's own f32 loss (observed 3e-6, its log-softmax bias);
//! - gradients: max |g - g_ref| <= 1e-4 * max |g_ref| per tensor (observed ~1e-5; see
//!   train_peft.rs for why the bound is relative to the tensor's largest element).
//!
//! The model is not in the repository: `make models` downloads it and sets HONE_SMOLLM2_GGUF;
//! without it these tests fail (they do not skip).

mod common;
mod train_common;

use std::path::{Path, PathBuf};

use hone_core::adapter::{lora_a_key, lora_b_key};
use hone_core::engine::{AdamW, Engine, LoraSetup, MicroBatch, NamedTensor, TrainTarget};
use hone_core::safetensors::SafetensorsFile;
use hone_core::{load_model, Model};
use hone_cpu::train::{CpuEngine, CpuTrainOptions};
use serde_json::Value;
use train_common::{block_on, projections};

const LOSS_TOL: f64 = 1e-6;
const HF_LOSS_TOL: f64 = 1e-5;
const GRAD_TOL: f64 = 1e-4;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/train/smollm2-layer0")
}

struct Fixture {
    json: Value,
    ids: Vec<u32>,
    labels: Vec<i32>,
    batch: usize,
    seq: usize,
}

/// The fixture, after checking that it was made from the same model file.
fn load_fixture(model_path: &Path) -> Fixture {
    let dir = fixture_dir();
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("fixture.json")).unwrap()).unwrap();
    let size = std::fs::metadata(model_path).unwrap().len();
    assert_eq!(
        size,
        json["model"]["size"].as_u64().unwrap(),
        "{} is not the file the fixture was made from (sha256 {})",
        model_path.display(),
        json["model"]["sha256"]
    );
    let ints = |key: &str| -> Vec<i64> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };
    let ids = ints("ids").into_iter().map(|v| v as u32).collect();
    let labels = ints("labels").into_iter().map(|v| v as i32).collect();
    Fixture {
        batch: json["batch"].as_u64().unwrap() as usize,
        seq: json["seq"].as_u64().unwrap() as usize,
        ids,
        labels,
        json,
    }
}

/// LoRA on the seven projections of every layer, with the fixture's rank and alpha.
fn lora_setup(model: &Model, fx: &Fixture) -> LoraSetup {
    let lora = &fx.json["lora"];
    let rank = lora["rank"].as_u64().unwrap() as usize;
    let alpha = lora["alpha"].as_f64().unwrap();
    assert_eq!(lora["dropout"].as_f64().unwrap(), 0.0);
    let spec = &model.spec;
    assert_eq!(
        spec.num_hidden_layers as u64,
        lora["layers"].as_u64().unwrap()
    );
    let projs = projections(spec);
    let names: Vec<&str> = projs
        .iter()
        .map(|(path, _, _)| path.rsplit('.').next().unwrap())
        .collect();
    let want: Vec<&str> = lora["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(names, want, "projection order (the formula's tensor index)");
    let targets = (0..spec.num_hidden_layers)
        .flat_map(|l| {
            projs.iter().map(move |&(path, i, o)| TrainTarget {
                module: format!("model.layers.{l}.{path}"),
                in_features: i,
                out_features: o,
            })
        })
        .collect();
    LoraSetup {
        rank,
        scale: (alpha / rank as f64) as f32,
        dropout: 0.0,
        targets,
        modules_to_save: Vec::new(),
    }
}

/// The fixture's initial A and B: `amp * sin(freq * i + chirp * i * i + phase * j)` in f64,
/// rounded once to f32; i is the row-major element index, j = 14 * layer + 2 * proj + (0 for
/// A, 1 for B), i.e. 2 * (target index) + (0 or 1) in `setup`'s layer-major order.
fn formula_params(setup: &LoraSetup, fx: &Fixture) -> Vec<NamedTensor> {
    let init = &fx.json["init"];
    let get = |k: &str| init[k].as_f64().unwrap();
    let (amp, freq, chirp, phase) = (get("amp"), get("freq"), get("chirp"), get("phase"));
    let r = setup.rank;
    let values = |n: usize, j: usize| -> Vec<f32> {
        (0..n)
            .map(|i| {
                let i = i as f64;
                (amp * (freq * i + chirp * i * i + phase * j as f64).sin()) as f32
            })
            .collect()
    };
    setup
        .targets
        .iter()
        .enumerate()
        .flat_map(|(t, target)| {
            [
                NamedTensor {
                    name: format!("{}.lora_A", target.module),
                    shape: vec![r, target.in_features],
                    data: values(r * target.in_features, 2 * t),
                },
                NamedTensor {
                    name: format!("{}.lora_B", target.module),
                    shape: vec![target.out_features, r],
                    data: values(target.out_features * r, 2 * t + 1),
                },
            ]
        })
        .collect()
}

/// The PEFT key of an engine tensor name (`{module}.lora_A` / `.lora_B`).
fn peft_key(name: &str) -> String {
    match name.strip_suffix(".lora_A") {
        Some(m) => lora_a_key(m),
        None => lora_b_key(name.strip_suffix(".lora_B").unwrap()),
    }
}

fn check_against_peft(opts: CpuTrainOptions) {
    let start = std::time::Instant::now();
    let path = common::smollm2_path();
    let fx = load_fixture(&path);
    let model = load_model(&path).unwrap();
    let setup = lora_setup(&model, &fx);
    let params = formula_params(&setup, &fx);
    let mut engine =
        CpuEngine::new(&model.spec, &model.weights, setup, AdamW::default(), opts).unwrap();
    block_on(engine.set_params(&params)).unwrap();
    let loaded = start.elapsed().as_secs_f64();

    let tokens = fx.json["tokens"].as_u64().unwrap() as usize;
    let mb = MicroBatch {
        ids: &fx.ids,
        labels: &fx.labels,
        batch: fx.batch,
        seq: fx.seq,
    };
    // HF backpropagates the mean over label tokens: the gradient of nll_sum / tokens.
    let sum = block_on(engine.forward_backward(&mb, 1.0 / tokens as f32)).unwrap();
    let step = start.elapsed().as_secs_f64() - loaded;
    assert_eq!(sum.tokens, tokens, "label tokens after the shift");
    let rel = |want: f64| (sum.mean() - want).abs() / want.abs();
    let (want, hf) = (
        fx.json["loss"].as_f64().unwrap(),
        fx.json["hf_loss_f32"].as_f64().unwrap(),
    );
    eprintln!(
        "{opts:?}: loss {:.9} vs PEFT {want:.9} (rel {:.1e}; HF's f32 loss {hf:.9}, rel {:.1e}); \
         load {loaded:.1}s, forward+backward {step:.1}s",
        sum.mean(),
        rel(want),
        rel(hf)
    );
    assert!(
        rel(want) <= LOSS_TOL,
        "loss rel error {:.2e} > {LOSS_TOL:.0e}",
        rel(want)
    );
    assert!(
        rel(hf) <= HF_LOSS_TOL,
        "loss vs HF's f32 loss: rel error {:.2e} > {HF_LOSS_TOL:.0e}",
        rel(hf)
    );

    let grads = block_on(engine.grads()).unwrap();
    for g in &grads {
        assert!(
            g.data.iter().all(|v| v.is_finite()) && g.data.iter().any(|&v| v != 0.0),
            "{}: gradient is zero or not finite",
            g.name
        );
    }
    let refs = SafetensorsFile::open(fixture_dir().join("grads.safetensors")).unwrap();
    let layer0: Vec<&NamedTensor> = grads
        .iter()
        .filter(|g| g.name.starts_with("model.layers.0."))
        .collect();
    assert_eq!(layer0.len(), 14);
    assert_eq!(refs.tensors.len(), 14);
    let mut failures = Vec::new();
    for g in layer0 {
        let key = peft_key(&g.name);
        let want = refs
            .get(&key)
            .unwrap_or_else(|| panic!("{key} missing from the fixture"));
        assert_eq!(want.shape, g.shape, "{key}: shape");
        let want = want.to_f32();
        let scale = want.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
        assert!(scale > 0.0, "{key}: reference is all zero");
        let diff = g
            .data
            .iter()
            .zip(&want)
            .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
        let err = diff / scale;
        let floor = fx.json["reference_vs_f64"][&key].as_f64().unwrap();
        eprintln!(
            "  {:<40} max|ref| {scale:.3e}  rel err {err:.2e}  (reference vs f64 {floor:.1e})",
            g.name
        );
        if err.is_nan() || err > GRAD_TOL {
            failures.push(format!("{}: {err:.2e}", g.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{opts:?}: gradients beyond {GRAD_TOL:.0e}: {failures:?}"
    );
}

#[test]
fn smollm2_first_step_loss_and_layer0_lora_gradients_match_peft() {
    check_against_peft(CpuTrainOptions::default());
}

#[test]
fn smollm2_gradients_match_peft_with_weights_dequantized_at_load() {
    check_against_peft(CpuTrainOptions {
        dequantize_at_load: true,
        ..Default::default()
    });
}

#[test]
fn smollm2_gradients_match_peft_with_gradient_checkpointing() {
    check_against_peft(CpuTrainOptions {
        gradient_checkpointing: true,
        ..Default::default()
    });
}

/// The fixture's batch is what hone's own tokenizer makes of the same texts (eos appended,
/// right-padded with eos, padding unlabelled).
#[test]
fn smollm2_fixture_batch_is_what_hone_tokenizes() {
    let path = common::smollm2_path();
    let fx = load_fixture(&path);
    let model = load_model(&path).unwrap();
    let eos = fx.json["eos_id"].as_u64().unwrap() as u32;
    assert!(model.tokenizer.eos_ids.contains(&eos));
    let texts = fx.json["texts"].as_array().unwrap();
    assert_eq!(texts.len(), fx.batch);
    for (b, text) in texts.iter().enumerate() {
        let mut ids = model
            .tokenizer
            .encode(text.as_str().unwrap(), false)
            .unwrap();
        ids.push(eos);
        let n = ids.len();
        let row = &fx.ids[b * fx.seq..(b + 1) * fx.seq];
        let labels = &fx.labels[b * fx.seq..(b + 1) * fx.seq];
        assert_eq!(&row[..n], &ids[..], "row {b}: token ids");
        assert!(row[n..].iter().all(|&t| t == eos), "row {b}: padding");
        assert!(
            labels[..n].iter().zip(&ids).all(|(&l, &t)| l == t as i32)
                && labels[n..].iter().all(|&l| l == -100),
            "row {b}: labels"
        );
    }
}
