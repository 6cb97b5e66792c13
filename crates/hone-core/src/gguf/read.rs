//! GGUF parsing. Layout (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64
//! metadata count, metadata (string key, u32 value type, value), tensor infos (string name,
//! u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset), padding to `general.alignment`,
//! then the data section. Strings are a u64 byte length and UTF-8 bytes; arrays are a u32
//! element type, a u64 count and the elements.
//!
//! Every read is bounds-checked against the file, and no count or length read from the file
//! sizes an allocation beyond what the remaining bytes could hold.

use std::collections::BTreeMap;
use std::path::Path;

use super::{GgufFile, GgufTensorInfo, MetaValue, DEFAULT_ALIGNMENT};
use crate::error::{Error, Result};
use crate::tensor::Bytes;

/// Deepest nesting of arrays accepted (real files use 1; the bound keeps recursion finite).
const MAX_ARRAY_DEPTH: usize = 8;
/// ggml tensors have at most 4 dims.
const MAX_DIMS: u32 = 4;

/// The file's bytes: memory-mapped natively, read into memory on wasm.
pub(super) fn load_file(path: &Path) -> Result<Bytes> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::format(path, "is a folder, not a GGUF file"));
    }
    load_bytes(path, meta.len())
}

#[cfg(not(target_arch = "wasm32"))]
fn load_bytes(path: &Path, len: u64) -> Result<Bytes> {
    if len == 0 {
        // An empty file cannot be mapped; parsing reports it as truncated.
        return Ok(Bytes::from_vec(Vec::new()));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; like every memory-mapped loader we rely on nobody
    // truncating or rewriting the file while tensors from it are in use (documented on `open`).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Bytes::new(std::sync::Arc::new(map)))
}

#[cfg(target_arch = "wasm32")]
fn load_bytes(path: &Path, _len: u64) -> Result<Bytes> {
    std::fs::read(path)
        .map(Bytes::from_vec)
        .map_err(|e| Error::io(path, e))
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn truncated(&self, n: u64, what: &dyn Fn() -> String) -> Error {
        Error::format(
            self.path,
            format!(
                "truncated: {} needs {n} bytes at byte {}, but the file ends at byte {}",
                what(),
                self.pos,
                self.buf.len()
            ),
        )
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(self.truncated(n as u64, what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string; invalid UTF-8 is replaced (U+FFFD) rather than rejected, as llama.cpp
    /// does not validate it either.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(self.truncated(len, &|| format!("{} (string)", what())));
        }
        let s = self.take(len as usize, what)?;
        Ok(String::from_utf8_lossy(s).into_owned())
    }

    /// A metadata value of GGUF type `ty`.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue> {
        let what = || format!("value of '{key}'");
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(&what)?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            // Any non-zero byte is true, as in llama.cpp.
            7 => MetaValue::Bool(self.array::<1>(&what)?[0] != 0),
            8 => MetaValue::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::format(
                        self.path,
                        format!(
                            "metadata '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH} at byte {}",
                            self.pos
                        ),
                    ));
                }
                let elem_ty = self.u32(&what)?;
                let count = self.u64(&what)?;
                // Smallest encoding of one element, to bound the count by the bytes left.
                let min_size: u64 = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => {
                        return Err(Error::format(
                            self.path,
                            format!(
                                "metadata '{key}': unknown array element type {elem_ty} at byte {}",
                                self.pos - 12
                            ),
                        ))
                    }
                };
                if count.saturating_mul(min_size) > self.remaining() as u64 {
                    return Err(self.truncated(count.saturating_mul(min_size), &|| {
                        format!("array '{key}' of {count} elements")
                    }));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            _ => {
                return Err(Error::format(
                    self.path,
                    format!(
                        "metadata '{key}': unknown value type {ty} at byte {}",
                        self.pos - 4
                    ),
                ))
            }
        })
    }
}

/// Parse and validate a whole GGUF file held in `bytes`.
pub(super) fn parse(bytes: Bytes, path: &Path) -> Result<GgufFile> {
    let buf = bytes.as_slice();
    let mut r = Reader { buf, pos: 0, path };

    let magic: [u8; 4] = r.array(&|| "the magic number".to_string())?;
    if &magic != b"GGUF" {
        return Err(Error::format(
            path,
            format!(
                "not a GGUF file (bad magic {:?}, expected \"GGUF\")",
                String::from_utf8_lossy(&magic)
            ),
        ));
    }
    let version = r.u32(&|| "the version".to_string())?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(Error::format(
                path,
                "unsupported GGUF version 1 (hone reads v2 and v3; re-convert with a current llama.cpp)",
            ))
        }
        v if matches!(v.swap_bytes(), 2 | 3) => {
            return Err(Error::format(
                path,
                format!(
                    "unsupported big-endian GGUF (version {}); hone reads little-endian files",
                    v.swap_bytes()
                ),
            ))
        }
        v => {
            return Err(Error::format(
                path,
                format!("unsupported GGUF version {v} (hone reads v2 and v3)"),
            ))
        }
    }
    let n_tensors = r.u64(&|| "the tensor count".to_string())?;
    let n_kv = r.u64(&|| "the metadata count".to_string())?;

    // A key-value pair takes at least 13 bytes (key length, type, one byte of value), a tensor
    // info at least 24 (name length, n_dims, type, offset).
    let least = u128::from(n_kv) * 13 + u128::from(n_tensors) * 24;
    if least > r.remaining() as u128 {
        return Err(Error::format(
            path,
            format!(
                "truncated: the header lists {n_kv} metadata entries and {n_tensors} tensors, \
                 which need at least {least} bytes at byte {}, but the file ends at byte {}",
                r.pos,
                buf.len()
            ),
        ));
    }
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = r.string(&|| format!("metadata key #{i} of {n_kv}"))?;
        let ty = r.u32(&|| format!("the type of metadata '{key}'"))?;
        let value = r.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(Error::format(
                path,
                format!("duplicate metadata key '{key}'"),
            ));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 30 => a,
            _ => {
                return Err(Error::invalid_field(
                    path,
                    "general.alignment",
                    format!("must be a power of two, found {v:?}"),
                ))
            }
        },
    };

    let mut tensors = Vec::with_capacity(n_tensors.min(r.remaining() as u64 / 24) as usize);
    let mut seen = std::collections::HashSet::new();
    for i in 0..n_tensors {
        let name = r.string(&|| format!("the name of tensor #{i} of {n_tensors}"))?;
        let what = || format!("the index entry of tensor '{name}'");
        let n_dims = r.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(Error::tensor(
                path,
                &name,
                format!("{n_dims} dims (ggml tensors have at most {MAX_DIMS})"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&what)?);
        }
        let ggml_type = r.u32(&what)?;
        let offset = r.u64(&what)?;
        if !seen.insert(name.clone()) {
            return Err(Error::tensor(
                path,
                &name,
                "appears twice in the tensor index",
            ));
        }
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }

    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let data = if data_start <= buf.len() as u64 {
        let start = data_start as usize;
        bytes.slice(start, buf.len() - start)
    } else if tensors.is_empty() {
        bytes.slice(buf.len(), 0)
    } else {
        None
    };
    let data = data.ok_or_else(|| {
        Error::format(
            path,
            format!(
                "truncated: the data section starts at byte {data_start}, but the file ends at byte {}",
                buf.len()
            ),
        )
    })?;

    // Tensors of types hone cannot read are kept in the index (their size is unknown here);
    // `GgufFile::tensor`/`weights` report them as UnsupportedTensorType.
    for t in &tensors {
        let Some(dtype) = t.dtype() else { continue };
        let row = *t.dims.first().unwrap_or(&1);
        if row % dtype.block_size() as u64 != 0 {
            return Err(Error::tensor(
                path,
                &t.name,
                format!(
                    "row length {row} is not a multiple of the {dtype} block size {}",
                    dtype.block_size()
                ),
            ));
        }
        let n_bytes = t
            .n_bytes()
            .ok_or_else(|| Error::tensor(path, &t.name, format!("dims {:?} overflow", t.dims)))?;
        let end = t.offset.checked_add(n_bytes as u64);
        if end.is_none_or(|e| e > data.len() as u64) {
            return Err(Error::tensor(
                path,
                &t.name,
                format!(
                    "data at offset {} + {n_bytes} bytes runs past the end of the file \
                     (data section is {} bytes, from byte {data_start}); the file is truncated or corrupt",
                    t.offset,
                    data.len()
                ),
            ));
        }
    }

    Ok(GgufFile {
        path: path.to_path_buf(),
        version,
        metadata,
        tensors,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::test_util::temp_dir;
    use crate::gguf::write::{encode_gguf, encode_raw, GgufTensorView, RawTensor};
    use crate::tensor::DType;

    fn parse_vec(bytes: Vec<u8>) -> Result<GgufFile> {
        GgufFile::from_bytes(Bytes::from_vec(bytes), Path::new("m.gguf"))
    }

    fn err_of(bytes: Vec<u8>) -> String {
        match parse_vec(bytes) {
            Ok(_) => panic!("parsed a broken file"),
            Err(e) => e.to_string(),
        }
    }

    /// A small valid file: two metadata keys (one an array) and two tensors.
    fn small_file() -> Vec<u8> {
        let q = vec![7u8; 2 * 34];
        let f = vec![1u8; 4 * 3];
        encode_gguf(
            &[
                (
                    "general.architecture".into(),
                    MetaValue::String("llama".into()),
                ),
                (
                    "tokenizer.ggml.tokens".into(),
                    MetaValue::Array(vec![MetaValue::String("a".into()); 3]),
                ),
            ],
            &[
                GgufTensorView::new("blk.0.attn_q.weight", &[2, 32], DType::Q8_0, &q),
                GgufTensorView::new("output_norm.weight", &[3], DType::F32, &f),
            ],
        )
        .unwrap()
    }

    /// The byte offset of the first occurrence of `needle` in `hay`.
    fn find(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).position(|w| w == needle).unwrap()
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_path() {
        let path = temp_dir("missing").join("nope.gguf");
        let err = GgufFile::open(&path).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.gguf"), "{err}");
        let err = GgufFile::open(path.parent().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a folder"), "{err}");
    }

    #[test]
    fn empty_file_on_disk_is_truncated_not_a_crash() {
        let path = temp_dir("empty").join("empty.gguf");
        std::fs::write(&path, b"").unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("empty.gguf") && err.contains("truncated"),
            "{err}"
        );
    }

    #[test]
    fn bad_magic_is_named() {
        let mut b = small_file();
        b[..4].copy_from_slice(b"GGML");
        let err = err_of(b);
        assert!(
            err.contains("m.gguf: not a GGUF file (bad magic \"GGML\""),
            "{err}"
        );
    }

    #[test]
    fn unsupported_versions_are_named() {
        for (v, want) in [
            (1u32, "unsupported GGUF version 1"),
            (4, "unsupported GGUF version 4"),
            (3u32.swap_bytes(), "big-endian"),
        ] {
            let mut b = small_file();
            b[4..8].copy_from_slice(&v.to_le_bytes());
            let err = err_of(b);
            assert!(err.contains(want), "{err}");
        }
        let mut b = small_file();
        b[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(parse_vec(b).unwrap().version, 2);
    }

    #[test]
    fn every_truncation_is_an_error_with_a_byte_position() {
        let full = small_file();
        let f = parse_vec(full.clone()).unwrap();
        let last = f
            .tensors
            .iter()
            .map(|t| t.offset + t.n_bytes().unwrap() as u64)
            .max()
            .unwrap();
        let needed = full.len() - f.data.len() + last as usize;
        for len in 0..full.len() {
            let r = parse_vec(full[..len].to_vec());
            if len >= needed {
                assert!(r.is_ok(), "cut at {len} only drops padding");
                continue;
            }
            let err = r.err().unwrap().to_string();
            let header_cut = len < full.len() - f.data.len();
            let ok = if header_cut {
                err.contains("truncated: ") && err.contains(" at byte ")
            } else {
                err.contains("runs past the end of the file") && err.contains("tensor '")
            };
            assert!(ok, "cut at {len}: {err}");
        }
    }

    #[test]
    fn absurd_counts_fail_fast_without_allocating() {
        // Tensor count, metadata count, string length and array count set to huge values.
        let full = small_file();
        let patches: [(usize, &str); 3] = [
            (8, "18446744073709551615 tensors"),
            (16, "18446744073709551615 metadata entries"),
            (
                24,
                "metadata key #0 of 2 (string) needs 18446744073709551615 bytes at byte 32",
            ),
        ];
        for (at, want) in patches {
            let mut b = full.clone();
            b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            let err = err_of(b);
            assert!(err.contains("truncated") && err.contains(want), "{err}");
        }
        let mut b = full.clone();
        let at = find(&b, b"tokenizer.ggml.tokens") + 21 + 4 + 4; // key, type, element type
        b[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let err = err_of(b);
        assert!(
            err.contains("truncated: array 'tokenizer.ggml.tokens'"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_values_are_named() {
        let full = small_file();
        // Unknown metadata value type.
        let mut b = full.clone();
        let at = find(&b, b"general.architecture") + 20;
        b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
        let err = err_of(b);
        assert!(
            err.contains("'general.architecture': unknown value type 99"),
            "{err}"
        );
        // Unknown array element type.
        let mut b = full.clone();
        let at = find(&b, b"tokenizer.ggml.tokens") + 21 + 4;
        b[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
        let err = err_of(b);
        assert!(err.contains("unknown array element type 77"), "{err}");
        // Too many dims.
        let mut b = full.clone();
        let at = find(&b, b"blk.0.attn_q.weight") + 19;
        b[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
        let err = err_of(b);
        assert!(
            err.contains("'blk.0.attn_q.weight'") && err.contains("9 dims"),
            "{err}"
        );
        // Tensor offset past the end of the data.
        let mut b = full.clone();
        let at = find(&b, b"output_norm.weight") + 18 + 4 + 8 + 4;
        b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let err = err_of(b);
        assert!(
            err.contains("tensor 'output_norm.weight'") && err.contains("runs past the end"),
            "{err}"
        );
        // Offset + size overflows u64.
        let mut b = full;
        b[at..at + 8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        let err = err_of(b);
        assert!(
            err.contains("'output_norm.weight'") && err.contains("runs past the end"),
            "{err}"
        );
    }

    #[test]
    fn duplicates_and_bad_alignment_are_rejected() {
        let one = RawTensor {
            name: "a",
            dims: vec![4],
            ggml_type: 0,
            data: &[0u8; 16],
        };
        let two = RawTensor {
            name: "a",
            dims: vec![4],
            ggml_type: 0,
            data: &[0u8; 16],
        };
        let err = err_of(encode_raw(&[], &[one, two]).unwrap());
        assert!(err.contains("tensor 'a': appears twice"), "{err}");
        // The writer refuses duplicate keys, so patch the second key's name.
        let mut b = encode_raw(
            &[
                ("k.a".into(), MetaValue::U8(1)),
                ("k.b".into(), MetaValue::U8(2)),
            ],
            &[],
        )
        .unwrap();
        let at = find(&b, b"k.b");
        b[at + 2] = b'a';
        let err = err_of(b);
        assert!(err.contains("duplicate metadata key 'k.a'"), "{err}");
        let mut b = encode_raw(&[("general.alignment".into(), MetaValue::U32(32))], &[]).unwrap();
        let at = find(&b, b"general.alignment") + 17 + 4; // key, value type
        b[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        let err = err_of(b);
        assert!(err.contains("'general.alignment'"), "{err}");
    }

    #[test]
    fn rows_that_are_not_whole_blocks_are_rejected() {
        let raw = RawTensor {
            name: "w",
            dims: vec![16, 2],
            ggml_type: 8,
            data: &[0u8; 34],
        };
        let err = err_of(encode_raw(&[], &[raw]).unwrap());
        assert!(
            err.contains("tensor 'w': row length 16 is not a multiple of the Q8_0 block size 32"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_tensor_types_are_named_when_used() {
        // Q2_K (ggml type 10): 84 bytes per 256 values.
        let raw = RawTensor {
            name: "blk.0.ffn_up.weight",
            dims: vec![256, 1],
            ggml_type: 10,
            data: &[0u8; 84],
        };
        let f = parse_vec(encode_raw(&[], &[raw]).unwrap()).unwrap();
        let err = f.tensor("blk.0.ffn_up.weight").unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedTensorType { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("'blk.0.ffn_up.weight'")
                && msg.contains("Q2_K (ggml type 10)")
                && msg.contains(&DType::supported_list()),
            "{msg}"
        );
    }

    #[test]
    fn random_corruption_never_panics() {
        let full = small_file();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut errors = 0;
        for _ in 0..3000 {
            let mut b = full.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            let len = if next() % 4 == 0 {
                (next() % b.len() as u64) as usize
            } else {
                b.len()
            };
            b.truncate(len);
            if let Ok(f) = parse_vec(b) {
                for t in &f.tensors {
                    if let Ok(e) = f.tensor(&t.name) {
                        let _ = e.to_f32();
                    }
                }
            } else {
                errors += 1;
            }
        }
        assert!(
            errors > 100,
            "corruption was never detected ({errors} errors)"
        );
    }
}
