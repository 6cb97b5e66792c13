//! GGUF v3 writer (little-endian, `general.alignment` or 32), for tests, tiny-model fixtures
//! and export. Tensors are written in the order given, each at an aligned offset.
//!
//! Tensor names and bytes are written as given: to write an HF model, map names with
//! [`super::hf_to_gguf_name`] and, for llama, permute q/k rows with
//! [`super::permute_rows_for_gguf`] (see [`super::rope_permute_heads`]).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use super::{MetaValue, DEFAULT_ALIGNMENT};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Longest tensor name ggml accepts (`GGML_MAX_NAME` - 1 for the terminating NUL).
pub const MAX_TENSOR_NAME_BYTES: usize = 63;

/// One tensor to write: GGUF name, shape in PyTorch order (outermost first), storage type and
/// raw bytes (rows of whole blocks, innermost dimension contiguous).
#[derive(Debug, Clone, Copy)]
pub struct GgufTensorView<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub dtype: DType,
    pub data: &'a [u8],
}

impl<'a> GgufTensorView<'a> {
    /// A view of raw bytes; checked when written.
    pub fn new(name: &'a str, shape: &'a [usize], dtype: DType, data: &'a [u8]) -> Self {
        GgufTensorView {
            name,
            shape,
            dtype,
            data,
        }
    }
}

/// A tensor as it goes into the file (GGUF dim order, raw type id); unchecked, so tests can
/// build files hone must reject.
pub(crate) struct RawTensor<'a> {
    pub name: &'a str,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: &'a [u8],
}

/// Write a GGUF v3 file atomically (temporary file in the same folder, fsync, rename).
pub fn write_gguf(
    path: impl AsRef<Path>,
    metadata: &[(String, MetaValue)],
    tensors: &[GgufTensorView<'_>],
) -> Result<()> {
    let path = path.as_ref();
    let raw = check_tensors(tensors).map_err(|m| Error::format(path, m))?;
    let (header, alignment) = header(metadata, &raw).map_err(|m| Error::format(path, m))?;
    crate::safetensors::write_atomic(path, |w| emit(w, &header, &raw, alignment))
}

/// The bytes of a GGUF v3 file (for the browser, where there is no file, and for tests).
pub fn encode_gguf(
    metadata: &[(String, MetaValue)],
    tensors: &[GgufTensorView<'_>],
) -> Result<Vec<u8>> {
    let raw = check_tensors(tensors).map_err(Error::Invalid)?;
    encode_raw(metadata, &raw).map_err(Error::Invalid)
}

/// Encode unchecked tensors (the test hook behind `encode_gguf`).
pub(crate) fn encode_raw(
    metadata: &[(String, MetaValue)],
    tensors: &[RawTensor<'_>],
) -> std::result::Result<Vec<u8>, String> {
    let (header, alignment) = header(metadata, tensors)?;
    let mut out = Vec::new();
    emit(&mut out, &header, tensors, alignment).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Validate the caller's tensors and convert them to GGUF order.
fn check_tensors<'a>(
    tensors: &[GgufTensorView<'a>],
) -> std::result::Result<Vec<RawTensor<'a>>, String> {
    let mut names = HashSet::new();
    tensors
        .iter()
        .map(|t| {
            let name = t.name;
            if name.is_empty() || name.len() > MAX_TENSOR_NAME_BYTES {
                return Err(format!(
                    "tensor name '{name}' must have 1 to {MAX_TENSOR_NAME_BYTES} bytes"
                ));
            }
            if !names.insert(name) {
                return Err(format!("tensor '{name}' appears twice"));
            }
            if t.shape.is_empty() || t.shape.len() > 4 {
                return Err(format!(
                    "tensor '{name}': shape {:?} must have 1 to 4 dims",
                    t.shape
                ));
            }
            let row = t.shape[t.shape.len() - 1];
            if row % t.dtype.block_size() != 0 {
                return Err(format!(
                    "tensor '{name}': row length {row} is not a multiple of the {} block size {}",
                    t.dtype,
                    t.dtype.block_size()
                ));
            }
            let want = t
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .and_then(|n| t.dtype.bytes_for(n));
            if want != Some(t.data.len()) {
                return Err(format!(
                    "tensor '{name}': shape {:?} of {} needs {want:?} bytes, got {}",
                    t.shape,
                    t.dtype,
                    t.data.len()
                ));
            }
            Ok(RawTensor {
                name,
                dims: t.shape.iter().rev().map(|&d| d as u64).collect(),
                ggml_type: t.dtype.ggml_id(),
                data: t.data,
            })
        })
        .collect()
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Append a value's payload (without its type id).
fn put_value(out: &mut Vec<u8>, key: &str, v: &MetaValue) -> std::result::Result<(), String> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => put_string(out, s),
        MetaValue::Array(items) => {
            // An empty array has no element to take a type from; it is written as u8.
            let elem_ty = items.first().map_or(0, MetaValue::type_id);
            if let Some(other) = items.iter().find(|x| x.type_id() != elem_ty) {
                return Err(format!(
                    "metadata '{key}': array mixes {} and {} values (GGUF arrays hold one type)",
                    items[0].type_name(),
                    other.type_name()
                ));
            }
            out.extend_from_slice(&elem_ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                put_value(out, key, x)?;
            }
        }
    }
    Ok(())
}

/// Header bytes up to (not including) the padding before the data section, and the alignment.
fn header(
    metadata: &[(String, MetaValue)],
    tensors: &[RawTensor<'_>],
) -> std::result::Result<(Vec<u8>, u64), String> {
    let mut alignment = DEFAULT_ALIGNMENT;
    let mut keys = HashSet::new();
    for (k, v) in metadata {
        if !keys.insert(k.as_str()) {
            return Err(format!("metadata key '{k}' appears twice"));
        }
        if k == "general.alignment" {
            match v {
                MetaValue::U32(a) if a.is_power_of_two() => alignment = u64::from(*a),
                _ => {
                    return Err(format!(
                        "general.alignment must be a u32 power of two, found {v:?}"
                    ))
                }
            }
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_string(&mut out, k);
        out.extend_from_slice(&v.type_id().to_le_bytes());
        put_value(&mut out, k, v)?;
    }
    let mut offset = 0u64;
    for t in tensors {
        put_string(&mut out, t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + t.data.len() as u64).div_ceil(alignment) * alignment;
    }
    Ok((out, alignment))
}

/// Zero bytes that pad `len` up to a multiple of `alignment`.
fn padding(len: u64, alignment: u64) -> usize {
    (len.div_ceil(alignment) * alignment - len) as usize
}

/// Write header, padding, then each tensor's bytes padded to the alignment.
fn emit(
    w: &mut dyn Write,
    header: &[u8],
    tensors: &[RawTensor<'_>],
    alignment: u64,
) -> std::io::Result<()> {
    let zeros = vec![0u8; alignment as usize];
    w.write_all(header)?;
    w.write_all(&zeros[..padding(header.len() as u64, alignment)])?;
    // Every tensor is padded, the last one too, as gguf-py and llama.cpp write them.
    for t in tensors {
        w.write_all(t.data)?;
        w.write_all(&zeros[..padding(t.data.len() as u64, alignment)])?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::test_util::temp_dir;
    use crate::gguf::GgufFile;
    use crate::tensor::Bytes;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../tests/fixtures/quant/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{path}: {e} (regenerate with scripts/make_quant_fixtures.py)")
        })
    }

    fn kv(k: &str, v: MetaValue) -> (String, MetaValue) {
        (k.to_string(), v)
    }

    /// The keys of tests/fixtures/quant/gguf_py_writer.gguf, in the order gguf-py wrote them.
    fn gguf_py_metadata() -> Vec<(String, MetaValue)> {
        use MetaValue::*;
        vec![
            kv("general.architecture", String("llama".into())),
            kv("test.u8", U8(200)),
            kv("test.i8", I8(-100)),
            kv("test.u16", U16(60000)),
            kv("test.i16", I16(-30000)),
            kv("test.u32", U32(4_000_000_000)),
            kv("test.i32", I32(-2_000_000_000)),
            kv("test.u64", U64((1 << 63) + 5)),
            kv("test.i64", I64(-(1 << 62))),
            kv("test.f32", F32(0.1)),
            kv("test.f64", F64(-1e300)),
            kv("test.bool", Bool(true)),
            kv("test.string", String("héllo ✓".into())),
            kv("test.array_u64", Array(vec![U64(1), U64(1 << 40)])),
            kv(
                "test.array_str",
                Array(vec![
                    String("a".into()),
                    String("".into()),
                    String("ü".into()),
                ]),
            ),
            kv("test.array_f32", Array(vec![F32(1.5), F32(-2.0)])),
            kv("test.array_bool", Array(vec![Bool(false), Bool(true)])),
            kv(
                "test.nested",
                Array(vec![Array(vec![I32(1), I32(2)]), Array(vec![I32(3)])]),
            ),
        ]
    }

    /// (GGUF name, PyTorch shape, type) of the fixture's tensors; bytes are `<type>.bin`.
    fn gguf_py_tensors() -> Vec<(String, Vec<usize>, DType, Vec<u8>)> {
        DType::ALL
            .iter()
            .map(|&d| {
                let stem = d.to_string().to_lowercase();
                let shape = match d {
                    DType::F32 => vec![4, 16],
                    DType::F16 => vec![2, 2, 16],
                    DType::BF16 => vec![64, 1],
                    d if d.block_size() == 32 => vec![2, 128],
                    _ => vec![2, 512],
                };
                (
                    format!("t.{stem}"),
                    shape,
                    d,
                    fixture(&format!("{stem}.bin")),
                )
            })
            .collect()
    }

    #[test]
    fn reads_gguf_py_output_and_writes_the_same_bytes() {
        let bytes = fixture("gguf_py_writer.gguf");
        let path = std::path::Path::new("gguf_py_writer.gguf");
        let f = GgufFile::from_bytes(Bytes::from_vec(bytes.clone()), path).unwrap();
        assert_eq!(f.version, 3);
        let meta = gguf_py_metadata();
        assert_eq!(f.metadata.len(), meta.len());
        for (k, v) in &meta {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        let tensors = gguf_py_tensors();
        assert_eq!(f.tensors.len(), tensors.len());
        for (name, shape, dtype, data) in &tensors {
            let t = f.tensor(name).unwrap();
            assert_eq!((&t.shape, t.dtype), (shape, *dtype), "{name}");
            assert_eq!(t.data.as_slice(), &data[..], "{name}");
        }
        let views: Vec<GgufTensorView> = tensors
            .iter()
            .map(|(n, s, d, b)| GgufTensorView::new(n, s, *d, b))
            .collect();
        let ours = encode_gguf(&meta, &views).unwrap();
        assert_eq!(ours.len(), bytes.len());
        assert!(ours == bytes, "hone's encoding differs from gguf-py's");
    }

    #[test]
    fn every_type_and_value_round_trips_through_a_file() {
        use MetaValue::*;
        let mut meta = gguf_py_metadata();
        meta.push(kv("test.empty", Array(vec![])));
        meta.push(kv(
            "test.deep",
            Array(vec![
                Array(vec![Array(vec![F64(0.5)])]),
                Array(vec![Array(vec![])]),
            ]),
        ));
        meta.push(kv("general.alignment", U32(64)));
        // Odd-sized tensors so that padding matters; distinct bytes per tensor.
        let tensors: Vec<(std::string::String, Vec<usize>, DType, Vec<u8>)> = DType::ALL
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let shape = vec![3, d.block_size().max(5)];
                let n = d.bytes_for(shape.iter().product()).unwrap();
                let data = (0..n).map(|j| (j * 7 + i * 13) as u8).collect();
                (format!("w.{d}"), shape, d, data)
            })
            .collect();
        let views: Vec<GgufTensorView> = tensors
            .iter()
            .map(|(n, s, d, b)| GgufTensorView::new(n, s, *d, b))
            .collect();
        let dir = temp_dir("roundtrip");
        let path = dir.join("all.gguf");
        write_gguf(&path, &meta, &views).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.alignment(), 64);
        for (k, v) in &meta {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        let file_len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(
            (file_len - f.data.len() as u64) % 64,
            0,
            "data section not aligned"
        );
        for (name, shape, dtype, data) in &tensors {
            assert_eq!(f.tensor_info(name).unwrap().offset % 64, 0, "{name}");
            let t = f.tensor(name).unwrap();
            assert_eq!((&t.shape, t.dtype), (shape, *dtype), "{name}");
            assert_eq!(t.data.as_slice(), &data[..], "{name}");
        }
        // Only the target file is left behind (the temporary file was renamed).
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("all.gguf")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn writer_rejects_inconsistent_input() {
        let data = [0u8; 34];
        let ok = GgufTensorView::new("a", &[32], DType::Q8_0, &data);
        let long_name = "x".repeat(64);
        type Case<'a> = (Vec<(String, MetaValue)>, Vec<GgufTensorView<'a>>, &'a str);
        let cases: Vec<Case> = vec![
            (
                vec![],
                vec![GgufTensorView::new("a", &[2, 32], DType::Q8_0, &data)],
                "needs Some(68) bytes",
            ),
            (
                vec![],
                vec![GgufTensorView::new("a", &[2, 17], DType::F16, &data)],
                "needs Some(68)",
            ),
            (
                vec![],
                vec![GgufTensorView::new("a", &[1, 16], DType::Q8_0, &data[..17])],
                "block size 32",
            ),
            (vec![], vec![ok, ok], "appears twice"),
            (
                vec![],
                vec![GgufTensorView::new(&long_name, &[32], DType::Q8_0, &data)],
                "1 to 63 bytes",
            ),
            (
                vec![],
                vec![GgufTensorView::new("a", &[], DType::F32, &data[..4])],
                "1 to 4 dims",
            ),
            (
                vec![kv(
                    "k",
                    MetaValue::Array(vec![MetaValue::U8(1), MetaValue::I8(1)]),
                )],
                vec![],
                "mixes u8 and i8",
            ),
            (
                vec![kv("k", MetaValue::U8(1)), kv("k", MetaValue::U8(2))],
                vec![],
                "appears twice",
            ),
            (
                vec![kv("general.alignment", MetaValue::U32(24))],
                vec![],
                "power of two",
            ),
            (
                vec![kv("general.alignment", MetaValue::U64(32))],
                vec![],
                "power of two",
            ),
        ];
        for (meta, tensors, want) in cases {
            let err = encode_gguf(&meta, &tensors).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        let dir = temp_dir("reject");
        let path = dir.join("bad.gguf");
        let err = write_gguf(&path, &[], &[ok, ok]).unwrap_err().to_string();
        assert!(
            err.contains("bad.gguf") && err.contains("appears twice"),
            "{err}"
        );
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
