//! ONNX Runtime GenAI (onnxruntime-genai from PyPI, through `scripts/genai_check.py`) loads the
//! exported folder (model.onnx + genai_config.json + tokenizer files) and greedy-generates the
//! same tokens as hone's CPU engine through `hone_core::generate` (what `hone generate` runs).

mod common;

use common::{hone_greedy, int4_rounded, run_script, temp_dir, tiny_model};
use hone_core::{Architecture, DType};
use hone_onnx::{write_decoder, write_genai_files, ExportOptions, Precision};
use serde_json::json;

const MAX_NEW_TOKENS: usize = 12;
const PROMPTS: [&str; 3] = [
    "the cat sat on the mat",
    "Hello, world! 123",
    "in the beginning there was",
];

fn check_genai_matches_hone(
    name: &str,
    architecture: Architecture,
    dtype: DType,
    precision: Precision,
) {
    let dir = temp_dir(name);
    let model = tiny_model(&dir, architecture, dtype, 21);
    let mut opts = ExportOptions::default();
    opts.precision = precision;
    let out = dir.join("genai");
    std::fs::create_dir_all(&out).unwrap();
    write_decoder(&out.join("model.onnx"), &model.spec, &model.weights, &opts).unwrap();
    // What the export stands for (int4: the weights through their blocks).
    let reference = match precision {
        Precision::Int4 => int4_rounded(&model.weights),
        _ => model.weights.clone(),
    };
    write_genai_files(&out, &model, "model.onnx").unwrap();
    let input = json!({
        "max_new_tokens": MAX_NEW_TOKENS,
        "runs": PROMPTS.iter().map(|p| json!({"prompt": p})).collect::<Vec<_>>(),
    });
    let got = run_script("genai_check.py", &[&out], &input, &dir);
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let (want_prompt, want) = hone_greedy(&model, &reference, prompt, MAX_NEW_TOKENS);
        let run = &got["runs"][i];
        let ids = |k: &str| -> Vec<u32> {
            run[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        assert_eq!(
            ids("prompt_ids"),
            want_prompt,
            "{name}: GenAI's tokenizer (from our tokenizer.json) encodes {prompt:?} differently"
        );
        let mut got_ids = ids("ids");
        // GenAI keeps the eos token that ended generation; hone does not.
        if got_ids
            .last()
            .is_some_and(|id| model.eos_ids().contains(id))
        {
            got_ids.pop();
        }
        eprintln!("{name} {prompt:?}: hone {want:?}, genai {got_ids:?}");
        assert_eq!(got_ids, want, "{name}: greedy ids after {prompt:?}");
        // Random weights pick byte tokens that may not form UTF-8; where they do, the two
        // detokenizers must agree (invalid bytes are replaced differently).
        let text = model.tokenizer.decode(&want, true).unwrap();
        if !text.contains('\u{fffd}') {
            assert_eq!(run["text"].as_str().unwrap().trim_end(), text.trim_end());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn genai_greedy_equals_hone_llama() {
    check_genai_matches_hone(
        "genai_llama",
        Architecture::Llama,
        DType::F32,
        Precision::Fp32,
    );
}

#[test]
fn genai_greedy_equals_hone_qwen2() {
    check_genai_matches_hone(
        "genai_qwen2",
        Architecture::Qwen2,
        DType::F32,
        Precision::Fp32,
    );
}

#[test]
fn genai_greedy_equals_hone_int4_from_q4_1() {
    // Q4_1 blocks become MatMulNBits as they are: the same weights as hone's, the same tokens.
    check_genai_matches_hone(
        "genai_int4",
        Architecture::Llama,
        DType::Q4_1,
        Precision::Int4,
    );
}

#[test]
fn genai_config_names_the_graph_and_tokens() {
    let dir = temp_dir("genai_config");
    let model = tiny_model(&dir, Architecture::Llama, DType::F32, 1);
    let cfg = hone_onnx::genai_config(&model, "model.onnx");
    let m = &cfg["model"];
    assert_eq!(m["type"], "llama");
    assert_eq!(m["decoder"]["filename"], "model.onnx");
    assert_eq!(m["decoder"]["num_key_value_heads"], 2);
    assert_eq!(
        m["decoder"]["inputs"]["past_key_names"],
        "past_key_values.%d.key"
    );
    assert_eq!(m["eos_token_id"], 2);
    assert_eq!(m["context_length"], 512);
    assert_eq!(cfg["search"]["past_present_share_buffer"], false);
    let _ = std::fs::remove_dir_all(&dir);
}
