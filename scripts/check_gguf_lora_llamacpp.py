"""Check a llama.cpp LoRA GGUF written by `hone export-adapter --format gguf` in llama.cpp itself
(llama-cpp-python): base GGUF + LoRA logits against hone's logits with the PEFT adapter.

    python -m venv V && V/bin/pip install llama-cpp-python numpy safetensors   # builds llama.cpp
    hone export-adapter -m BASE.gguf --adapter_path OUT/adapter --format gguf -o lora.gguf
    V/bin/python scripts/check_gguf_lora_llamacpp.py --hone HONE --gguf BASE.gguf \
        --adapter OUT/adapter --lora lora.gguf

llama.cpp multiplies quantized weights with 8-bit-quantized activations, so its logits differ
from hone's f32 path by more than rounding even without an adapter. The check therefore
compares like with like: the adapter's effect (tuned minus base logits) in llama.cpp against the
same in hone, relative to its size, and that the greedy next token agrees at every position; it
prints the base-model difference for scale.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

PROMPTS = [
    "a gorgeous , witty , seductive movie . ->",
    "the plot is paper-thin and the jokes fall flat . ->",
]


def hone_logits(hone, gguf, adapter, prompt, tmp):
    out = Path(tmp) / "logits.safetensors"
    cmd = [hone, "logits", "-m", gguf, "-p", prompt, "-o", str(out)]
    if adapter:
        cmd += ["--adapter", adapter]
    subprocess.run(cmd, check=True, capture_output=True)
    t = load_file(str(out))
    return t["input_ids"].astype(np.int64).tolist(), t["logits"]


def llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hone", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--adapter", required=True, help="the PEFT adapter folder")
    ap.add_argument("--lora", required=True, help="the GGUF LoRA written from it")
    ap.add_argument("--tol", type=float, default=0.1, help="relative error of the adapter's effect")
    args = ap.parse_args()

    from llama_cpp import Llama

    kw = dict(model_path=args.gguf, logits_all=True, n_ctx=256, n_threads=2, verbose=False)
    base = Llama(**kw)
    tuned = Llama(lora_path=args.lora, **kw)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for prompt in PROMPTS:
            ids, h_tuned = hone_logits(args.hone, args.gguf, args.adapter, prompt, tmp)
            _, h_base = hone_logits(args.hone, args.gguf, None, prompt, tmp)
            l_tuned = llama_logits(tuned, ids)
            l_base = llama_logits(base, ids)
            scale = np.abs(h_tuned).max()
            effect_h = h_tuned - h_base
            effect_l = l_tuned - l_base
            row = {
                "prompt": prompt,
                "base_rel_diff": float(np.abs(l_base - h_base).max() / scale),
                "tuned_rel_diff": float(np.abs(l_tuned - h_tuned).max() / scale),
                "effect_rel_err": float(np.abs(effect_l - effect_h).max() / np.abs(effect_h).max()),
                "effect_size": float(np.abs(effect_h).max() / scale),
                "same_argmax": bool((l_tuned.argmax(-1) == h_tuned.argmax(-1)).all()),
            }
            print(json.dumps(row))
            if row["effect_rel_err"] > args.tol or not row["same_argmax"]:
                ok = False
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
