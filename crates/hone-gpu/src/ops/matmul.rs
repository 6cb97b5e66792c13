//! Products: `linear_forward` / `linear_backward_input` against frozen weights kept in their
//! stored type (f32, f16, bf16 or GGUF blocks, dequantized inside the kernels), the general f32
//! `gemm` (LoRA products and their gradients) and the `embedding` gather.
//!
//! All kernels are register-blocked: each invocation computes a small block of outputs reading
//! straight from storage, without workgroup memory (the fastest shape on lavapipe, where
//! workgroup memory buys nothing). Tile sizes are the `*_TILE_*` constants below, passed to
//! the WGSL as specialisation constants with the weight type; the tile is unrolled into named
//! variables in the generated kernel body.

use std::sync::{Arc, Mutex};

use hone_core::{DType, Error, Result, TensorEntry};

use crate::buffer::GBuf;
use crate::context::Gpu;
use crate::recorder::{f, grid, Recorder};
use crate::View;

const FWD_SRC: &str = include_str!("../kernels/matmul_fwd.wgsl");
const BWD_SRC: &str = include_str!("../kernels/matmul_bwd.wgsl");
const GEMM_SRC: &str = include_str!("../kernels/matmul_gemm.wgsl");
const EMB_SRC: &str = concat!(
    include_str!("../kernels/embedding.wgsl"),
    include_str!("../kernels/matmul_dtype.wgsl")
);
const DTYPE_SRC: &str = include_str!("../kernels/matmul_dtype.wgsl");
const HALF_SRC: &str = include_str!("../kernels/matmul_half.wgsl");

/// Arithmetic of the products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 multiplies and sums.
    #[default]
    F32,
    /// Mixed precision (`--fp16`): operands rounded to f16 and multiplied in f16 (four at a time
    /// in dot products where the kernel has them), every sum kept in f32; inputs and outputs
    /// stay f32 in memory. A value beyond f16's range becomes ±inf, so that a loss scaler sees
    /// the overflow. Needs `shader-f16`.
    F16,
}

impl Precision {
    /// The `enable` line that must open the kernel (defs come first in the module).
    fn enable(self) -> &'static str {
        match self {
            Precision::F32 => "",
            Precision::F16 => "enable f16;\n",
        }
    }

    /// Refuse f16 on a device without `shader-f16`.
    fn check(self, gpu: &Gpu, name: &str) -> Result<()> {
        if self == Precision::F16 && !gpu.has_f16() {
            return Err(Error::Gpu(format!(
                "{name}: f16 arithmetic needs the shader-f16 feature, which {} does not have",
                gpu.describe()
            )));
        }
        Ok(())
    }
}

/// Invocations per workgroup.
const WG: usize = 64;
/// Forward tiles, (rows of x, rows of W) per invocation, for block-quantized and float weights.
/// Per 32 values of k a quantized row costs about 5 loads, a float row 32, a row of x 32: the
/// tiles keep loads per multiply-add low (the limit on lavapipe, whose loads are per lane).
const FWD_TILE_Q: (usize, usize) = (8, 32);
const FWD_TILE_F: (usize, usize) = (16, 16);
/// Backward tiles, (rows of dy, columns of dx / 4) per invocation; 4 x the second must divide 32.
const BWD_TILE_Q: (usize, usize) = (8, 8);
const BWD_TILE_F: (usize, usize) = (16, 4);
/// gemm tile, (rows, columns) of C per invocation.
const GEMM_TILE: (usize, usize) = (16, 16);

/// The tile along a dimension of `n` items: `tile`, or the power of two covering a smaller `n`
/// (one token during generation does not compute 8 or 16 rows).
fn fit(tile: usize, n: usize) -> usize {
    tile.min(n.next_power_of_two()).max(1)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Body {
    /// linear_forward; whether the weight is block-quantized.
    Fwd(bool),
    /// linear_backward_input; whether the weight is block-quantized.
    Bwd(bool),
    Gemm,
}

/// The source of a kernel for a tile: its template with the unrolled block in place of the
/// `//@BODY` line and the weight readers appended. A function of the tile sizes and of
/// whether the type is quantized, which the defs carry (so the kernel cache's key covers
/// them); generated once.
fn source(body: Body, a: usize, b: usize, prec: Precision) -> Arc<str> {
    type Cache = Vec<((Body, usize, usize, Precision), Arc<str>)>;
    static SOURCES: Mutex<Cache> = Mutex::new(Vec::new());
    let mut cache = SOURCES.lock().unwrap_or_else(|e| e.into_inner());
    let key = (body, a, b, prec);
    if let Some((_, s)) = cache.iter().find(|(k, _)| *k == key) {
        return s.clone();
    }
    let half = Half(prec == Precision::F16);
    let (template, code, dtype) = match body {
        Body::Fwd(q) => (FWD_SRC, fwd_body(a, b, q, half), true),
        Body::Bwd(q) => (BWD_SRC, bwd_body(a, b, q, half), true),
        Body::Gemm => (GEMM_SRC, gemm_body(a, b, half), false),
    };
    let mut s = template.replace("//@BODY", &code);
    if dtype {
        s.push_str(DTYPE_SRC);
    }
    if half.0 {
        s.push_str(HALF_SRC);
    }
    let s: Arc<str> = s.into();
    cache.push((key, s.clone()));
    s
}

/// How generated code rounds operands and accumulates products: plain f32, or (f16) operands
/// rounded with `h1`/`h4` (matmul_half.wgsl), products in f16, sums in f32.
#[derive(Clone, Copy)]
struct Half(bool);

impl Half {
    /// `e` through the conversion `f` in f16, as it is in f32. Used as: `h1`/`h4` on an f32
    /// scalar/vec4 operand that may exceed f16's range (activations, gradients), `vec4<f16>`
    /// on dequantized weights (well inside it), `f32`/`vec4<f32>` on a product added to an f32
    /// accumulator.
    fn wrap(self, f: &str, e: &str) -> String {
        if self.0 {
            format!("{f}({e})")
        } else {
            e.to_string()
        }
    }
}

/// Appends `f(i)` for `i < n` to `s`.
fn each(s: &mut String, n: usize, f: impl Fn(usize) -> String) {
    for i in 0..n {
        s.push_str(&f(i));
    }
}

/// `vec4<f32>` of x[xr{i} + kk + off ..+ 4].
fn x4(i: usize, off: usize) -> String {
    let e = |d: usize| format!("x[xr{i} + kk + {}u]", off + d);
    format!("vec4<f32>({}, {}, {}, {})", e(0), e(1), e(2), e(3))
}

/// Body of matmul_fwd.wgsl for a `tm x tn` tile: accumulators `a{i}_{j}` (row i of x, row j
/// of the weight part).
fn fwd_body(tm: usize, tn: usize, quant: bool, h: Half) -> String {
    let mut s = String::new();
    let stride = if quant { "p.rb" } else { "p.k" };
    each(&mut s, tm, |i| {
        format!("    let xr{i} = min(m0 + {i}u, p.m - 1u) * p.k;\n")
    });
    each(&mut s, tn, |j| {
        format!("    let wr{j} = min(n0 + {j}u, p.n - 1u) * {stride};\n")
    });
    for i in 0..tm {
        each(&mut s, tn, |j| format!("    var a{i}_{j} = 0.0;\n"));
    }
    if quant {
        // Blocks of 32 values; each step takes values 4s..4s+4 and 16+4s..16+4s+4.
        s += "    let nb = p.k / 32u;\n    for (var b = 0u; b < nb; b++) {\n";
        each(&mut s, tn, |j| {
            format!("        let bp{j} = bparams(wr{j}, b);\n")
        });
        s += "        for (var s = 0u; s < 4u; s++) {\n            let kk = b * 32u + 4u * s;\n";
        each(&mut s, tm, |i| {
            format!(
                "            let xl{i} = {};\n            let xh{i} = {};\n",
                h.wrap("h4", &x4(i, 0)),
                h.wrap("h4", &x4(i, 16))
            )
        });
        for j in 0..tn {
            s += &format!(
                "            {{\n                let w = wpair(wr{j}, b, s, bp{j});\n                let w0 = {};\n                let w1 = {};\n",
                h.wrap("vec4<f16>", "w[0]"),
                h.wrap("vec4<f16>", "w[1]")
            );
            each(&mut s, tm, |i| {
                format!(
                    "                a{i}_{j} += {} + {};\n",
                    h.wrap("f32", &format!("dot(xl{i}, w0)")),
                    h.wrap("f32", &format!("dot(xh{i}, w1)"))
                )
            });
            s += "            }\n";
        }
        s += "        }\n    }\n";
    } else {
        s += "    let k4 = p.k & ~3u;\n    for (var kk = 0u; kk < k4; kk += 4u) {\n";
        each(&mut s, tm, |i| {
            format!("        let x{i} = {};\n", h.wrap("h4", &x4(i, 0)))
        });
        for j in 0..tn {
            s += &format!(
                "        {{\n            let e = wr{j} + kk;\n            let w = {};\n",
                h.wrap(
                    "vec4<f16>",
                    "vec4<f32>(wf(e), wf(e + 1u), wf(e + 2u), wf(e + 3u))"
                )
            );
            each(&mut s, tm, |i| {
                format!(
                    "            a{i}_{j} += {};\n",
                    h.wrap("f32", &format!("dot(x{i}, w)"))
                )
            });
            s += "        }\n";
        }
        s += "    }\n    for (var kk = k4; kk < p.k; kk++) {\n";
        each(&mut s, tm, |i| {
            format!(
                "        let x{i} = {};\n",
                h.wrap("h1", &format!("x[xr{i} + kk]"))
            )
        });
        for j in 0..tn {
            s += &format!(
                "        {{\n            let w = {};\n",
                h.wrap("h1", &format!("wf(wr{j} + kk)"))
            );
            each(&mut s, tm, |i| {
                format!(
                    "            a{i}_{j} += {};\n",
                    h.wrap("f32", &format!("x{i} * w"))
                )
            });
            s += "        }\n";
        }
        s += "    }\n";
    }
    for i in 0..tm {
        s += &format!(
            "    if (m0 + {i}u < p.m) {{\n        let yo = (m0 + {i}u) * p.ldy + p.col0 + n0;\n"
        );
        each(&mut s, tn, |j| {
            format!(
                "        if (n0 + {j}u < p.n) {{\n            var v = a{i}_{j};\n            if (bias_on) {{ v += bias[p.col0 + n0 + {j}u]; }}\n            if (acc_on) {{ v += y[yo + {j}u]; }}\n            y[yo + {j}u] = v;\n        }}\n"
            )
        });
        s += "    }\n";
    }
    s
}

/// Body of matmul_bwd.wgsl for a tile of `tm` rows x `4 * tkv` columns: accumulators
/// `a{i}_{v}` (row i, columns 4v..4v+4).
fn bwd_body(tm: usize, tkv: usize, quant: bool, h: Half) -> String {
    let tk = 4 * tkv;
    let mut s = String::new();
    each(&mut s, tm, |i| {
        format!("    let yr{i} = min(m0 + {i}u, p.m - 1u) * p.ldy + p.col0;\n")
    });
    for i in 0..tm {
        each(&mut s, tkv, |v| {
            format!("    var a{i}_{v} = vec4<f32>(0.0);\n")
        });
    }
    if quant {
        s += "    let b = k0 / 32u;\n    let t0 = (k0 & 31u) / 4u;\n";
        s += "    for (var n = 0u; n < p.n; n++) {\n        let rb = n * p.rb;\n        let bp = bparams(rb, b);\n";
        if tkv == 8 {
            // The whole block: nibble pairs read once.
            for q in 0..4 {
                s += &format!(
                    "        let wp{q} = wpair(rb, b, {q}u, bp);\n        let w{q} = {};\n        let w{} = {};\n",
                    h.wrap("vec4<f16>", &format!("wp{q}[0]")),
                    q + 4,
                    h.wrap("vec4<f16>", &format!("wp{q}[1]"))
                );
            }
        } else {
            each(&mut s, tkv, |v| {
                format!(
                    "        let w{v} = {};\n",
                    h.wrap("vec4<f16>", &format!("wv(rb, b, t0 + {v}u, bp)"))
                )
            });
        }
    } else {
        // Columns past k read the last one and are not stored.
        each(&mut s, tk, |c| {
            format!("    let kc{c} = min(k0 + {c}u, p.k - 1u);\n")
        });
        s += "    for (var n = 0u; n < p.n; n++) {\n        let e = n * p.k;\n";
        each(&mut s, tkv, |v| {
            let c = 4 * v;
            let w = format!(
                "vec4<f32>(wf(e + kc{c}), wf(e + kc{}), wf(e + kc{}), wf(e + kc{}))",
                c + 1,
                c + 2,
                c + 3
            );
            format!("        let w{v} = {};\n", h.wrap("vec4<f16>", &w))
        });
    }
    for i in 0..tm {
        s += &format!(
            "        let d{i} = {};\n",
            h.wrap("h1", &format!("dy[yr{i} + n]"))
        );
        each(&mut s, tkv, |v| {
            format!(
                "        a{i}_{v} += {};\n",
                h.wrap("vec4<f32>", &format!("d{i} * w{v}"))
            )
        });
    }
    s += "    }\n";
    for i in 0..tm {
        s += &format!("    if (m0 + {i}u < p.m) {{\n        let o = (m0 + {i}u) * p.k + k0;\n");
        each(&mut s, tk, |c| {
            format!(
                "        if (k0 + {c}u < p.k) {{\n            var v = a{i}_{}[{}];\n            if (acc_on) {{ v += dx[o + {c}u]; }}\n            dx[o + {c}u] = v;\n        }}\n",
                c / 4,
                c % 4
            )
        });
        s += "    }\n";
    }
    s
}

/// Body of matmul_gemm.wgsl for a `tm x tn` tile: accumulators `c{i}_{j}`.
fn gemm_body(tm: usize, tn: usize, h: Half) -> String {
    let mut s = String::new();
    // Element (i, q) of op(A) is A[ai{i} + q * sa], element (q, j) of op(B) is B[bj{j} + q * sb].
    each(&mut s, tm, |i| {
        format!(
            "    let ai{i} = select(min(m0 + {i}u, p.m - 1u) * p.k, min(m0 + {i}u, p.m - 1u), TA);\n"
        )
    });
    each(&mut s, tn, |j| {
        format!(
            "    let bj{j} = select(min(n0 + {j}u, p.n - 1u), min(n0 + {j}u, p.n - 1u) * p.k, TB);\n"
        )
    });
    s += "    let sa = select(1u, p.m, TA);\n    let sb = select(p.n, 1u, TB);\n";
    for i in 0..tm {
        each(&mut s, tn, |j| format!("    var c{i}_{j} = 0.0;\n"));
    }
    s += "    for (var q = 0u; q < p.k; q++) {\n        let ao = q * sa;\n        let bo = q * sb;\n";
    each(&mut s, tm, |i| {
        format!(
            "        let a{i} = {};\n",
            h.wrap("h1", &format!("A[ai{i} + ao]"))
        )
    });
    for j in 0..tn {
        s += &format!(
            "        {{\n            let b = {};\n",
            h.wrap("h1", &format!("B[bj{j} + bo]"))
        );
        each(&mut s, tm, |i| {
            format!(
                "            c{i}_{j} += {};\n",
                h.wrap("f32", &format!("a{i} * b"))
            )
        });
        s += "        }\n";
    }
    s += "    }\n";
    for i in 0..tm {
        s += &format!("    if (m0 + {i}u < p.m) {{\n        let o = (m0 + {i}u) * p.n + n0;\n");
        each(&mut s, tn, |j| {
            format!(
                "        if (n0 + {j}u < p.n) {{\n            var v = p.alpha * c{i}_{j};\n            if (p.beta != 0.0) {{ v += p.beta * C[o + {j}u]; }}\n            C[o + {j}u] = v;\n        }}\n"
            )
        });
        s += "    }\n";
    }
    s
}

/// The kernels' code for a weight type (`DT_*` in matmul_dtype.wgsl).
fn dt_code(d: DType) -> u32 {
    match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::Q8_0 => 3,
        DType::Q4_0 => 4,
        DType::Q4_1 => 5,
        DType::Q5_0 => 6,
        DType::Q5_1 => 7,
        DType::Q4K => 8,
        DType::Q5K => 9,
        DType::Q6K => 10,
    }
}

/// One row range of a weight in one buffer.
#[derive(Debug)]
struct Part {
    /// First row held.
    r0: usize,
    rows: usize,
    buf: GBuf,
}

/// A frozen weight `[rows = out features N, cols = in features K]` kept in its stored type in
/// GPU memory (GGUF block bytes uploaded as they are), dequantized inside the kernels.
#[derive(Debug)]
pub struct GpuWeight {
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    /// Row ranges, each within one storage binding, in order.
    parts: Vec<Part>,
}

impl GpuWeight {
    /// Upload a 2-D tensor in its stored type.
    pub fn upload(gpu: &Gpu, t: &TensorEntry) -> Result<GpuWeight> {
        Self::upload_with_max_part(gpu, t, gpu.max_binding())
    }

    /// `upload` with parts of at most `max_part_bytes` (test seam for the split path).
    #[doc(hidden)]
    pub fn upload_with_max_part(
        gpu: &Gpu,
        t: &TensorEntry,
        max_part_bytes: u64,
    ) -> Result<GpuWeight> {
        if t.shape.len() != 2 {
            return Err(Error::Gpu(format!(
                "{}: a GPU weight must be 2-D, got shape {:?}",
                t.name, t.shape
            )));
        }
        let (rows, cols) = (t.shape[0], t.shape[1]);
        Self::from_bytes(
            gpu,
            &t.name,
            t.dtype,
            rows,
            cols,
            t.data.as_slice(),
            max_part_bytes,
        )
    }

    /// An f32 weight from values (row-major `[rows, cols]`).
    pub fn from_f32(
        gpu: &Gpu,
        name: &str,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<GpuWeight> {
        if data.len() != rows * cols {
            return Err(Error::Gpu(format!(
                "{name}: {} values for a [{rows}, {cols}] weight",
                data.len()
            )));
        }
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_bytes(gpu, name, DType::F32, rows, cols, &bytes, gpu.max_binding())
    }

    fn from_bytes(
        gpu: &Gpu,
        name: &str,
        dtype: DType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
        max_part_bytes: u64,
    ) -> Result<GpuWeight> {
        if rows == 0 || cols == 0 {
            return Err(Error::Gpu(format!("{name}: empty weight [{rows}, {cols}]")));
        }
        if dtype.is_quantized() && !cols.is_multiple_of(dtype.block_size()) {
            return Err(Error::Gpu(format!(
                "{name}: row length {cols} is not a multiple of the {dtype} block size {}",
                dtype.block_size()
            )));
        }
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        if rows.checked_mul(row_bytes) != Some(bytes.len()) {
            return Err(Error::Gpu(format!(
                "{name}: [{rows}, {cols}] of {dtype} needs {} bytes, got {}",
                rows.saturating_mul(row_bytes),
                bytes.len()
            )));
        }
        let max_part = max_part_bytes.min(gpu.max_binding()).min(u32::MAX as u64) as usize;
        let rows_per_part = max_part / row_bytes;
        if rows_per_part == 0 {
            return Err(Error::Gpu(format!(
                "{name}: one row of {row_bytes} bytes exceeds the largest storage binding ({max_part} bytes)"
            )));
        }
        let mut parts = Vec::new();
        let mut r0 = 0;
        while r0 < rows {
            let n = rows_per_part.min(rows - r0);
            let label = format!("{name}[{r0}..{}]", r0 + n);
            let buf = gpu.upload_bytes(&label, &bytes[r0 * row_bytes..(r0 + n) * row_bytes])?;
            parts.push(Part { r0, rows: n, buf });
            r0 += n;
        }
        Ok(GpuWeight {
            name: name.to_string(),
            dtype,
            rows,
            cols,
            parts,
        })
    }

    /// GPU memory held, in bytes.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.buf.bytes()).sum()
    }

    /// Number of buffers the rows are split into.
    #[doc(hidden)]
    pub fn n_parts(&self) -> usize {
        self.parts.len()
    }

    /// Bytes per row.
    fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// The specialisation shared by the weight kernels.
    fn dtype_defs(&self) -> String {
        format!(
            "const DT: u32 = {}u;\nconst QUANT: bool = {};\nconst WG: u32 = {WG}u;\n",
            dt_code(self.dtype),
            self.dtype.is_quantized()
        )
    }
}

/// Check that view `v` holds at least `n` f32/u32 elements.
fn need(v: &View<'_>, n: usize, what: &str, name: &str) -> Result<()> {
    if (v.size / 4) < n as u64 {
        return Err(Error::Gpu(format!(
            "{name}: {what} holds {} values, needs {n}",
            v.size / 4
        )));
    }
    Ok(())
}

/// Sizes passed to kernels are u32.
fn fits_u32(n: usize, what: &str, name: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Gpu(format!("{name}: {what} {n} is too large")))
}

/// `y[m, n] (= or +=) x[m, k] · Wᵀ (+ bias[n])`: x is `[m, K]` row-major, y is `[m, N]`.
pub fn linear_forward(
    rec: &mut Recorder<'_>,
    y: View<'_>,
    x: View<'_>,
    w: &GpuWeight,
    bias: Option<View<'_>>,
    m: usize,
    accumulate: bool,
) -> Result<()> {
    linear_forward_prec(rec, y, x, w, bias, m, accumulate, Precision::F32)
}

/// `linear_forward` in the arithmetic `prec`.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward_prec(
    rec: &mut Recorder<'_>,
    y: View<'_>,
    x: View<'_>,
    w: &GpuWeight,
    bias: Option<View<'_>>,
    m: usize,
    accumulate: bool,
    prec: Precision,
) -> Result<()> {
    let (n, k) = (w.rows, w.cols);
    let name = &w.name;
    if m == 0 {
        return Ok(());
    }
    prec.check(rec.gpu(), name)?;
    need(&x, m * k, "the input x", name)?;
    need(&y, m * n, "the output y", name)?;
    if let Some(b) = &bias {
        need(b, n, "the bias", name)?;
    }
    fits_u32(m * k.max(n), "m x features", name)?;
    let gpu = rec.gpu();
    let (tm, tn) = if w.dtype.is_quantized() {
        FWD_TILE_Q
    } else {
        FWD_TILE_F
    };
    let tm = fit(tm, m);
    let defs = format!(
        "{}{}const TM: u32 = {tm}u;\nconst TN: u32 = {tn}u;\n",
        prec.enable(),
        w.dtype_defs()
    );
    let kern = gpu.kernel(
        "linear_forward",
        &source(Body::Fwd(w.dtype.is_quantized()), tm, tn, prec),
        &defs,
    )?;
    let rb = w.row_bytes() as u32;
    let tiles_m = m.div_ceil(tm);
    for part in &w.parts {
        let tiles_n = part.rows.div_ceil(tn);
        let (g, nx) = grid(gpu, tiles_m * tiles_n, WG)?;
        let params = [
            m as u32,
            k as u32,
            part.rows as u32,
            n as u32,
            part.r0 as u32,
            rb,
            tiles_n as u32,
            nx,
            accumulate as u32 | (bias.is_some() as u32) << 1,
        ];
        // Without a bias, x stands in for the (unread) bias binding.
        let b = bias.unwrap_or(x);
        rec.dispatch(&kern, &params, &[y, x, part.buf.view(), b], g);
    }
    Ok(())
}

/// `dx[m, k] (= or +=) dy[m, n] · W` (backward of `linear_forward` for the input; W is frozen).
pub fn linear_backward_input(
    rec: &mut Recorder<'_>,
    dx: View<'_>,
    dy: View<'_>,
    w: &GpuWeight,
    m: usize,
    accumulate: bool,
) -> Result<()> {
    linear_backward_input_prec(rec, dx, dy, w, m, accumulate, Precision::F32)
}

/// `linear_backward_input` in the arithmetic `prec`.
pub fn linear_backward_input_prec(
    rec: &mut Recorder<'_>,
    dx: View<'_>,
    dy: View<'_>,
    w: &GpuWeight,
    m: usize,
    accumulate: bool,
    prec: Precision,
) -> Result<()> {
    let (n, k) = (w.rows, w.cols);
    let name = &w.name;
    if m == 0 {
        return Ok(());
    }
    prec.check(rec.gpu(), name)?;
    need(&dy, m * n, "the output gradient dy", name)?;
    need(&dx, m * k, "the input gradient dx", name)?;
    fits_u32(m * k.max(n), "m x features", name)?;
    let gpu = rec.gpu();
    let (tm, tkv) = if w.dtype.is_quantized() {
        BWD_TILE_Q
    } else {
        BWD_TILE_F
    };
    let tm = fit(tm, m);
    let tk = 4 * tkv;
    let tiles = m.div_ceil(tm) * k.div_ceil(tk);
    let (g, nx) = grid(gpu, tiles, WG)?;
    let rb = w.row_bytes() as u32;
    let defs = format!(
        "{}{}const TM: u32 = {tm}u;\nconst TKV: u32 = {tkv}u;\n",
        prec.enable(),
        w.dtype_defs()
    );
    let src = source(Body::Bwd(w.dtype.is_quantized()), tm, tkv, prec);
    let kern = gpu.kernel("linear_backward_input", &src, &defs)?;
    for (i, part) in w.parts.iter().enumerate() {
        // Parts after the first add to what the first wrote.
        let acc = accumulate || i > 0;
        let params = [
            m as u32,
            k as u32,
            part.rows as u32,
            n as u32,
            part.r0 as u32,
            rb,
            k.div_ceil(tk) as u32,
            nx,
            acc as u32,
        ];
        rec.dispatch(&kern, &params, &[dx, dy, part.buf.view()], g);
    }
    Ok(())
}

/// Shape of a general product: `op(A)` is `[m, k]` (A stored `[m, k]`, or `[k, m]` when
/// `trans_a`), `op(B)` is `[k, n]` (B stored `[k, n]`, or `[n, k]` when `trans_b`).
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// `C[m, n] = alpha · op(A) · op(B) + beta · C`, f32 row-major; with `beta = 0` C's old
/// contents are not read (NaN-safe).
pub fn gemm(
    rec: &mut Recorder<'_>,
    c: View<'_>,
    a: View<'_>,
    b: View<'_>,
    g: Gemm,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    gemm_prec(rec, c, a, b, g, alpha, beta, Precision::F32)
}

/// `gemm` in the arithmetic `prec` (alpha, beta and C's update stay f32).
#[allow(clippy::too_many_arguments)]
pub fn gemm_prec(
    rec: &mut Recorder<'_>,
    c: View<'_>,
    a: View<'_>,
    b: View<'_>,
    g: Gemm,
    alpha: f32,
    beta: f32,
    prec: Precision,
) -> Result<()> {
    let name = "gemm";
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    prec.check(rec.gpu(), name)?;
    need(&c, g.m * g.n, "C", name)?;
    need(&a, g.m * g.k, "A", name)?;
    need(&b, g.k * g.n, "B", name)?;
    fits_u32(g.m * g.n.max(g.k), "m x n/k", name)?;
    fits_u32(g.k * g.n, "k x n", name)?;
    let gpu = rec.gpu();
    let (tm, tn) = (fit(GEMM_TILE.0, g.m), fit(GEMM_TILE.1, g.n));
    let defs = format!(
        "{}const TA: bool = {};\nconst TB: bool = {};\nconst TM: u32 = {tm}u;\nconst TN: u32 = {tn}u;\nconst WG: u32 = {WG}u;\n",
        prec.enable(),
        g.trans_a,
        g.trans_b
    );
    let kern = gpu.kernel("gemm", &source(Body::Gemm, tm, tn, prec), &defs)?;
    let tiles_n = g.n.div_ceil(tn);
    let (grid_, nx) = grid(gpu, g.m.div_ceil(tm) * tiles_n, WG)?;
    let params = [
        g.m as u32,
        g.n as u32,
        g.k as u32,
        tiles_n as u32,
        nx,
        f(alpha),
        f(beta),
    ];
    rec.dispatch(&kern, &params, &[c, a, b], grid_);
    Ok(())
}

/// `out[t, :] = table[ids[t], :]` dequantized, for `t < n_tokens` (`ids` is a u32 buffer); an
/// id past the table's rows gives a row of zeros.
pub fn embedding(
    rec: &mut Recorder<'_>,
    out: View<'_>,
    ids: View<'_>,
    table: &GpuWeight,
    n_tokens: usize,
) -> Result<()> {
    let name = &table.name;
    if n_tokens == 0 {
        return Ok(());
    }
    let k = table.cols;
    need(&ids, n_tokens, "the token ids", name)?;
    need(&out, n_tokens * k, "the output", name)?;
    fits_u32(n_tokens * k, "tokens x columns", name)?;
    let gpu = rec.gpu();
    let kern = gpu.kernel("embedding", EMB_SRC, &table.dtype_defs())?;
    let (g, nx) = grid(gpu, n_tokens * k.div_ceil(4), WG)?;
    let rb = table.row_bytes() as u32;
    for (i, part) in table.parts.iter().enumerate() {
        let params = [
            n_tokens as u32,
            k as u32,
            part.r0 as u32,
            (part.r0 + part.rows) as u32,
            table.rows as u32,
            rb,
            (i == 0) as u32,
            nx,
        ];
        rec.dispatch(&kern, &params, &[out, ids, part.buf.view()], g);
    }
    Ok(())
}
