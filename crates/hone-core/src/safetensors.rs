//! safetensors read (memory-mapped natively, validated header, tensors are views into the map)
//! and write (atomic, header padded to 8 bytes like the reference implementation).
//!
//! Format: `u64` little-endian header length `N`, `N` bytes of JSON
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}`, then the
//! data; offsets are relative to the first byte after the header.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::tensor::{Bytes, DType, TensorEntry, WeightStore};

/// Largest JSON header accepted (the reference implementation's limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The safetensors dtypes hone reads and writes.
pub const SUPPORTED_DTYPES: &str = "F32, F16, BF16";

/// Key of the free-form string map in the header.
const METADATA_KEY: &str = "__metadata__";

/// A parsed safetensors file: its tensors (views into the file's bytes, sorted by name) and
/// its `__metadata__` map.
#[derive(Debug, Clone)]
pub struct SafetensorsFile {
    pub path: PathBuf,
    pub metadata: BTreeMap<String, String>,
    pub tensors: Vec<TensorEntry>,
}

impl SafetensorsFile {
    /// Open and validate a safetensors file. Natively the file is memory-mapped and the tensors
    /// point into the map; the file must not be modified while they are alive.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        SafetensorsFile::from_bytes(path, map_file(path)?)
    }

    /// Parse and validate safetensors bytes; `path` only labels errors.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: Bytes) -> Result<Self> {
        parse(path.as_ref(), bytes)
    }

    /// A tensor by name.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tensors[i])
    }

    /// All tensors in a `WeightStore` whose source is this file.
    pub fn into_store(self) -> WeightStore {
        let mut store = WeightStore::new(&self.path);
        for t in self.tensors {
            store.insert(t);
        }
        store
    }
}

/// Read a whole safetensors file into a `WeightStore` (names as stored).
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<WeightStore> {
    Ok(SafetensorsFile::open(path)?.into_store())
}

#[cfg(not(target_arch = "wasm32"))]
fn map_file(path: &Path) -> Result<Bytes> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 8 {
        return Err(too_short(path, len));
    }
    // SAFETY: the map is read-only; like every memory-mapped loader we rely on nobody
    // truncating or rewriting the file while the tensors are in use (documented on `open`).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Bytes::new(std::sync::Arc::new(map)))
}

#[cfg(target_arch = "wasm32")]
fn map_file(path: &Path) -> Result<Bytes> {
    let v = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(Bytes::from_vec(v))
}

fn too_short(path: &Path, len: u64) -> Error {
    Error::format(
        path,
        format!("not a safetensors file: {len} bytes is too short for the 8-byte header length"),
    )
}

/// The safetensors name of a dtype, if safetensors can store it.
pub fn dtype_name(dtype: DType) -> Option<&'static str> {
    match dtype {
        DType::F32 => Some("F32"),
        DType::F16 => Some("F16"),
        DType::BF16 => Some("BF16"),
        _ => None,
    }
}

/// The dtype for a safetensors dtype name, if hone supports it.
pub fn parse_dtype(name: &str) -> Option<DType> {
    match name {
        "F32" => Some(DType::F32),
        "F16" => Some(DType::F16),
        "BF16" => Some(DType::BF16),
        _ => None,
    }
}

fn parse(path: &Path, bytes: Bytes) -> Result<SafetensorsFile> {
    let all = bytes.as_slice();
    if all.len() < 8 {
        return Err(too_short(path, all.len() as u64));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&all[..8]);
    let header_len = u64::from_le_bytes(len_bytes);
    let available = (all.len() - 8) as u64;
    if header_len > available {
        return Err(Error::format(
            path,
            format!(
                "header length {header_len} bytes runs past the end of the file \
                 ({available} bytes follow the 8-byte length); the file is truncated or not safetensors"
            ),
        ));
    }
    if header_len > MAX_HEADER_BYTES {
        return Err(Error::format(
            path,
            format!("header length {header_len} bytes exceeds the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    let header_end = 8 + header_len as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&all[8..header_end])
        .map_err(|e| Error::format(path, format!("invalid JSON header: {e}")))?;
    let data = bytes
        .slice(header_end, all.len() - header_end)
        .ok_or_else(|| Error::format(path, "header end is past the end of the file"))?;

    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(header.len());
    for (name, info) in &header {
        if name == METADATA_KEY {
            metadata = parse_metadata(path, info)?;
            continue;
        }
        tensors.push(parse_tensor(path, name, info, &data)?);
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(SafetensorsFile {
        path: path.to_path_buf(),
        metadata,
        tensors,
    })
}

fn parse_metadata(path: &Path, info: &Value) -> Result<BTreeMap<String, String>> {
    let obj = match info {
        Value::Object(o) => o,
        Value::Null => return Ok(BTreeMap::new()),
        other => {
            return Err(Error::format(
                path,
                format!("header '{METADATA_KEY}' must be a map of strings, got {other}"),
            ))
        }
    };
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let s = v.as_str().ok_or_else(|| {
            Error::format(
                path,
                format!("header '{METADATA_KEY}': value of '{k}' must be a string, got {v}"),
            )
        })?;
        out.insert(k.clone(), s.to_string());
    }
    Ok(out)
}

fn parse_tensor(path: &Path, name: &str, info: &Value, data: &Bytes) -> Result<TensorEntry> {
    let bad = |msg: String| Error::tensor(path, name, msg);
    let obj = info
        .as_object()
        .ok_or_else(|| bad(format!("header entry must be an object, got {info}")))?;
    let dtype_str = obj
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("header entry has no string 'dtype'".into()))?;
    let dtype = parse_dtype(dtype_str).ok_or_else(|| Error::UnsupportedTensorType {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        ty: dtype_str.to_string(),
        supported: SUPPORTED_DTYPES.to_string(),
    })?;
    let shape = uint_list(obj.get("shape"))
        .ok_or_else(|| bad("header entry has no 'shape' list of non-negative integers".into()))?;
    let offsets = uint_list(obj.get("data_offsets"))
        .filter(|o| o.len() == 2)
        .ok_or_else(|| bad("header entry has no 'data_offsets' pair [begin, end]".into()))?;
    let (begin, end) = (offsets[0], offsets[1]);
    if begin > end {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] end before they begin"
        )));
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| dtype.bytes_for(n))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let declared = end - begin;
    if numel != declared {
        return Err(bad(format!(
            "header lies about sizes: {dtype} {shape:?} needs {numel} bytes \
             but data_offsets [{begin}, {end}] declare {declared} bytes"
        )));
    }
    let view = data.slice(begin, declared).ok_or_else(|| {
        bad(format!(
            "data_offsets [{begin}, {end}] run past the end of the data ({} bytes after the header)",
            data.len()
        ))
    })?;
    TensorEntry::new(name, shape, dtype, view).map_err(|e| bad(e.to_string()))
}

fn uint_list(v: Option<&Value>) -> Option<Vec<usize>> {
    v?.as_array()?
        .iter()
        .map(|x| x.as_u64().and_then(|u| usize::try_from(u).ok()))
        .collect()
}

/// A tensor to write: borrowed name, shape, stored type and little-endian bytes.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub dtype: DType,
    pub data: &'a [u8],
}

impl<'a> From<&'a TensorEntry> for TensorView<'a> {
    fn from(t: &'a TensorEntry) -> Self {
        TensorView {
            name: &t.name,
            shape: &t.shape,
            dtype: t.dtype,
            data: t.data.as_slice(),
        }
    }
}

impl<'a> TensorView<'a> {
    /// A view of raw bytes; checked when written.
    pub fn new(name: &'a str, shape: &'a [usize], dtype: DType, data: &'a [u8]) -> Self {
        TensorView {
            name,
            shape,
            dtype,
            data,
        }
    }
}

/// Write `tensors` (and optional `__metadata__`) to `path` atomically: a temporary file in the
/// same folder, fsync, rename. Data are ordered like the reference implementation does (wider
/// types first so every tensor stays aligned, then by name).
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[TensorView<'_>],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let (header, order) = build_header(tensors, metadata).map_err(|m| Error::format(path, m))?;
    write_atomic(path, |w| {
        w.write_all(&header)?;
        for &i in &order {
            w.write_all(tensors[i].data)?;
        }
        Ok(())
    })
}

/// The bytes of a safetensors file holding `tensors` (for the browser, where there is no file).
pub fn serialize_safetensors(
    tensors: &[TensorView<'_>],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let (header, order) = build_header(tensors, metadata).map_err(Error::Invalid)?;
    let total = header.len() + tensors.iter().map(|t| t.data.len()).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&header);
    for &i in &order {
        out.extend_from_slice(tensors[i].data);
    }
    Ok(out)
}

/// The 8-byte length, the padded JSON header, and the order in which to write the data.
fn build_header(
    tensors: &[TensorView<'_>],
    metadata: Option<&BTreeMap<String, String>>,
) -> std::result::Result<(Vec<u8>, Vec<usize>), String> {
    for t in tensors {
        if dtype_name(t.dtype).is_none() {
            return Err(format!(
                "tensor '{}': safetensors cannot store {}; supported: {SUPPORTED_DTYPES} (dequantize first)",
                t.name, t.dtype
            ));
        }
        let need = t
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|n| t.dtype.bytes_for(n));
        if need != Some(t.data.len()) {
            return Err(format!(
                "tensor '{}': {} {:?} needs {:?} bytes, got {}",
                t.name,
                t.dtype,
                t.shape,
                need,
                t.data.len()
            ));
        }
        if t.name == METADATA_KEY {
            return Err(format!("tensor name '{METADATA_KEY}' is reserved"));
        }
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (ta, tb) = (&tensors[a], &tensors[b]);
        dtype_rank(tb.dtype)
            .cmp(&dtype_rank(ta.dtype))
            .then_with(|| ta.name.cmp(tb.name))
    });
    for w in order.windows(2) {
        if tensors[w[0]].name == tensors[w[1]].name {
            return Err(format!("tensor '{}' appears twice", tensors[w[0]].name));
        }
    }

    let json_str = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut json = String::from("{");
    let mut first = true;
    if let Some(md) = metadata {
        json.push_str(&json_str(METADATA_KEY));
        json.push_str(":{");
        for (i, (k, v)) in md.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&json_str(k));
            json.push(':');
            json.push_str(&json_str(v));
        }
        json.push('}');
        first = false;
    }
    let mut offset = 0usize;
    for &i in &order {
        let t = &tensors[i];
        if !first {
            json.push(',');
        }
        first = false;
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        let end = offset + t.data.len();
        json.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            json_str(t.name),
            dtype_name(t.dtype).unwrap_or("?"),
            shape.join(",")
        ));
        offset = end;
    }
    json.push('}');
    // The reference pads the header with spaces so the data start 8-byte aligned.
    let pad = (8 - json.len() % 8) % 8;
    json.extend(std::iter::repeat_n(' ', pad));
    let mut header = Vec::with_capacity(8 + json.len());
    header.extend_from_slice(&(json.len() as u64).to_le_bytes());
    header.extend_from_slice(json.as_bytes());
    Ok((header, order))
}

/// Sort key of the reference writer: wider types first (F32 > BF16 > F16).
fn dtype_rank(d: DType) -> u8 {
    match d {
        DType::F32 => 3,
        DType::BF16 => 2,
        DType::F16 => 1,
        _ => 0,
    }
}

/// Write a file atomically: `fill` writes into a temporary file in the same folder, which is
/// flushed, fsynced and renamed over `path`. On error the temporary file is removed.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::format(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        {
            let file = std::fs::File::create(&tmp)?;
            let mut w = std::io::BufWriter::new(file);
            fill(&mut w)?;
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
        } // closed before the rename (Windows cannot rename an open file)
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    // Make the rename durable; not every platform lets a folder be opened and synced.
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hone-st-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn f16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect()
    }
    fn bf16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect()
    }

    /// Values that the reference fixture script also produces: `i * 0.25 - 1.5`.
    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32 * 0.25 - 1.5).collect()
    }

    fn reference_tensors() -> (Vec<u8>, Vec<u8>, Vec<u8>, BTreeMap<String, String>) {
        // One key only: the reference writes metadata in hash-map order.
        let md = BTreeMap::from([("format".to_string(), "pt \"quoted\"".to_string())]);
        (
            f32_bytes(&ramp(6)),
            f16_bytes(&ramp(5)),
            bf16_bytes(&ramp(3)),
            md,
        )
    }

    #[test]
    fn round_trip_keeps_all_three_dtypes_exact() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("t.safetensors");
        let (a, b, c, mut md) = reference_tensors();
        md.insert("second".into(), "ü\n".into());
        let views = [
            TensorView::new("b.half", &[5], DType::F16, &b),
            TensorView::new("a.float", &[2, 3], DType::F32, &a),
            TensorView::new("c.brain", &[3, 1], DType::BF16, &c),
            TensorView::new("d.empty", &[0, 4], DType::F32, &[]),
        ];
        write_safetensors(&path, &views, Some(&md)).unwrap();
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.metadata, md);
        let names: Vec<_> = f.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a.float", "b.half", "c.brain", "d.empty"]);
        let a2 = f.get("a.float").unwrap();
        assert_eq!((a2.dtype, a2.shape.as_slice()), (DType::F32, &[2, 3][..]));
        assert_eq!(a2.data.as_slice(), &a[..]);
        let b2 = f.get("b.half").unwrap();
        assert_eq!((b2.dtype, b2.data.as_slice()), (DType::F16, &b[..]));
        let c2 = f.get("c.brain").unwrap();
        assert_eq!((c2.dtype, c2.shape.as_slice()), (DType::BF16, &[3, 1][..]));
        assert_eq!(c2.data.as_slice(), &c[..]);
        let decoded: Vec<f32> = c2
            .data
            .as_slice()
            .chunks_exact(2)
            .map(|p| bf16::from_le_bytes([p[0], p[1]]).to_f32())
            .collect();
        assert_eq!(decoded, ramp(3));
        assert_eq!(f.get("d.empty").unwrap().numel(), 0);
        // The header is padded so the data start 8-byte aligned.
        let raw = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(raw[..8].try_into().unwrap());
        assert_eq!(n % 8, 0);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writer_output_matches_the_reference_implementation_byte_for_byte() {
        // Written by scripts/make_hf_fixture.py with safetensors.torch.save_file.
        let want = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/safetensors-ref/mixed.safetensors"
        ))
        .expect("fixture missing: run scripts/make_hf_fixture.py");
        let (a, b, c, md) = reference_tensors();
        let views = [
            TensorView::new("a.float", &[2, 3], DType::F32, &a),
            TensorView::new("b.half", &[5], DType::F16, &b),
            TensorView::new("c.brain", &[3, 1], DType::BF16, &c),
        ];
        let got = serialize_safetensors(&views, Some(&md)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got[8..]),
            String::from_utf8_lossy(&want[8..])
        );
        assert_eq!(got, want);
        // And the reader sees the reference's values.
        let f = SafetensorsFile::from_bytes("mixed.safetensors", Bytes::from_vec(want)).unwrap();
        assert_eq!(f.get("a.float").unwrap().data.as_slice(), &a[..]);
        assert_eq!(f.get("b.half").unwrap().data.as_slice(), &b[..]);
    }

    fn file_with_header(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn parse_err(bytes: Vec<u8>) -> String {
        SafetensorsFile::from_bytes("/x/bad.safetensors", Bytes::from_vec(bytes))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn header_length_past_eof_is_an_error_naming_the_file() {
        let mut v = file_with_header("{}", &[]);
        v[..8].copy_from_slice(&1000u64.to_le_bytes());
        let e = parse_err(v);
        assert!(e.contains("/x/bad.safetensors"), "{e}");
        assert!(
            e.contains("header length 1000 bytes runs past the end"),
            "{e}"
        );
        let e = parse_err(vec![1, 2, 3]);
        assert!(
            e.contains("bad.safetensors") && e.contains("too short"),
            "{e}"
        );
        // A huge length must not overflow anything.
        let mut v = file_with_header("{}", &[]);
        v[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_err(v).contains("runs past the end"));
    }

    #[test]
    fn invalid_json_header_is_an_error_naming_the_file() {
        let e = parse_err(file_with_header("{\"a\": [", &[]));
        assert!(e.contains("/x/bad.safetensors: invalid JSON header"), "{e}");
        let e = parse_err(file_with_header("[1, 2]", &[]));
        assert!(e.contains("invalid JSON header"), "{e}");
        let e = parse_err(file_with_header("{\"w\": {\"dtype\": \"F32\"}}", &[]));
        assert!(e.contains("tensor 'w'") && e.contains("'shape'"), "{e}");
    }

    #[test]
    fn header_that_lies_about_sizes_names_tensor_and_both_sizes() {
        let h = r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#;
        let e = parse_err(file_with_header(h, &[0; 24]));
        assert!(e.contains("/x/bad.safetensors: tensor 'w'"), "{e}");
        assert!(e.contains("header lies about sizes"), "{e}");
        assert!(
            e.contains("needs 24 bytes") && e.contains("declare 20 bytes"),
            "{e}"
        );
        let h = r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[8,4]}}"#;
        assert!(parse_err(file_with_header(h, &[0; 24])).contains("end before they begin"));
        let h = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#;
        assert!(parse_err(file_with_header(h, &[0; 24])).contains("overflows"));
    }

    #[test]
    fn data_offsets_past_eof_are_an_error() {
        let h = r#"{"w":{"dtype":"F16","shape":[4],"data_offsets":[4,12]}}"#;
        let e = parse_err(file_with_header(h, &[0; 10]));
        assert!(e.contains("/x/bad.safetensors: tensor 'w'"), "{e}");
        assert!(e.contains("run past the end of the data (10 bytes"), "{e}");
    }

    #[test]
    fn overlapping_and_unsorted_offsets_are_accepted() {
        let h = r#"{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let f = SafetensorsFile::from_bytes(
            "ok.safetensors",
            Bytes::from_vec(file_with_header(h, &f32_bytes(&[1.0, 2.0]))),
        )
        .unwrap();
        assert_eq!(f.get("b").unwrap().data.as_slice(), &2f32.to_le_bytes());
        assert_eq!(f.get("a").unwrap().numel(), 2);
    }

    #[test]
    fn unsupported_dtype_names_tensor_dtype_and_supported_list() {
        let h = r#"{"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#;
        let e = parse_err(file_with_header(h, &[0; 8]));
        assert!(e.contains("/x/bad.safetensors"), "{e}");
        assert!(e.contains("'ids'") && e.contains("I64"), "{e}");
        assert!(e.contains("F32, F16, BF16"), "{e}");
    }

    #[test]
    fn writer_rejects_wrong_lengths_duplicates_and_quantized_types() {
        let a = f32_bytes(&[1.0, 2.0]);
        let e = serialize_safetensors(&[TensorView::new("w", &[3], DType::F32, &a)], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'w'") && e.contains("got 8"), "{e}");
        let v = TensorView::new("w", &[2], DType::F32, &a);
        let e = serialize_safetensors(&[v, v], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
        let q = [0u8; 20];
        let e = serialize_safetensors(&[TensorView::new("q", &[32], DType::Q4_1, &q)], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot store Q4_1"), "{e}");
    }

    #[test]
    fn truncated_files_never_panic() {
        let (a, b, c, md) = reference_tensors();
        let views = [
            TensorView::new("a", &[2, 3], DType::F32, &a),
            TensorView::new("b", &[5], DType::F16, &b),
            TensorView::new("c", &[3], DType::BF16, &c),
        ];
        let full = serialize_safetensors(&views, Some(&md)).unwrap();
        for cut in 0..full.len() {
            let r = SafetensorsFile::from_bytes("cut", Bytes::from_vec(full[..cut].to_vec()));
            assert!(r.is_err(), "truncated at {cut} parsed");
        }
        // Flip each header byte: an error or a valid parse, never a panic.
        for i in 8..full.len() {
            let mut v = full.clone();
            v[i] ^= 0x5a;
            let _ = SafetensorsFile::from_bytes("flip", Bytes::from_vec(v));
        }
    }
}
