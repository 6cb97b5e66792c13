"""Check an adapter written by `hone finetune` in PEFT: it loads with no missing or unexpected
keys, and PEFT's logits with it equal hone's (`hone logits`) on the same base model.

    /work/cache/venv/bin/python scripts/check_finetune_peft.py \
        --hone ~/.cache/hone/target/release/hone \
        --gguf ~/.cache/hone/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --adapter demo-output/adapter [--out tests/fixtures/finetune-peft/result.json]

The base model is the GGUF, dequantized to fp32 by transformers (`gguf_file=`), the same
numbers hone computes with. For each prompt the script runs `hone logits` with and without the
adapter and PEFT's model with and without it, and prints max|diff| / max|ref| of the logits of
every position; it fails when a relative difference exceeds --tol (default 1e-4) or when the
adapter changes PEFT's logits by less than a hundred times the difference (so the check cannot
pass with an adapter that does nothing). Venv: torch, transformers, peft, gguf, safetensors
(ENVIRONMENT.md).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

PROMPTS = [
    "a gorgeous , witty , seductive movie . ->",
    "the plot is paper-thin and the jokes fall flat . ->",
    "The capital of France is",
]


def hone_logits(hone, gguf, adapter, prompt, tmp):
    out = Path(tmp) / "logits.safetensors"
    cmd = [hone, "logits", "-m", gguf, "-p", prompt, "-o", str(out)]
    if adapter:
        cmd += ["--adapter", adapter]
    subprocess.run(cmd, check=True, capture_output=True)
    t = load_file(out)
    return t["input_ids"].to(torch.long), t["logits"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hone", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--out", help="write the measured differences as JSON")
    args = ap.parse_args()

    from peft import PeftModel, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    gguf = Path(args.gguf)
    base = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    adapter_dir = Path(args.adapter)
    stored = load_file(adapter_dir / "adapter_model.safetensors")
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    result = set_peft_model_state_dict(model, stored)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if "lora_" in k]
    assert not unexpected, f"unexpected keys: {unexpected[:5]}"
    assert not missing, f"missing LoRA keys: {missing[:5]}"

    rows = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for prompt in PROMPTS:
            ids, hone_tuned = hone_logits(args.hone, args.gguf, args.adapter, prompt, tmp)
            _, hone_base = hone_logits(args.hone, args.gguf, None, prompt, tmp)
            with torch.no_grad():
                peft_tuned = model(ids[None]).logits[0]
                with model.disable_adapter():
                    peft_base = model(ids[None]).logits[0]
            scale = peft_tuned.abs().max().item()
            d_tuned = (hone_tuned - peft_tuned).abs().max().item() / scale
            d_base = (hone_base - peft_base).abs().max().item() / peft_base.abs().max().item()
            effect = (peft_tuned - peft_base).abs().max().item() / scale
            same_argmax = bool((hone_tuned.argmax(-1) == peft_tuned.argmax(-1)).all())
            row = {
                "prompt": prompt,
                "tokens": int(ids.numel()),
                "rel_diff_with_adapter": d_tuned,
                "rel_diff_base": d_base,
                "adapter_effect": effect,
                "same_argmax": same_argmax,
            }
            rows.append(row)
            print(json.dumps(row))
            if d_tuned > args.tol or d_base > args.tol or effect < 100 * d_tuned or not same_argmax:
                ok = False
    summary = {
        "adapter": str(adapter_dir),
        "tensors": len(stored),
        "tol": args.tol,
        "ok": ok,
        "rows": rows,
        "versions": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "peft": __import__("peft").__version__,
        },
    }
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
