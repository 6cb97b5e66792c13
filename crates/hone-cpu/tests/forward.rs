//! Whole-model forward of tiny random models against a straightforward reference written
//! here, KV-cache consistency, errors, and greedy generation through `CpuSession`.

mod common;

use common::{assert_close, random_weights, spec, tiny_specs, Lcg};
use hone_core::generate::{generate_with_decoder, GenerateOptions, StopReason};
use hone_core::{Architecture, ModelSpec, WeightStore};
use hone_cpu::{CpuModel, CpuModelOptions, CpuSession, KvCache};

/// The HF Llama/Qwen2 forward for one whole sequence, written plainly: f64 accumulation,
/// no cache, no shared code with the engine except `rope_inv_freq`.
fn reference_logits(spec: &ModelSpec, w: &WeightStore, tokens: &[u32]) -> Vec<f32> {
    let get = |n: &str| w.get(n).unwrap().to_f32();
    let try_get = |n: &str| w.try_get(n).map(|t| t.to_f32());
    let (h, hd, nh, nkv) = (
        spec.hidden_size,
        spec.head_dim,
        spec.num_attention_heads,
        spec.num_key_value_heads,
    );
    let t = tokens.len();
    let eps = spec.rms_norm_eps;
    let linear = |x: &[Vec<f64>], name: &str| -> Vec<Vec<f64>> {
        let wt = get(&format!("{name}.weight"));
        let b = try_get(&format!("{name}.bias"));
        let k = x[0].len();
        let n = wt.len() / k;
        x.iter()
            .map(|row| {
                (0..n)
                    .map(|j| {
                        let s: f64 = (0..k).map(|i| row[i] * wt[j * k + i] as f64).sum();
                        s + b.as_ref().map_or(0.0, |b| b[j] as f64)
                    })
                    .collect()
            })
            .collect()
    };
    let rmsnorm = |x: &[Vec<f64>], name: &str| -> Vec<Vec<f64>> {
        let g = get(name);
        x.iter()
            .map(|row| {
                let ms = row.iter().map(|v| v * v).sum::<f64>() / row.len() as f64;
                let r = 1.0 / (ms + eps).sqrt();
                row.iter().zip(&g).map(|(v, &g)| v * r * g as f64).collect()
            })
            .collect()
    };
    let inv_freq = spec.rope_inv_freq();
    let rope = |x: &mut [Vec<f64>], heads: usize| {
        for (p, row) in x.iter_mut().enumerate() {
            for hh in 0..heads {
                let head = &mut row[hh * hd..(hh + 1) * hd];
                let orig = head.to_vec();
                for d in 0..hd {
                    let f = inv_freq[d % (hd / 2)] as f64 * p as f64;
                    let rot = if d < hd / 2 {
                        -orig[d + hd / 2]
                    } else {
                        orig[d - hd / 2]
                    };
                    head[d] = orig[d] * f.cos() + rot * f.sin();
                }
            }
        }
    };

    let embed = get("model.embed_tokens.weight");
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&tk| {
            embed[tk as usize * h..(tk as usize + 1) * h]
                .iter()
                .map(|&v| v as f64)
                .collect()
        })
        .collect();
    for l in 0..spec.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let xn = rmsnorm(&x, &format!("{p}.input_layernorm.weight"));
        let mut q = linear(&xn, &format!("{p}.self_attn.q_proj"));
        let mut k = linear(&xn, &format!("{p}.self_attn.k_proj"));
        let v = linear(&xn, &format!("{p}.self_attn.v_proj"));
        rope(&mut q, nh);
        rope(&mut k, nkv);
        let mut att = vec![vec![0f64; nh * hd]; t];
        for i in 0..t {
            for hh in 0..nh {
                let kh = hh / (nh / nkv);
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..hd)
                            .map(|d| q[i][hh * hd + d] * k[j][kh * hd + d])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for d in 0..hd {
                    att[i][hh * hd + d] = (0..=i)
                        .map(|j| (scores[j] - m).exp() / z * v[j][kh * hd + d])
                        .sum();
                }
            }
        }
        let o = linear(&att, &format!("{p}.self_attn.o_proj"));
        for (xr, orow) in x.iter_mut().zip(&o) {
            for (a, b) in xr.iter_mut().zip(orow) {
                *a += b;
            }
        }
        let xn = rmsnorm(&x, &format!("{p}.post_attention_layernorm.weight"));
        let g = linear(&xn, &format!("{p}.mlp.gate_proj"));
        let u = linear(&xn, &format!("{p}.mlp.up_proj"));
        let act: Vec<Vec<f64>> = g
            .iter()
            .zip(&u)
            .map(|(g, u)| {
                g.iter()
                    .zip(u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect()
            })
            .collect();
        let d = linear(&act, &format!("{p}.mlp.down_proj"));
        for (xr, drow) in x.iter_mut().zip(&d) {
            for (a, b) in xr.iter_mut().zip(drow) {
                *a += b;
            }
        }
    }
    let xn = rmsnorm(&x, "model.norm.weight");
    let head = if spec.tie_word_embeddings {
        "model.embed_tokens"
    } else {
        "lm_head"
    };
    linear(&xn, head)
        .into_iter()
        .flatten()
        .map(|v| v as f32)
        .collect()
}

fn random_tokens(spec: &ModelSpec, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Lcg::new(seed);
    (0..n).map(|_| rng.below(spec.vocab_size as u32)).collect()
}

#[test]
fn tiny_models_match_the_reference_forward() {
    for (name, spec) in tiny_specs() {
        let w = random_weights(&spec, 7);
        let tokens = random_tokens(&spec, 11, 3);
        let want = reference_logits(&spec, &w, &tokens);
        for dense in [false, true] {
            let opts = CpuModelOptions {
                dequantize_at_load: dense,
            };
            let mut model = CpuModel::new(&spec, &w, opts).unwrap();
            let mut cache = model.new_cache(64);
            let got = model.forward(&tokens, &mut cache).unwrap();
            assert_eq!(
                (got.rows, got.vocab, got.first_position),
                (11, spec.vocab_size, 0)
            );
            // f32 engine vs f64 reference through 2-3 layers: f32 rounding gives ~1e-7 of
            // the logits' scale; 1e-5 leaves room for summation order and libm differences.
            assert_close(&got.data, &want, 1e-5, &format!("{name} dense={dense}"));
            assert_eq!(cache.len(), 11);
        }
    }
}

#[test]
fn a_wrong_weight_changes_the_logits() {
    // Guard that the comparison above can fail: perturb one tensor of the engine's weights.
    let (_, spec) = tiny_specs().remove(1);
    let w = random_weights(&spec, 7);
    let tokens = random_tokens(&spec, 6, 3);
    let want = reference_logits(&spec, &w, &tokens);
    let mut w2 = w.clone();
    let name = "model.layers.1.self_attn.v_proj.bias";
    let mut b = w.get(name).unwrap().to_f32();
    b[3] += 0.05;
    w2.insert(hone_core::TensorEntry::from_f32(name, vec![b.len()], &b).unwrap());
    let mut model = CpuModel::new(&spec, &w2, CpuModelOptions::default()).unwrap();
    let got = model.forward(&tokens, &mut model.new_cache(64)).unwrap();
    let max_err = got
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_err > 1e-4, "perturbation not visible: {max_err}");
}

#[test]
fn feeding_in_chunks_gives_the_same_logits_as_all_at_once() {
    for (name, spec) in tiny_specs() {
        let w = random_weights(&spec, 9);
        let tokens = random_tokens(&spec, 13, 5);
        let mut model = CpuModel::new(&spec, &w, CpuModelOptions::default()).unwrap();
        let all = model.forward(&tokens, &mut model.new_cache(64)).unwrap();
        for chunks in [vec![1; 13], vec![3, 2, 1, 4, 3], vec![12, 1]] {
            let mut cache = model.new_cache(64);
            let mut got = Vec::new();
            let mut pos = 0;
            for c in &chunks {
                let logits = model.forward(&tokens[pos..pos + c], &mut cache).unwrap();
                assert_eq!(logits.first_position, pos);
                got.extend_from_slice(&logits.data);
                pos += c;
            }
            assert_close(&got, &all.data, 1e-5, &format!("{name} chunks {chunks:?}"));
        }
        // forward_last returns only the last row, equal to the last row of forward.
        let mut cache = model.new_cache(64);
        model.forward(&tokens[..8], &mut cache).unwrap();
        let last = model.forward_last(&tokens[8..], &mut cache).unwrap();
        assert_eq!((last.rows, last.first_position), (1, 12));
        assert_close(
            last.last(),
            all.row(12),
            1e-5,
            &format!("{name} forward_last"),
        );
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let (_, spec) = tiny_specs().remove(0);
    let w = random_weights(&spec, 1);
    let mut model = CpuModel::new(&spec, &w, CpuModelOptions::default()).unwrap();
    let mut cache = model.new_cache(8);
    let err = model.forward(&[1, 37], &mut cache).unwrap_err().to_string();
    assert!(err.contains("37") && err.contains("vocabulary"), "{err}");
    assert!(model.forward(&[], &mut cache).is_err());
    model.forward(&[1; 6], &mut cache).unwrap();
    let err = model.forward(&[1; 3], &mut cache).unwrap_err().to_string();
    assert!(err.contains("exceed"), "{err}");
    assert_eq!(cache.len(), 6, "a failed call leaves the cache as it was");
    // The cache is capped at max_position_embeddings (64).
    assert_eq!(model.new_cache(1000).max_len(), 64);
    // A cache from another model.
    let other = spec_with_layers(&spec, 3);
    let mut foreign = KvCache::new(&other, 8);
    assert!(model.forward(&[1], &mut foreign).is_err());
}

fn spec_with_layers(s: &ModelSpec, layers: usize) -> ModelSpec {
    let mut s = s.clone();
    s.num_hidden_layers = layers;
    s
}

#[test]
fn bad_models_are_errors_naming_the_problem() {
    let (_, spec) = tiny_specs().remove(0);
    let w = random_weights(&spec, 1);
    let mut missing = w.clone();
    missing.tensors.remove("model.layers.1.mlp.up_proj.weight");
    let err = CpuModel::new(&spec, &missing, CpuModelOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");

    let mut gelu = spec.clone();
    gelu.hidden_act = "gelu".into();
    let err = CpuModel::new(&gelu, &w, CpuModelOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("hidden_act"), "{err}");

    let mut odd = spec.clone();
    odd.num_key_value_heads = 3;
    assert!(CpuModel::new(&odd, &w, CpuModelOptions::default()).is_err());
}

#[test]
fn greedy_generation_through_a_session_matches_argmax_of_full_forwards() {
    let spec = spec(Architecture::Llama, 31, 4, 2, 8, 24, 2, true);
    let w = random_weights(&spec, 21);
    let prompt = [1u32, 5, 9, 3];
    // Expected: recompute the whole sequence each step and take the argmax.
    let mut model = CpuModel::new(&spec, &w, CpuModelOptions::default()).unwrap();
    let mut seq = prompt.to_vec();
    for _ in 0..6 {
        let logits = model.forward(&seq, &mut model.new_cache(64)).unwrap();
        seq.push(hone_core::sampling::argmax(logits.last()));
    }
    let want = seq[prompt.len()..].to_vec();

    let mut session = CpuSession::new(
        CpuModel::new(&spec, &w, CpuModelOptions::default()).unwrap(),
        64,
    );
    let opts = GenerateOptions {
        max_new_tokens: 6,
        ..GenerateOptions::default()
    };
    let mut decode = |ids: &[u32]| Ok(ids.iter().map(|i| format!("<{i}>")).collect::<String>());
    let mut streamed = String::new();
    let mut on_text = |s: &str| {
        streamed.push_str(s);
        true
    };
    let out =
        generate_with_decoder(&mut session, &mut decode, &prompt, &opts, &mut on_text).unwrap();
    assert_eq!(out.ids, want);
    assert_eq!(out.stop_reason, StopReason::MaxTokens);
    assert_eq!(streamed, out.text);
    // A second call resets the cache and gives the same result.
    let again =
        generate_with_decoder(&mut session, &mut decode, &prompt, &opts, &mut |_| true).unwrap();
    assert_eq!(again.ids, want);
    // A session capped at 6 positions stops when the context is full.
    let mut short = CpuSession::new(
        CpuModel::new(&spec, &w, CpuModelOptions::default()).unwrap(),
        6,
    );
    let out =
        generate_with_decoder(&mut short, &mut decode, &prompt, &opts, &mut |_| true).unwrap();
    assert_eq!(out.stop_reason, StopReason::ContextFull);
    assert_eq!(out.ids, want[..3].to_vec());
}
