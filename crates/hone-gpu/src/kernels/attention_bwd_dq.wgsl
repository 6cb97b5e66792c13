// Attention backward, query side: each invocation owns QR query rows of one head, recomputes
// their probabilities from the saved log-sum-exp key by key (j <= i), and accumulates
//   dQ_i = scale * sum_j P_ij (dO_i . V_j - D_i) K_j,   D_i = dO_i . O_i,
// writing D_i to `dsum` for the key-side kernel. A workgroup holds WG * QR consecutive queries
// of one head, so every key/value row it reads is shared by all of them.
// defs: HD, WG, QR.
struct Params { seq: u32, nh: u32, nkv: u32, group: u32, scale: f32, nx: u32, nqb: u32, n_groups: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dq: array<f32>;
@group(0) @binding(2) var<storage, read_write> dsum: array<f32>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> k: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<f32>;
@group(0) @binding(6) var<storage, read> dout: array<f32>;
@group(0) @binding(7) var<storage, read> o: array<f32>;
@group(0) @binding(8) var<storage, read> lse: array<f32>;

const NC: u32 = (HD + 3u) / 4u;             // vec4 chunks per head row (the last one padded)

// Chunk c of a head row at `o` (components past HD read as 0).
fn ld_q(x: u32, c: u32) -> vec4<f32> {
    let b = x + 4u * c;
    return vec4<f32>(q[b], select(0.0, q[b + 1u], 4u * c + 1u < HD),
        select(0.0, q[b + 2u], 4u * c + 2u < HD), select(0.0, q[b + 3u], 4u * c + 3u < HD));
}
fn ld_k(x: u32, c: u32) -> vec4<f32> {
    let b = x + 4u * c;
    return vec4<f32>(k[b], select(0.0, k[b + 1u], 4u * c + 1u < HD),
        select(0.0, k[b + 2u], 4u * c + 2u < HD), select(0.0, k[b + 3u], 4u * c + 3u < HD));
}
fn ld_v(x: u32, c: u32) -> vec4<f32> {
    let b = x + 4u * c;
    return vec4<f32>(v[b], select(0.0, v[b + 1u], 4u * c + 1u < HD),
        select(0.0, v[b + 2u], 4u * c + 2u < HD), select(0.0, v[b + 3u], 4u * c + 3u < HD));
}
fn ld_do(x: u32, c: u32) -> vec4<f32> {
    let b = x + 4u * c;
    return vec4<f32>(dout[b], select(0.0, dout[b + 1u], 4u * c + 1u < HD),
        select(0.0, dout[b + 2u], 4u * c + 2u < HD), select(0.0, dout[b + 3u], 4u * c + 3u < HD));
}
fn ld_o(x: u32, c: u32) -> vec4<f32> {
    let b = x + 4u * c;
    return vec4<f32>(o[b], select(0.0, o[b + 1u], 4u * c + 1u < HD),
        select(0.0, o[b + 2u], 4u * c + 2u < HD), select(0.0, o[b + 3u], 4u * c + 3u < HD));
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
    let n_keys = min(i0 + WG * QR, p.seq);
    var qv = array<vec4<f32>, NC * QR>();
    var dov = array<vec4<f32>, NC * QR>();
    var acc = array<vec4<f32>, NC * QR>();
    var dd = array<f32, QR>();
    var li = array<f32, QR>();
    for (var r = 0u; r < QR; r++) {
        let il = min(i0 + r * WG + lid.x, p.seq - 1u);
        let qo = (b * p.seq + il) * qd + h * HD;
        var d4 = vec4<f32>(0.0);
        for (var c = 0u; c < NC; c++) {
            qv[r * NC + c] = ld_q(qo, c) * p.scale;
            let x = ld_do(qo, c);
            dov[r * NC + c] = x;
            d4 += x * ld_o(qo, c);
        }
        dd[r] = (d4.x + d4.y) + (d4.z + d4.w);
        li[r] = lse[bh * p.seq + il];
    }
    let kbase = b * p.seq * kvd + kvh * HD;
    for (var j = 0u; j < n_keys; j++) {
        let ko = kbase + j * kvd;
        var s4 = array<vec4<f32>, QR>();
        var t4 = array<vec4<f32>, QR>();
        var kr = array<vec4<f32>, NC>();           // K_j, loaded once
        for (var c = 0u; c < NC; c++) {
            let kc = ld_k(ko, c);
            kr[c] = kc;
            let vc = ld_v(ko, c);
            for (var r = 0u; r < QR; r++) {
                s4[r] += qv[r * NC + c] * kc;
                t4[r] += dov[r * NC + c] * vc;
            }
        }
        var ds = array<f32, QR>();
        for (var r = 0u; r < QR; r++) {
            let sc = (s4[r].x + s4[r].y) + (s4[r].z + s4[r].w);
            let dp = (t4[r].x + t4[r].y) + (t4[r].z + t4[r].w);
            let pj = select(0.0, exp(sc - li[r]), j <= i0 + r * WG + lid.x);
            ds[r] = pj * (dp - dd[r]);
        }
        for (var c = 0u; c < NC; c++) {
            let kc = kr[c];
            for (var r = 0u; r < QR; r++) { acc[r * NC + c] += ds[r] * kc; }
        }
    }
    for (var r = 0u; r < QR; r++) {
        let i = i0 + r * WG + lid.x;
        if (i < p.seq) {
            let qo = (b * p.seq + i) * qd + h * HD;
            for (var c = 0u; c < NC; c++) {
                let a = acc[r * NC + c] * p.scale;
                for (var e = 0u; e < 4u; e++) {
                    if (4u * c + e < HD) { dq[qo + 4u * c + e] = a[e]; }
                }
            }
            dsum[bh * p.seq + i] = dd[r];
        }
    }
}
