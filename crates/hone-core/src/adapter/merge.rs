//! Merging an adapter into the base weights: `W' = W + scale · B·A` for every LoRA pair
//! (dequantized, summed in f32 with the product accumulated in f64), and saved modules
//! replacing the weights they name. A tied model whose head or embedding is replaced becomes
//! untied, since the two no longer share values.

use crate::error::{Error, Result};
use crate::spec::ModelSpec;
use crate::tensor::{TensorEntry, WeightStore};

use super::{lora_a_key, lora_b_key, saved_module_key, LoraAdapter};

impl LoraAdapter {
    /// The base model with this adapter merged in: the spec (untied when a saved module breaks
    /// the tie) and a weight store where merged and replaced tensors are f32 and every other
    /// tensor is the base's, unchanged (still quantized if it was).
    pub fn merge_into(
        &self,
        spec: &ModelSpec,
        base: &WeightStore,
    ) -> Result<(ModelSpec, WeightStore)> {
        self.check_against(spec)?;
        let scale = self.config.scale();
        let mut out = base.clone();
        for t in self.targets() {
            let name = format!("{}.weight", t.module_path);
            let w = base.get(&name)?;
            let (rows, cols) = (t.out_features, t.in_features);
            if w.shape != [rows, cols] {
                return Err(Error::tensor(
                    &base.source,
                    &name,
                    format!("shape {:?}, the adapter expects [{rows}, {cols}]", w.shape),
                ));
            }
            let a_key = lora_a_key(&t.module_path);
            let b_key = lora_b_key(&t.module_path);
            let missing = |k: &str| Error::Invalid(format!("adapter: tensor '{k}' is missing"));
            let a = &self
                .tensors
                .get(&a_key)
                .ok_or_else(|| missing(&a_key))?
                .values;
            let b = &self
                .tensors
                .get(&b_key)
                .ok_or_else(|| missing(&b_key))?
                .values;
            let r = self.config.r;
            let mut merged = w.to_f32();
            for (i, row) in merged.chunks_exact_mut(cols).enumerate() {
                let bi = &b[i * r..(i + 1) * r];
                for (j, x) in row.iter_mut().enumerate() {
                    let mut s = 0f64;
                    for (q, &bq) in bi.iter().enumerate() {
                        s += bq as f64 * a[q * cols + j] as f64;
                    }
                    *x = (*x as f64 + scale * s) as f32;
                }
            }
            out.insert(TensorEntry::from_f32(name, vec![rows, cols], &merged)?);
        }
        let mut spec = spec.clone();
        for m in self.config.resolve_modules_to_save(&spec)? {
            let key = saved_module_key(&m.weight_name);
            let t = self.tensors.get(&key).ok_or_else(|| {
                Error::Invalid(format!("adapter: saved module tensor '{key}' is missing"))
            })?;
            if spec.tie_word_embeddings {
                // The other side keeps the shared base values under its own name.
                let shared = base.get("model.embed_tokens.weight")?.clone();
                let other = if m.weight_name == "lm_head.weight" {
                    "model.embed_tokens.weight"
                } else {
                    "lm_head.weight"
                };
                if !out.tensors.contains_key(other) || other == "lm_head.weight" {
                    let mut e = shared;
                    e.name = other.to_string();
                    out.insert(e);
                }
                spec.tie_word_embeddings = false;
            }
            out.insert(TensorEntry::from_f32(
                m.weight_name.clone(),
                t.shape.clone(),
                &t.values,
            )?);
        }
        if spec.tie_word_embeddings {
            out.tensors.remove("lm_head.weight");
        }
        out.check_against(&spec)?;
        Ok((spec, out))
    }
}

#[cfg(test)]
mod tests {
    use crate::adapter::{LoraAdapter, LoraConfig, LoraInit};
    use crate::fixtures::{tiny_spec, tiny_weights};
    use crate::{Architecture, DType};

    fn adapter(spec: &crate::ModelSpec, saved: &[&str]) -> LoraAdapter {
        let config = LoraConfig {
            r: 2,
            lora_alpha: 3.0,
            target_modules: vec!["q_proj".into(), "down_proj".into()],
            init_lora_weights: LoraInit::Gaussian,
            modules_to_save: saved.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let base = tiny_weights(spec, DType::F32, 3).unwrap();
        let mut a = LoraAdapter::init(&config, spec, 5, Some(&base)).unwrap();
        // PEFT starts B at zero; give it values so the merge changes something.
        for (k, t) in a.tensors.iter_mut() {
            if k.contains("lora_B") || k.ends_with("lm_head.weight") {
                for (i, v) in t.values.iter_mut().enumerate() {
                    *v += ((i * 7 % 13) as f32 - 6.0) * 0.01;
                }
            }
        }
        a
    }

    #[test]
    fn merged_weight_is_w_plus_scale_b_a() {
        let spec = tiny_spec(Architecture::Llama, false, 64);
        let base = tiny_weights(&spec, DType::Q8_0, 3).unwrap();
        let a = adapter(&spec, &[]);
        let (spec2, merged) = a.merge_into(&spec, &base).unwrap();
        assert_eq!(spec2, spec);
        let name = "model.layers.1.mlp.down_proj.weight";
        let w = base.get(name).unwrap().to_f32();
        let got = merged.get(name).unwrap().to_f32();
        let path = "model.layers.1.mlp.down_proj";
        let la = &a.tensors[&crate::adapter::lora_a_key(path)];
        let lb = &a.tensors[&crate::adapter::lora_b_key(path)];
        let (out, inp) = (lb.shape[0], la.shape[1]);
        let scale = 3.0 / 2.0;
        let mut max_delta = 0f32;
        for i in 0..out {
            for j in 0..inp {
                let d: f64 = (0..2)
                    .map(|q| lb.values[i * 2 + q] as f64 * la.values[q * inp + j] as f64)
                    .sum();
                let want = (w[i * inp + j] as f64 + scale * d) as f32;
                assert!((got[i * inp + j] - want).abs() <= 1e-6 * want.abs().max(1.0));
                max_delta = max_delta.max((got[i * inp + j] - w[i * inp + j]).abs());
            }
        }
        assert!(max_delta > 1e-3, "the merge changed nothing");
        // Untouched tensors stay as they were (still quantized).
        let k = "model.layers.0.self_attn.k_proj.weight";
        assert_eq!(merged.get(k).unwrap().dtype, DType::Q8_0);
    }

    #[test]
    fn a_saved_head_unties_a_tied_model() {
        let spec = tiny_spec(Architecture::Qwen2, true, 64);
        let base = tiny_weights(&spec, DType::F32, 3).unwrap();
        let a = adapter(&spec, &["lm_head"]);
        let (spec2, merged) = a.merge_into(&spec, &base).unwrap();
        assert!(!spec2.tie_word_embeddings);
        let head = merged.get("lm_head.weight").unwrap().to_f32();
        let embed = merged.get("model.embed_tokens.weight").unwrap().to_f32();
        assert_eq!(
            embed,
            base.get("model.embed_tokens.weight").unwrap().to_f32()
        );
        assert_eq!(
            head, a.tensors["base_model.model.lm_head.weight"].values,
            "the head is the adapter's copy"
        );
        assert_ne!(head, embed);
        // An adapter for another model is refused.
        let other = tiny_spec(Architecture::Qwen2, true, 80);
        let other_base = tiny_weights(&other, DType::F32, 3).unwrap();
        assert!(a.merge_into(&other, &other_base).is_err());
    }
}
