// Attention backward, key side: each invocation owns QR key rows of one kv head and walks the
// queries i >= j of every query head of its group, recomputing P_ij from the saved
// log-sum-exp, and accumulates  dV_j = sum P_ij dO_i,  dK_j = scale * sum P_ij (dO_i . V_j - D_i) Q_i.
// A workgroup holds WG * QR consecutive keys of one kv head, so every query-side row it reads
// is shared by all of them.
// defs: HD, WG, QR.
struct Params { seq: u32, nh: u32, nkv: u32, group: u32, scale: f32, nx: u32, nkb: u32, n_groups: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dk: array<f32>;
@group(0) @binding(2) var<storage, read_write> dv: array<f32>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> k: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<f32>;
@group(0) @binding(6) var<storage, read> dout: array<f32>;
@group(0) @binding(7) var<storage, read> lse: array<f32>;
@group(0) @binding(8) var<storage, read> dsum: array<f32>;

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

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = wid.x + wid.y * p.nx;            // ((b * nkv + kvh) * nkb + key block)
    if (g >= p.n_groups) { return; }
    let kb = g % p.nkb;
    let bk = g / p.nkb;
    let kvh = bk % p.nkv;
    let b = bk / p.nkv;
    let qd = p.nh * HD;
    let kvd = p.nkv * HD;
    let j0 = kb * (WG * QR);
    var kv = array<vec4<f32>, NC * QR>();
    var vv = array<vec4<f32>, NC * QR>();
    var ak = array<vec4<f32>, NC * QR>();
    var av = array<vec4<f32>, NC * QR>();
    for (var r = 0u; r < QR; r++) {
        let jl = min(j0 + r * WG + lid.x, p.seq - 1u);
        let ko = (b * p.seq + jl) * kvd + kvh * HD;
        for (var c = 0u; c < NC; c++) {
            kv[r * NC + c] = ld_k(ko, c) * p.scale;
            vv[r * NC + c] = ld_v(ko, c);
        }
    }
    for (var hh = 0u; hh < p.group; hh++) {
        let h = kvh * p.group + hh;
        let lb = (b * p.nh + h) * p.seq;
        let qbase = b * p.seq * qd + h * HD;
        for (var i = j0; i < p.seq; i++) {
            let qo = qbase + i * qd;
            var s4 = array<vec4<f32>, QR>();
            var t4 = array<vec4<f32>, QR>();
            var qr = array<vec4<f32>, NC>();       // Q_i and dO_i, loaded once
            var dr = array<vec4<f32>, NC>();
            for (var c = 0u; c < NC; c++) {
                let qc = ld_q(qo, c);
                let dc = ld_do(qo, c);
                qr[c] = qc;
                dr[c] = dc;
                for (var r = 0u; r < QR; r++) {
                    s4[r] += kv[r * NC + c] * qc;
                    t4[r] += vv[r * NC + c] * dc;
                }
            }
            let li = lse[lb + i];
            let di = dsum[lb + i];
            var pj = array<f32, QR>();
            var ds = array<f32, QR>();
            for (var r = 0u; r < QR; r++) {
                let sc = (s4[r].x + s4[r].y) + (s4[r].z + s4[r].w);
                let dp = (t4[r].x + t4[r].y) + (t4[r].z + t4[r].w);
                pj[r] = select(0.0, exp(sc - li), i >= j0 + r * WG + lid.x);
                ds[r] = pj[r] * (dp - di);
            }
            for (var c = 0u; c < NC; c++) {
                let qc = qr[c];
                let dc = dr[c];
                for (var r = 0u; r < QR; r++) {
                    av[r * NC + c] += pj[r] * dc;
                    ak[r * NC + c] += ds[r] * qc;
                }
            }
        }
    }
    for (var r = 0u; r < QR; r++) {
        let j = j0 + r * WG + lid.x;
        if (j < p.seq) {
            let ko = (b * p.seq + j) * kvd + kvh * HD;
            for (var c = 0u; c < NC; c++) {
                let a = ak[r * NC + c] * p.scale;
                let w = av[r * NC + c];
                for (var e = 0u; e < 4u; e++) {
                    if (4u * c + e < HD) {
                        dk[ko + 4u * c + e] = a[e];
                        dv[ko + 4u * c + e] = w[e];
                    }
                }
            }
        }
    }
}
