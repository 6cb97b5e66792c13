"""Check that PEFT loads adapters written by hone (`LoraAdapter::save_peft`), with no missing or
unexpected keys, every tensor arriving in the module it names, and the scale hone means.
Not run in CI; run it by hand after changing the adapter writer:

    HONE_PEFT_WRITE_DIR=/tmp/hone-peft cargo test -p hone-core --lib \
        adapter::tests::write_adapters_for_peft_check -- --ignored
    HF_HUB_OFFLINE=1 /work/cache/venv/bin/python scripts/check_peft_adapter.py \
        /tmp/hone-peft/all-linear-lm-head /tmp/hone-peft/qv-rslora-gaussian

A checkpoint folder (`checkpoints/checkpoint-STEP/`) is an adapter folder too and can be
checked the same way. The base model is the adapter's `base_model_name_or_path` unless
--base is given.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def check(adapter_dir: Path, base: str | None):
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = base or cfg["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    ref_logits = model(torch.tensor([[1, 2, 3, 4, 5]])).logits

    peft_model = PeftModel.from_pretrained(model, adapter_dir)
    stored = load_file(adapter_dir / "adapter_model.safetensors")
    # Load the file a second time through PEFT's own key mapping to see what it could not place.
    result = set_peft_model_state_dict(peft_model, stored)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    assert not unexpected, f"{adapter_dir}: unexpected keys {unexpected[:5]}"
    assert not missing, f"{adapter_dir}: adapter keys PEFT expected but the file lacks: {missing[:5]}"

    # Every tensor landed in the module its key names, with the same values.
    state = peft_model.state_dict()
    for key, t in stored.items():
        if ".lora_" in key:
            live = key.replace(".weight", ".default.weight")
        else:  # modules_to_save: base_model.model.lm_head.weight
            mod, _, leaf = key.rpartition(".")
            live = f"{mod}.modules_to_save.default.{leaf}"
        assert live in state, f"{adapter_dir}: {key} has no place ({live})"
        assert torch.equal(state[live], t), f"{adapter_dir}: {key} loaded with other values"

    # The scale PEFT uses is the one hone's config means.
    r, alpha = cfg["r"], cfg["lora_alpha"]
    want = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    n_lora = 0
    for name, module in peft_model.named_modules():
        if isinstance(getattr(module, "scaling", None), dict) and "default" in module.scaling:
            n_lora += 1
            assert abs(module.scaling["default"] - want) < 1e-12, f"{name}: scaling {module.scaling}"
    n_pairs = sum(1 for k in stored if k.endswith("lora_A.weight"))
    assert n_lora == n_pairs, f"{adapter_dir}: PEFT wrapped {n_lora} modules, the file has {n_pairs} pairs"

    # The adapter changes the output (B is nonzero in the check adapters) and merging agrees.
    with torch.no_grad():
        logits = peft_model(torch.tensor([[1, 2, 3, 4, 5]])).logits
        merged = peft_model.merge_and_unload()(torch.tensor([[1, 2, 3, 4, 5]])).logits
    delta = (logits - ref_logits).abs().max().item()
    assert delta > 0, f"{adapter_dir}: the adapter does not change the logits"
    assert torch.allclose(logits, merged, atol=1e-4), f"{adapter_dir}: merged logits differ"
    print(f"{adapter_dir}: PEFT loaded {len(stored)} tensors into {n_lora} LoRA modules, "
          f"no missing/unexpected keys, scaling {want:g}, max logit change {delta:.3g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("adapters", nargs="+", type=Path)
    ap.add_argument("--base", help="base model folder (default: the adapter's base_model_name_or_path)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for d in args.adapters:
        check(d, args.base)


if __name__ == "__main__":
    sys.exit(main())
