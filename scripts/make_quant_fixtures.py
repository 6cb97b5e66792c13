"""Reference fixtures for hone-core's GGUF dequantization and q/k un-permutation tests.

Run from the repository root with the reference venv:

    HF_HUB_OFFLINE=1 /work/cache/venv/bin/python scripts/make_quant_fixtures.py [--smollm2 PATH]

Part 1 (always): for every type hone reads (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
Q4_K, Q5_K, Q6_K) build a few deterministic random blocks (random quant bytes; f16 scales and
minimums set to sane values, |d| in [1e-3, 1e-1] with random sign), dequantize them with
gguf-py (`gguf.quants.dequantize`) and write

    tests/fixtures/quant/<type>.bin   raw block bytes
    tests/fixtures/quant/<type>.f32   expected values, little-endian f32

and tests/fixtures/quant/gguf_py_writer.gguf: a GGUF written by gguf-py's GGUFWriter with one
metadata key of every value type (nested arrays too) and one tensor per type holding the
<type>.bin bytes, for the reader/writer interop test (hone must read it and, given the same
keys and tensors in the same order, write the same bytes).

Part 2 (with --smollm2, default .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf if it exists):
load layer 0 of SmolLM2 the way transformers does (`AutoModelForCausalLM.from_pretrained(dir,
gguf_file=name)`, which dequantizes with gguf-py and undoes llama.cpp's q/k row permutation),
and write the first 4 values of every row of model.layers.0.self_attn.q_proj.weight (576 rows)
and k_proj.weight (192 rows) to tests/fixtures/quant/smollm2_layer0_qk_first4.f32
(q rows first, then k rows; little-endian f32).
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "quant"

# name -> (ggml type, values per block, bytes per block, byte offsets of f16 scale fields)
TYPES = {
    "q8_0": (T.Q8_0, 32, 34, [0]),
    "q4_0": (T.Q4_0, 32, 18, [0]),
    "q4_1": (T.Q4_1, 32, 20, [0, 2]),
    "q5_0": (T.Q5_0, 32, 22, [0]),
    "q5_1": (T.Q5_1, 32, 24, [0, 2]),
    "q4_k": (T.Q4_K, 256, 144, [0, 2]),
    "q5_k": (T.Q5_K, 256, 176, [0, 2]),
    "q6_k": (T.Q6_K, 256, 210, [208]),
}


def sane_f16(rng, n):
    """n f16 values with |x| in [1e-3, 1e-1] and random sign, as raw bytes."""
    mag = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), n))
    sign = rng.choice([-1.0, 1.0], n)
    return (mag * sign).astype(np.float16)


def write(name, raw: np.ndarray, values: np.ndarray):
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    values = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    (OUT / f"{name}.bin").write_bytes(raw.tobytes())
    (OUT / f"{name}.f32").write_bytes(values.tobytes())
    print(f"{name}: {raw.size} bytes -> {values.size} values")


def quant_fixtures():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240611)

    # Plain float types: random values, plus zeros, subnormals and infinities for f16/bf16.
    f32 = rng.standard_normal(64).astype("<f4") * np.float32(3.0)
    write("f32", f32.view(np.uint8), dequantize(f32.view(np.uint8), T.F32))

    f16 = rng.standard_normal(64).astype(np.float16)
    f16[:4] = np.array([0.0, -0.0, np.inf, -np.inf], dtype=np.float16)
    f16[4:6] = np.array([6e-8, -3e-5], dtype=np.float16)  # subnormals
    raw = f16.view(np.uint8)
    write("f16", raw, dequantize(raw, T.F16))

    bf = (rng.standard_normal(64).astype("<f4") * np.float32(100.0)).view(np.uint32)
    bf16 = (bf >> 16).astype("<u2")
    bf16[:3] = np.array([0x0000, 0x8000, 0x7F80], dtype="<u2")  # 0, -0, +inf
    raw = bf16.view(np.uint8)
    write("bf16", raw, dequantize(raw, T.BF16))

    for name, (qtype, block, size, scale_offsets) in TYPES.items():
        n_blocks = 4 if block == 256 else 8
        raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
        for off in scale_offsets:
            raw[:, off : off + 2] = sane_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        raw = raw.reshape(-1)
        values = dequantize(raw, qtype).astype(np.float32)
        assert values.size == n_blocks * block and np.all(np.isfinite(values))
        write(name, raw, values)


def gguf_py_writer_fixture():
    """Every metadata type and one tensor per type; see tests in crates/hone-core/src/gguf."""
    from gguf import GGUFValueType as V
    from gguf import GGUFWriter

    path = OUT / "gguf_py_writer.gguf"
    w = GGUFWriter(str(path), "llama")  # writes general.architecture = "llama" first
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float32("test.f32", 0.1)
    w.add_float64("test.f64", -1e300)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo ✓")
    w.add_key_value("test.array_u64", [1, 2**40], V.ARRAY, sub_type=V.UINT64)
    w.add_array("test.array_str", ["a", "", "ü"])
    w.add_array("test.array_f32", [1.5, -2.0])
    w.add_array("test.array_bool", [False, True])
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_tensor("t.f32", np.frombuffer((OUT / "f32.bin").read_bytes(), dtype="<f4").reshape(4, 16))
    w.add_tensor("t.f16", np.frombuffer((OUT / "f16.bin").read_bytes(), dtype="<f2").reshape(2, 2, 16))
    bf16 = np.frombuffer((OUT / "bf16.bin").read_bytes(), dtype=np.uint8).reshape(64, 2)
    w.add_tensor("t.bf16", bf16, raw_dtype=T.BF16)
    for name, (qtype, _block, size, _) in TYPES.items():
        raw = np.frombuffer((OUT / f"{name}.bin").read_bytes(), dtype=np.uint8)
        w.add_tensor(f"t.{name}", raw.reshape(2, -1), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{path.name}: {path.stat().st_size} bytes")


def smollm2_fixture(gguf_path: Path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    attn = model.model.layers[0].self_attn
    q = attn.q_proj.weight.detach().float().numpy()
    k = attn.k_proj.weight.detach().float().numpy()
    assert q.shape == (576, 576) and k.shape == (192, 576), (q.shape, k.shape)
    first4 = np.concatenate([q[:, :4], k[:, :4]], axis=0).astype("<f4")
    path = OUT / "smollm2_layer0_qk_first4.f32"
    path.write_bytes(first4.tobytes())
    print(f"{path.name}: {first4.shape} (q rows 0..576, then k rows 0..192)")


def main():
    default = ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smollm2", type=Path, default=default if default.exists() else None)
    args = ap.parse_args()
    quant_fixtures()
    gguf_py_writer_fixture()
    if args.smollm2 is not None:
        smollm2_fixture(args.smollm2)
    else:
        print("SmolLM2 GGUF not found: q/k fixture not regenerated (run `make models`)", file=sys.stderr)


if __name__ == "__main__":
    main()
