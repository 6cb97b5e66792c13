"""Make the PEFT adapter fixtures that the hone-core `adapter` tests read, with the reference
implementation (peft `LoraConfig` + `get_peft_model` + `save_pretrained`) on the tiny models in
tests/fixtures/hf-tiny-llama and tests/fixtures/hf-tiny-qwen2.

Run from the repository root (paths written into the adapters are relative to it):

    HF_HUB_OFFLINE=1 /work/cache/venv/bin/python scripts/make_peft_fixture.py

It writes
    tests/fixtures/peft/tiny-llama-adapter/   adapter_config.json + adapter_model.safetensors as
        PEFT saved them: r=4, alpha=8, dropout 0.05, target "all-linear", modules_to_save
        ["lm_head"]. A keeps PEFT's own init (kaiming-uniform); B is overwritten with N(0, 0.02)
        from a fixed seed so that the tensor layout is visible to the test.
    tests/fixtures/peft/expected.json   for every case (the one above and a few more, whose
        weights are not kept): the LoraConfig arguments, the adapter_config.json PEFT wrote, and
        every tensor key with its shape; for the kept adapter also value summaries.

The README.md that save_pretrained writes is deleted (a model card, not part of the format).
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "peft"

# (case name, base model folder, LoraConfig kwargs, keep the weights?)
CASES = [
    ("tiny-llama-adapter", "tests/fixtures/hf-tiny-llama",
     dict(r=4, lora_alpha=8, lora_dropout=0.05, target_modules="all-linear",
          modules_to_save=["lm_head"]), True),
    ("llama-qv-rslora-gaussian", "tests/fixtures/hf-tiny-llama",
     dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], use_rslora=True,
          init_lora_weights="gaussian"), False),
    ("llama-suffix-paths-no-init", "tests/fixtures/hf-tiny-llama",
     dict(r=2, lora_alpha=4, target_modules=["self_attn.o_proj", "down_proj"],
          modules_to_save=["embed_tokens"], init_lora_weights=False), False),
    ("qwen2-all-linear", "tests/fixtures/hf-tiny-qwen2",
     dict(r=4, lora_alpha=8, target_modules="all-linear"), False),
]


def summary(t):
    flat = t.detach().reshape(-1).to(torch.float64)
    return {
        "first": [float(x) for x in flat[:4]],
        "last": float(flat[-1]),
        "sum": float(flat.sum()),
        "max_abs": float(flat.abs().max()),
    }


def make_case(name, base, kwargs, keep):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **kwargs))
    if keep:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for pname, p in peft_model.named_parameters():
                if "lora_B" in pname:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    out = OUT / name if keep else Path(tempfile.mkdtemp()) / name
    if out.exists():
        shutil.rmtree(out)
    peft_model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)
    config = json.loads((out / "adapter_config.json").read_text())
    tensors = load_file(out / "adapter_model.safetensors")
    case = {
        "base": base,
        "lora_config": kwargs,
        "adapter_config": config,
        "tensors": {k: list(v.shape) for k, v in sorted(tensors.items())},
    }
    if keep:
        case["summaries"] = {k: summary(v) for k, v in sorted(tensors.items())}
        size = sum(f.stat().st_size for f in out.iterdir())
        assert size < 200_000, f"{out} is {size} bytes"
        print(f"wrote {out} ({size} bytes)")
    else:
        shutil.rmtree(out.parent)
    return case


def main():
    # PEFT stores target_modules as a set; a fixed hash seed keeps the saved order reproducible.
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0", HF_HUB_OFFLINE="1")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    os.chdir(ROOT)
    if not (ROOT / "tests/fixtures/hf-tiny-llama/config.json").exists():
        sys.exit("run scripts/make_hf_fixture.py first")
    OUT.mkdir(parents=True, exist_ok=True)
    import peft

    expected = {"peft_version": peft.__version__, "cases": {}}
    for name, base, kwargs, keep in CASES:
        expected["cases"][name] = make_case(name, base, kwargs, keep)
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT / 'expected.json'}")


if __name__ == "__main__":
    main()
