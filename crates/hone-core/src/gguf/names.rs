//! GGUF tensor names and layouts <-> Hugging Face names and layouts.
//!
//! Names: `token_embd` <-> `model.embed_tokens`, `output_norm` <-> `model.norm`, `output` <->
//! `lm_head`, `blk.N.<part>` <-> `model.layers.N.<module>`; the `.weight`/`.bias` suffix is kept.
//!
//! Layout: llama.cpp's converter permutes the rows of llama q/k projections (weights and biases)
//! so that GGUF applies RoPE to interleaved pairs (x[2i], x[2i+1]); HF applies it to halves
//! (x[i], x[i + hd/2]). Within each head of `hd` rows, GGUF row `2i + j` holds HF row
//! `j * hd/2 + i` (i < hd/2, j in {0, 1}). Rows are whole quant blocks, so the permutation moves
//! raw row bytes and works for every storage type. Qwen2 files are not permuted.

use crate::error::{Error, Result};
use crate::spec::{Architecture, ModelSpec};
use crate::tensor::{Bytes, WeightStore};

use super::GgufFile;

/// Per-layer GGUF part names and their HF module paths.
const LAYER_PARTS: [(&str, &str); 11] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
];

/// Whole-model GGUF names and their HF names (without suffix).
const GLOBAL_PARTS: [(&str, &str); 3] = [
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// Split `name` into a stem and its `.weight`/`.bias` suffix.
fn split_suffix(name: &str) -> Option<(&str, &str)> {
    ["weight", "bias"].iter().find_map(|suffix| {
        let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
        Some((stem, *suffix))
    })
}

/// A decimal layer index (no sign, no leading `+`).
fn layer_index(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The HF name of a GGUF tensor (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`),
/// or `None` for tensors with no HF counterpart (e.g. `rope_freqs.weight`).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(name)?;
    if let Some((_, hf)) = GLOBAL_PARTS.iter().find(|(g, _)| *g == stem) {
        return Some(format!("{hf}.{suffix}"));
    }
    let (layer, part) = stem.strip_prefix("blk.")?.split_once('.')?;
    let layer = layer_index(layer)?;
    let (_, hf) = LAYER_PARTS.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// The GGUF name of an HF tensor (`model.layers.3.mlp.up_proj.weight` -> `blk.3.ffn_up.weight`),
/// or `None` for names GGUF has no standard name for.
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(name)?;
    if let Some((g, _)) = GLOBAL_PARTS.iter().find(|(_, hf)| *hf == stem) {
        return Some(format!("{g}.{suffix}"));
    }
    let (layer, module) = stem.strip_prefix("model.layers.")?.split_once('.')?;
    let layer = layer_index(layer)?;
    let (g, _) = LAYER_PARTS.iter().find(|(_, hf)| *hf == module)?;
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// For an HF tensor name, the number of heads whose rows llama.cpp permutes (q_proj: attention
/// heads, k_proj: key/value heads, weights and biases), or `None` when the tensor is stored
/// unpermuted (every other tensor, and every tensor of a non-llama architecture).
pub fn rope_permute_heads(spec: &ModelSpec, hf_name: &str) -> Option<usize> {
    if spec.architecture != Architecture::Llama {
        return None;
    }
    let (stem, _) = split_suffix(hf_name)?;
    if stem.ends_with(".self_attn.q_proj") {
        Some(spec.num_attention_heads)
    } else if stem.ends_with(".self_attn.k_proj") {
        Some(spec.num_key_value_heads)
    } else {
        None
    }
}

/// Check the arguments of a row permutation; the head dimension on success.
fn check_permutation(data: &[u8], n_rows: usize, n_head: usize) -> Result<usize> {
    if n_head == 0 || !n_rows.is_multiple_of(2 * n_head) {
        return Err(Error::Invalid(format!(
            "cannot permute {n_rows} rows for RoPE over {n_head} heads: \
             rows must split into heads of an even size"
        )));
    }
    if !data.len().is_multiple_of(n_rows) {
        return Err(Error::Invalid(format!(
            "cannot permute {} bytes as {n_rows} equal rows",
            data.len()
        )));
    }
    Ok(n_rows / n_head)
}

/// Copy rows from `src` to `dst`; `hf_from_gguf` selects the direction.
fn permute(data: &[u8], n_rows: usize, n_head: usize, hf_from_gguf: bool) -> Result<Vec<u8>> {
    let hd = check_permutation(data, n_rows, n_head)?;
    let row_bytes = data.len() / n_rows;
    let half = hd / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let gguf_row = h * hd + 2 * i + j;
                let hf_row = h * hd + j * half + i;
                let (src, dst) = if hf_from_gguf {
                    (gguf_row, hf_row)
                } else {
                    (hf_row, gguf_row)
                };
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}

/// Rows of an HF-layout q/k projection (`n_rows` equal rows of raw bytes, any storage type)
/// rearranged into llama.cpp's GGUF layout (interleaved-pair RoPE), for writing GGUF files.
pub fn permute_rows_for_gguf(data: &[u8], n_rows: usize, n_head: usize) -> Result<Vec<u8>> {
    permute(data, n_rows, n_head, false)
}

/// Rows of a GGUF-layout llama q/k projection rearranged back into HF layout (the inverse of
/// [`permute_rows_for_gguf`]).
pub fn unpermute_rows_from_gguf(data: &[u8], n_rows: usize, n_head: usize) -> Result<Vec<u8>> {
    permute(data, n_rows, n_head, true)
}

/// Every tensor with an HF name, in HF layout (see `GgufFile::weights`).
pub(super) fn weights(file: &GgufFile, spec: &ModelSpec) -> Result<WeightStore> {
    let mut store = WeightStore::new(&file.path);
    for info in &file.tensors {
        let Some(hf_name) = gguf_to_hf_name(&info.name) else {
            continue;
        };
        let mut entry = file.entry(info, &hf_name)?;
        if let Some(n_head) = rope_permute_heads(spec, &hf_name) {
            // A 1-D bias of a block type would have rows smaller than a block.
            if entry.shape.len() == 1 && entry.dtype.is_quantized() {
                return Err(Error::tensor(
                    &file.path,
                    &info.name,
                    format!("a {} bias cannot be un-permuted row by row", entry.dtype),
                ));
            }
            let n_rows = entry.shape.first().copied().unwrap_or(1);
            let rows = unpermute_rows_from_gguf(entry.data.as_slice(), n_rows, n_head)
                .map_err(|e| Error::tensor(&file.path, &info.name, e.to_string()))?;
            entry.data = Bytes::from_vec(rows);
        }
        store.insert(entry);
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        let pairs = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.0.attn_norm.weight",
                "model.layers.0.input_layernorm.weight",
            ),
            (
                "blk.12.ffn_norm.weight",
                "model.layers.12.post_attention_layernorm.weight",
            ),
            (
                "blk.3.attn_q.weight",
                "model.layers.3.self_attn.q_proj.weight",
            ),
            ("blk.3.attn_k.bias", "model.layers.3.self_attn.k_proj.bias"),
            ("blk.3.attn_v.bias", "model.layers.3.self_attn.v_proj.bias"),
            (
                "blk.3.attn_output.weight",
                "model.layers.3.self_attn.o_proj.weight",
            ),
            (
                "blk.29.ffn_gate.weight",
                "model.layers.29.mlp.gate_proj.weight",
            ),
            ("blk.29.ffn_up.weight", "model.layers.29.mlp.up_proj.weight"),
            (
                "blk.29.ffn_down.weight",
                "model.layers.29.mlp.down_proj.weight",
            ),
        ];
        for (g, h) in pairs {
            assert_eq!(gguf_to_hf_name(g).as_deref(), Some(h), "{g}");
            assert_eq!(hf_to_gguf_name(h).as_deref(), Some(g), "{h}");
        }
        for unknown in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.-1.attn_q.weight",
            "blk.1.attn_q",
            "blk.1.attn_qweight",
            "blk.1.nope.weight",
            "token_embd.scale",
        ] {
            assert_eq!(gguf_to_hf_name(unknown), None, "{unknown}");
        }
        assert_eq!(
            hf_to_gguf_name("model.layers.1.self_attn.rotary_emb.inv_freq"),
            None
        );
    }

    #[test]
    fn permutation_matches_the_converter_formula() {
        // One head of 4 rows with one byte each: HF rows [a, b, c, d] (halves [a, b], [c, d])
        // become interleaved pairs (a, c), (b, d) in GGUF.
        let hf = [b'a', b'b', b'c', b'd'];
        let gguf = permute_rows_for_gguf(&hf, 4, 1).unwrap();
        assert_eq!(gguf, b"acbd");
        assert_eq!(unpermute_rows_from_gguf(&gguf, 4, 1).unwrap(), hf);
        // GGUF row h*hd + 2i + j == HF row h*hd + j*hd/2 + i, 3 heads of 8 rows of 3 bytes.
        let (n_head, hd, rb) = (3, 8, 3);
        let hf: Vec<u8> = (0..n_head * hd * rb).map(|x| x as u8).collect();
        let gguf = permute_rows_for_gguf(&hf, n_head * hd, n_head).unwrap();
        for h in 0..n_head {
            for i in 0..hd / 2 {
                for j in 0..2 {
                    let g = h * hd + 2 * i + j;
                    let f = h * hd + j * hd / 2 + i;
                    assert_eq!(gguf[g * rb..(g + 1) * rb], hf[f * rb..(f + 1) * rb]);
                }
            }
        }
        assert_eq!(
            unpermute_rows_from_gguf(&gguf, n_head * hd, n_head).unwrap(),
            hf
        );
        assert_ne!(gguf, hf);
    }

    #[test]
    fn permutation_rejects_odd_heads() {
        assert!(permute_rows_for_gguf(&[0u8; 6], 6, 2).is_err()); // head dim 3
        assert!(permute_rows_for_gguf(&[0u8; 7], 4, 1).is_err()); // ragged rows
        assert!(permute_rows_for_gguf(&[0u8; 4], 4, 0).is_err());
    }
}
