// Causal grouped-query attention forward over `batch` whole sequences, flash style: one
// invocation per (query row, head) walks the keys 0..=i in blocks of KB with an online softmax
// (no score matrix anywhere) and saves the log-sum-exp of the scaled scores. A workgroup holds
// WG consecutive queries of one head, so the key/value rows it reads are the same for all its
// invocations (broadcast loads, straight from storage).
// defs: HD (head dim), WG (queries per workgroup), KB (keys per softmax block).
struct Params { seq: u32, nh: u32, nkv: u32, group: u32, scale: f32, nx: u32, nqb: u32, n_groups: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> k: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<f32>;

const NC: u32 = (HD + 3u) / 4u;             // vec4 chunks per head row (the last one padded)
const NEG: f32 = -1e30;

// e^d for d <= 0 (a score minus a running max), exactly 0 below -87 where f32's e^d is 0 or
// denormal anyway. WGSL's exp() may be arbitrarily wrong for a huge |d| (its error bound grows
// with |d|), and Chromium's SwiftShader is: the masked -1e30 must never reach it.
fn exp_neg(d: f32) -> f32 {
    return select(0.0, exp(max(d, -87.0)), d > -87.0);
}

// Chunk c of a head row at `o` (components past HD read as 0).
fn ld_q(o: u32, c: u32) -> vec4<f32> {
    let b = o + 4u * c;
    return vec4<f32>(q[b], select(0.0, q[b + 1u], 4u * c + 1u < HD),
        select(0.0, q[b + 2u], 4u * c + 2u < HD), select(0.0, q[b + 3u], 4u * c + 3u < HD));
}
fn ld_k(o: u32, c: u32) -> vec4<f32> {
    let b = o + 4u * c;
    return vec4<f32>(k[b], select(0.0, k[b + 1u], 4u * c + 1u < HD),
        select(0.0, k[b + 2u], 4u * c + 2u < HD), select(0.0, k[b + 3u], 4u * c + 3u < HD));
}
fn ld_v(o: u32, c: u32) -> vec4<f32> {
    let b = o + 4u * c;
    return vec4<f32>(v[b], select(0.0, v[b + 1u], 4u * c + 1u < HD),
        select(0.0, v[b + 2u], 4u * c + 2u < HD), select(0.0, v[b + 3u], 4u * c + 3u < HD));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = wid.x + wid.y * p.nx;            // ((b * nh + h) * nqb + query block)
    if (g >= p.n_groups) { return; }
    let qb = g % p.nqb;
    let bh = g / p.nqb;
    let h = bh % p.nh;
    let b = bh / p.nh;
    let kvh = h / p.group;
    let qd = p.nh * HD;
    let kvd = p.nkv * HD;
    let i0 = qb * (WG * QR);
    let n_keys = min(i0 + WG * QR, p.seq);    // keys any query of this workgroup sees
    var qv = array<vec4<f32>, NC * QR>();
    var acc = array<vec4<f32>, NC * QR>();
    var m = array<f32, QR>();
    var l = array<f32, QR>();
    for (var r = 0u; r < QR; r++) {
        let il = min(i0 + r * WG + lid.x, p.seq - 1u);
        let qo = (b * p.seq + il) * qd + h * HD;
        for (var c = 0u; c < NC; c++) { qv[r * NC + c] = ld_q(qo, c) * p.scale; }
        m[r] = NEG;
    }
    let kbase = b * p.seq * kvd + kvh * HD;
    for (var j0 = 0u; j0 < n_keys; j0 += KB) {
        var s = array<f32, KB * QR>();
        var mb = array<f32, QR>();
        for (var r = 0u; r < QR; r++) { mb[r] = m[r]; }
        for (var t = 0u; t < KB; t++) {
            let j = j0 + t;
            if (j < n_keys) {
                let ko = kbase + j * kvd;
                var s4 = array<vec4<f32>, QR>();
                for (var c = 0u; c < NC; c++) {
                    let kc = ld_k(ko, c);
                    for (var r = 0u; r < QR; r++) { s4[r] += qv[r * NC + c] * kc; }
                }
                for (var r = 0u; r < QR; r++) {
                    let sc = select(NEG, (s4[r].x + s4[r].y) + (s4[r].z + s4[r].w),
                        j <= i0 + r * WG + lid.x);
                    s[t * QR + r] = sc;
                    mb[r] = max(mb[r], sc);
                }
            } else {
                for (var r = 0u; r < QR; r++) { s[t * QR + r] = NEG; }
            }
        }
        var corr = array<f32, QR>();
        for (var r = 0u; r < QR; r++) {
            corr[r] = exp_neg(m[r] - mb[r]);
            l[r] *= corr[r];
            m[r] = mb[r];
        }
        for (var c = 0u; c < NC; c++) {
            for (var r = 0u; r < QR; r++) { acc[r * NC + c] *= corr[r]; }
        }
        for (var t = 0u; t < KB; t++) {
            let j = j0 + t;
            if (j < n_keys) {
                var pj = array<f32, QR>();
                for (var r = 0u; r < QR; r++) {
                    pj[r] = exp_neg(s[t * QR + r] - m[r]);
                    l[r] += pj[r];
                }
                let vo = kbase + j * kvd;
                for (var c = 0u; c < NC; c++) {
                    let vc = ld_v(vo, c);
                    for (var r = 0u; r < QR; r++) { acc[r * NC + c] += pj[r] * vc; }
                }
            }
        }
    }
    for (var r = 0u; r < QR; r++) {
        let i = i0 + r * WG + lid.x;
        if (i < p.seq) {
            let qo = (b * p.seq + i) * qd + h * HD;
            let inv = 1.0 / l[r];
            for (var c = 0u; c < NC; c++) {
                let a = acc[r * NC + c] * inv;
                for (var e = 0u; e < 4u; e++) {
                    if (4u * c + e < HD) { out[qo + 4u * c + e] = a[e]; }
                }
            }
            lse[bh * p.seq + i] = m[r] + log(l[r]);
        }
    }
}
