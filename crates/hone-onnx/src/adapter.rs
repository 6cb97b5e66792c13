//! LoRA weights as graph inputs, and ONNX Runtime's `.onnx_adapter` files that feed them.
//!
//! The layout (names, shapes, scale folded into B) is described in the crate docs. The adapter
//! file is a FlatBuffers buffer of onnxruntime's `adapter_schema.fbs`:
//! `table Adapter { format_version:int; adapter_version:int; model_version:int;
//! parameters:[Parameter]; }`, `table Parameter { name:string; dims:[int64];
//! data_type:TensorDataType(int32); raw_data:[uint8] (force_align: 8); }`, file identifier
//! `TORT`. It is written front to back here: every offset points forward, tables are preceded
//! by their vtables, and vectors of 8-byte data start on 8-byte boundaries.

use std::path::Path;

use hone_core::adapter::{lora_a_key, lora_b_key, LoraAdapter, LoraTarget};
use hone_core::{Error, ModelSpec, Result};

use crate::proto::{Dim, InputInfo};

/// The adapter format version this writer produces (onnxruntime `kAdapterFormatVersion`).
pub const ADAPTER_FORMAT_VERSION: i32 = 1;
/// The `.onnx_adapter` file `hone auto-opt --lora_inputs` writes next to the model.
pub const EXPORT_ADAPTER_FILE: &str = "adapter_weights.onnx_adapter";
/// `TensorDataType::FLOAT` in adapter_schema.fbs.
const FB_FLOAT: i32 = 1;

/// Which projections take LoRA weights as graph inputs, and the rank of the zero defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraInputs {
    pub targets: Vec<LoraTarget>,
    pub rank: usize,
}

impl LoraInputs {
    /// The inputs `adapter` needs on `spec` (its targets, its rank), checking that it fits.
    pub fn for_adapter(adapter: &LoraAdapter, spec: &ModelSpec) -> Result<Self> {
        adapter.check_against(spec)?;
        refuse_saved_modules(adapter)?;
        Ok(LoraInputs {
            targets: adapter.targets(),
            rank: adapter.config.r,
        })
    }

    /// The target whose HF module path is `module_path`, if it takes LoRA inputs.
    pub fn target(&self, module_path: &str) -> Option<&LoraTarget> {
        self.targets.iter().find(|t| t.module_path == module_path)
    }
}

/// Graph input name of A (`[in, rank]`) of `module_path`.
pub fn lora_a_input(module_path: &str) -> String {
    format!("{module_path}.lora_A.weight")
}

/// Graph input name of B (`[rank, out]`, scale folded in) of `module_path`.
pub fn lora_b_input(module_path: &str) -> String {
    format!("{module_path}.lora_B.weight")
}

/// Symbolic rank dimension of `module_path`'s pair (one per module: ranks may differ).
pub fn lora_rank_dim(module_path: &str) -> String {
    format!("{module_path}.lora_rank")
}

fn refuse_saved_modules(adapter: &LoraAdapter) -> Result<()> {
    match adapter.config.modules_to_save.first() {
        None => Ok(()),
        Some(m) => Err(Error::Invalid(format!(
            "adapter {}: modules_to_save '{m}' (a full weight) cannot be fed as LoRA inputs; \
             merge this adapter instead (hone auto-opt --adapter_path without --lora_inputs)",
            adapter
                .source
                .as_deref()
                .unwrap_or(Path::new("."))
                .display()
        ))),
    }
}

/// One tensor of an adapter file.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterParam {
    pub name: String,
    pub dims: Vec<i64>,
    pub values: Vec<f32>,
}

/// `values` (`[rows, cols]`, row-major) transposed, each value times `scale`.
pub(crate) fn transpose_scaled(values: &[f32], rows: usize, cols: usize, scale: f32) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c] * scale;
        }
    }
    out
}

/// The graph-input tensors of `adapter`: per target, A transposed to `[in, r]` and B
/// transposed to `[r, out]` times the adapter's scale.
pub fn adapter_params(adapter: &LoraAdapter) -> Result<Vec<AdapterParam>> {
    refuse_saved_modules(adapter)?;
    let scale = adapter.config.scale() as f32;
    let mut out = Vec::new();
    for t in adapter.targets() {
        let (Some(a), Some(b)) = (
            adapter.lora_a(&t.module_path),
            adapter.lora_b(&t.module_path),
        ) else {
            continue; // targets() lists only modules with both matrices
        };
        let r = a.shape[0];
        if b.shape != [t.out_features, r] {
            return Err(Error::Invalid(format!(
                "adapter tensor '{}' has shape {:?}, but '{}' has rank {r}: expected [{}, {r}]",
                lora_b_key(&t.module_path),
                b.shape,
                lora_a_key(&t.module_path),
                t.out_features
            )));
        }
        out.push(AdapterParam {
            name: lora_a_input(&t.module_path),
            dims: vec![t.in_features as i64, r as i64],
            values: transpose_scaled(&a.values, r, t.in_features, 1.0),
        });
        out.push(AdapterParam {
            name: lora_b_input(&t.module_path),
            dims: vec![r as i64, t.out_features as i64],
            values: transpose_scaled(&b.values, t.out_features, r, scale),
        });
    }
    if out.is_empty() {
        return Err(Error::Invalid(
            "the adapter has no LoRA pairs (lora_A/lora_B) to export".into(),
        ));
    }
    Ok(out)
}

/// Check that every parameter is a float input of the exported model with the same fixed
/// dimensions (rank dimensions are symbolic). `model` names the model file in errors, `peft`
/// the adapter folder.
pub fn check_params_fit(
    params: &[AdapterParam],
    inputs: &[InputInfo],
    model: &Path,
    peft: &Path,
) -> Result<()> {
    let lora_inputs: Vec<&str> = inputs
        .iter()
        .filter(|i| i.name.ends_with(".lora_A.weight") || i.name.ends_with(".lora_B.weight"))
        .map(|i| i.name.as_str())
        .collect();
    if lora_inputs.is_empty() {
        return Err(Error::Invalid(format!(
            "{} takes no LoRA weights as inputs: export it with `hone auto-opt --adapter_path A \
             --lora_inputs`",
            model.display()
        )));
    }
    for p in params {
        let peft_name = peft_key(&p.name);
        let Some(input) = inputs.iter().find(|i| i.name == p.name) else {
            return Err(Error::tensor(
                peft,
                &peft_name,
                format!(
                    "{} has no input '{}' (adapter for another model, or for other target \
                     modules? the model's LoRA inputs start with '{}')",
                    model.display(),
                    p.name,
                    lora_inputs[0]
                ),
            ));
        };
        let fits = input.elem_type == 1
            && input.dims.len() == p.dims.len()
            && input.dims.iter().zip(&p.dims).all(|(d, &v)| match d {
                Dim::Value(x) => *x == v,
                Dim::Param(_) => true,
            });
        if !fits {
            return Err(Error::tensor(
                peft,
                &peft_name,
                format!(
                    "becomes input '{}' of shape {:?}, but {} declares {:?} (adapter for \
                     another model?)",
                    p.name,
                    p.dims,
                    model.display(),
                    input.dims
                ),
            ));
        }
    }
    Ok(())
}

/// The PEFT key a graph input name came from (for errors).
fn peft_key(input: &str) -> String {
    match (
        input.strip_suffix(".lora_A.weight"),
        input.strip_suffix(".lora_B.weight"),
    ) {
        (Some(m), _) => lora_a_key(m),
        (_, Some(m)) => lora_b_key(m),
        _ => input.to_string(),
    }
}

/// A FlatBuffers buffer written front to back with forward offsets patched in later.
struct FlatWriter {
    buf: Vec<u8>,
}

impl FlatWriter {
    fn pad_to(&mut self, align: usize, extra: usize) {
        while !(self.buf.len() + extra).is_multiple_of(align) {
            self.buf.push(0);
        }
    }

    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A 4-byte slot for a forward offset; returns its position for [`FlatWriter::patch`].
    fn slot(&mut self) -> usize {
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.len() - 4
    }

    /// Point the offset slot at `slot` to `target` (a later position).
    fn point(&mut self, slot: usize, target: usize) {
        let off = (target - slot) as u32;
        self.buf[slot..slot + 4].copy_from_slice(&off.to_le_bytes());
    }

    /// Point the offset slot at `slot` to the current end of the buffer.
    fn patch(&mut self, slot: usize) {
        self.point(slot, self.buf.len());
    }

    /// A vtable for a table of 4-byte fields `n_fields`, then the table's soffset; returns the
    /// table's position (fields follow, in order, at offsets 4, 8, ...).
    fn table_start(&mut self, n_fields: u16) -> usize {
        self.pad_to(4, 0);
        let vtable = self.buf.len();
        self.u16(4 + 2 * n_fields);
        self.u16(4 + 4 * n_fields);
        for i in 0..n_fields {
            self.u16(4 + 4 * i);
        }
        self.pad_to(4, 0);
        let table = self.buf.len();
        self.i32((table - vtable) as i32);
        table
    }

    /// Point `slot` at a vector (length, then `bytes` starting on an `align` boundary)
    /// written here.
    fn vector(&mut self, slot: usize, len: usize, bytes: &[u8], align: usize) {
        self.pad_to(align.max(4), 4);
        self.patch(slot);
        self.i32(len as i32);
        self.buf.extend_from_slice(bytes);
    }
}

/// The `.onnx_adapter` bytes of `params`.
pub fn encode_onnx_adapter(
    params: &[AdapterParam],
    adapter_version: i32,
    model_version: i32,
) -> Vec<u8> {
    let mut w = FlatWriter { buf: Vec::new() };
    let root = w.slot();
    w.buf.extend_from_slice(b"TORT");
    let adapter = w.table_start(4);
    w.point(root, adapter);
    w.i32(ADAPTER_FORMAT_VERSION);
    w.i32(adapter_version);
    w.i32(model_version);
    let params_slot = w.slot();
    w.patch(params_slot);
    w.i32(params.len() as i32);
    let slots: Vec<usize> = params.iter().map(|_| w.slot()).collect();
    for (p, slot) in params.iter().zip(slots) {
        let table = w.table_start(4);
        w.point(slot, table);
        let name_slot = w.slot();
        let dims_slot = w.slot();
        w.i32(FB_FLOAT);
        let raw_slot = w.slot();
        // A string is a vector of bytes with a 0 after them (not counted in the length).
        let mut name = p.name.as_bytes().to_vec();
        name.push(0);
        w.vector(name_slot, p.name.len(), &name, 4);
        let dims: Vec<u8> = p.dims.iter().flat_map(|d| d.to_le_bytes()).collect();
        w.vector(dims_slot, p.dims.len(), &dims, 8);
        let raw: Vec<u8> = p.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.vector(raw_slot, raw.len(), &raw, 8);
    }
    w.buf
}

/// Write `params` as an `.onnx_adapter` file at `path`.
pub fn write_onnx_adapter(path: &Path, params: &[AdapterParam]) -> Result<()> {
    std::fs::write(path, encode_onnx_adapter(params, 1, 1)).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> usize {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
    }

    #[test]
    fn adapter_buffer_layout() {
        let params = vec![
            AdapterParam {
                name: "a".into(),
                dims: vec![2, 1],
                values: vec![1.0, -2.0],
            },
            AdapterParam {
                name: "bee".into(),
                dims: vec![1, 3],
                values: vec![0.5, 0.25, 4.0],
            },
        ];
        let b = encode_onnx_adapter(&params, 7, 9);
        assert_eq!(&b[4..8], b"TORT");
        // Root table: soffset to its vtable, then format, adapter and model versions.
        let root = u32_at(&b, 0);
        let vtable = root - u32_at(&b, root);
        assert_eq!(&b[vtable..vtable + 4], &[12, 0, 20, 0]);
        assert_eq!(u32_at(&b, root + 4), 1);
        assert_eq!(u32_at(&b, root + 8), 7);
        assert_eq!(u32_at(&b, root + 12), 9);
        let vec_at = root + 16 + u32_at(&b, root + 16);
        assert_eq!(u32_at(&b, vec_at), 2);
        for (i, p) in params.iter().enumerate() {
            let slot = vec_at + 4 + 4 * i;
            let table = slot + u32_at(&b, slot);
            let name = table + 4 + u32_at(&b, table + 4);
            let len = u32_at(&b, name);
            assert_eq!(&b[name + 4..name + 4 + len], p.name.as_bytes());
            assert_eq!(b[name + 4 + len], 0);
            assert_eq!(u32_at(&b, table + 12), FB_FLOAT as usize);
            let raw = table + 16 + u32_at(&b, table + 16);
            // force_align 8 on raw_data: the bytes start on an 8-byte boundary.
            assert_eq!((raw + 4) % 8, 0);
            assert_eq!(u32_at(&b, raw), 4 * p.values.len());
            let first = f32::from_le_bytes(b[raw + 4..raw + 8].try_into().unwrap());
            assert_eq!(first, p.values[0]);
        }
    }
}
