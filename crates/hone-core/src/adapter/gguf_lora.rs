//! LoRA adapters as llama.cpp reads them (`llama_adapter_lora_init`): a GGUF file with
//! `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha`, and for every
//! adapted weight `blk.N.attn_q.weight` two tensors `blk.N.attn_q.weight.lora_a` (PyTorch
//! `[r, in]`) and `...lora_b` (`[out, r]`). llama.cpp scales by `alpha / r`, so rsLoRA's
//! `alpha / √r` is written as an equivalent alpha. Llama q/k weights are row-permuted in GGUF
//! (interleaved RoPE), so their B rows get the same permutation; A is untouched.

use std::path::Path;

use crate::error::{Error, Result};
use crate::gguf::{hf_to_gguf_name, permute_rows_for_gguf, rope_permute_heads, write_gguf};
use crate::gguf::{GgufTensorView, MetaValue};
use crate::spec::ModelSpec;
use crate::tensor::DType;

use super::{lora_a_key, lora_b_key, LoraAdapter};

impl LoraAdapter {
    /// The metadata and tensors `(gguf name, PyTorch shape, f32 bytes)` of the llama.cpp
    /// LoRA GGUF of this adapter for `spec`.
    #[allow(clippy::type_complexity)]
    pub fn gguf_lora_parts(
        &self,
        spec: &ModelSpec,
    ) -> Result<(Vec<(String, MetaValue)>, Vec<(String, Vec<usize>, Vec<u8>)>)> {
        self.check_against(spec)?;
        if !self.config.modules_to_save.is_empty() {
            return Err(Error::Invalid(format!(
                "modules_to_save {:?} cannot be expressed in a llama.cpp LoRA GGUF (it holds LoRA pairs only); merge the adapter instead (`hone merge --format gguf`)",
                self.config.modules_to_save
            )));
        }
        let r = self.config.r;
        let alpha = (self.config.scale() * r as f64) as f32;
        let metadata = vec![
            (
                "general.architecture".to_string(),
                MetaValue::String(spec.architecture.model_type().into()),
            ),
            (
                "general.type".to_string(),
                MetaValue::String("adapter".into()),
            ),
            ("adapter.type".to_string(), MetaValue::String("lora".into())),
            ("adapter.lora.alpha".to_string(), MetaValue::F32(alpha)),
        ];
        let mut tensors = Vec::new();
        for t in self.targets() {
            let weight = format!("{}.weight", t.module_path);
            let gname = hf_to_gguf_name(&weight)
                .ok_or_else(|| Error::Invalid(format!("no GGUF name for '{weight}'")))?;
            let get = |k: &str| {
                self.tensors
                    .get(k)
                    .ok_or_else(|| Error::Invalid(format!("adapter: tensor '{k}' is missing")))
            };
            let a = get(&lora_a_key(&t.module_path))?;
            let b = get(&lora_b_key(&t.module_path))?;
            let mut b_bytes = b.to_le_bytes();
            if let Some(n_head) = rope_permute_heads(spec, &weight) {
                b_bytes = permute_rows_for_gguf(&b_bytes, t.out_features, n_head)?;
            }
            tensors.push((format!("{gname}.lora_a"), a.shape.clone(), a.to_le_bytes()));
            tensors.push((format!("{gname}.lora_b"), b.shape.clone(), b_bytes));
        }
        Ok((metadata, tensors))
    }

    /// Write the llama.cpp LoRA GGUF of this adapter for `spec` (atomically).
    pub fn save_gguf_lora(&self, path: impl AsRef<Path>, spec: &ModelSpec) -> Result<()> {
        let (metadata, tensors) = self.gguf_lora_parts(spec)?;
        let views: Vec<GgufTensorView<'_>> = tensors
            .iter()
            .map(|(n, s, d)| GgufTensorView::new(n, s, DType::F32, d))
            .collect();
        write_gguf(path, &metadata, &views)
    }
}

#[cfg(test)]
mod tests {
    use crate::adapter::{LoraAdapter, LoraConfig, LoraInit};
    use crate::fixtures::tiny_spec;
    use crate::gguf::{unpermute_rows_from_gguf, GgufFile, MetaValue};
    use crate::Architecture;

    #[test]
    fn gguf_lora_has_llama_cpp_names_shapes_and_alpha() {
        let spec = tiny_spec(Architecture::Llama, true, 64);
        let config = LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            use_rslora: true,
            target_modules: vec!["q_proj".into(), "down_proj".into()],
            init_lora_weights: LoraInit::Gaussian,
            ..Default::default()
        };
        let mut a = LoraAdapter::init(&config, &spec, 1, None).unwrap();
        for t in a.tensors.values_mut() {
            for (i, v) in t.values.iter_mut().enumerate() {
                *v += i as f32 * 1e-3;
            }
        }
        let dir = std::env::temp_dir().join(format!("hone-gguf-lora-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lora.gguf");
        a.save_gguf_lora(&path, &spec).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert!(
            matches!(f.metadata.get("general.type"), Some(MetaValue::String(s)) if s == "adapter")
        );
        assert!(
            matches!(f.metadata.get("adapter.type"), Some(MetaValue::String(s)) if s == "lora")
        );
        // rsLoRA: scale 8 / sqrt(4) = 4, so llama.cpp's alpha / r must be 4: alpha 16.
        assert!(
            matches!(f.metadata.get("adapter.lora.alpha"), Some(MetaValue::F32(x)) if *x == 16.0)
        );
        assert_eq!(f.tensors.len(), 2 * 2 * spec.num_hidden_layers);
        let info = |n: &str| f.tensors.iter().find(|t| t.name == n).unwrap();
        // GGUF dims are reversed: lora_a ne = [in, r], lora_b ne = [r, out].
        let qa = info("blk.0.attn_q.weight.lora_a");
        let qb = info("blk.0.attn_q.weight.lora_b");
        let q_dim = spec.num_attention_heads * spec.head_dim;
        assert_eq!(qa.dims, vec![spec.hidden_size as u64, 4]);
        assert_eq!(qb.dims, vec![4, q_dim as u64]);
        assert!(f
            .tensors
            .iter()
            .any(|t| t.name == "blk.1.ffn_down.weight.lora_b"));
        // q's B rows are permuted like the GGUF q weight; undoing it gives PEFT's B back.
        let e = f.entry(qb, "q_b").unwrap();
        let back =
            unpermute_rows_from_gguf(e.data.as_slice(), q_dim, spec.num_attention_heads).unwrap();
        let want =
            a.tensors[&crate::adapter::lora_b_key("model.layers.0.self_attn.q_proj")].to_le_bytes();
        assert_eq!(back, want);
        assert_ne!(
            e.data.as_slice(),
            &want[..],
            "the permutation did something"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
