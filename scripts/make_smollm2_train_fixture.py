"""Make the SmolLM2-135M training fixture that crates/hone-cpu/tests/train_smollm2.rs compares
the CPU engine against: the first step's loss and the layer-0 LoRA gradients of PyTorch + PEFT
on the real model (the Q4_1 GGUF, dequantized to fp32 by transformers).

Run from anywhere (about 1.5 minutes on 2 CPU cores; venv: torch 2.15.0, transformers 5.23.0,
peft 0.21.2, gguf, safetensors; see ENVIRONMENT.md):

    HF_HUB_OFFLINE=1 /work/cache/venv/bin/python scripts/make_smollm2_train_fixture.py \
        [SMOLLM2_GGUF]

SMOLLM2_GGUF defaults to $HONE_SMOLLM2_GGUF, then ~/.cache/hone/models/SmolLM2-135M-Instruct.Q4_1.gguf
(`make models` downloads it).

Setup: PEFT LoRA r=8, lora_alpha=16 (scale 2), dropout 0, on the seven projections (q, k, v, o,
gate, up, down) of all 30 layers. Every lora_A / lora_B is set by a formula that the Rust test
reproduces bit for bit (`lora_init` below, f64 arithmetic then one rounding to f32):

    value[i] = AMP * sin(FREQ * i + CHIRP * i * i + PHASE * j)

with i the row-major element index inside the tensor (A is [r, in], B is [out, r]) and j the
tensor's index in this order: layer l = 0..29, projection p in (q, k, v, o, gate, up, down),
A before B, j = 14 * l + 2 * p + (0 for A, 1 for B). The quadratic ("chirp") term keeps the
matrices full rank (a plain sin(a * i + c) would make every A and B rank 2). sin is Python's
math.sin, i.e. the C library's, which Rust's f64::sin also calls.

Batch: the first two rows of examples/polarity.jsonl rendered as "{phrase} -> {tone}", tokenized
by the GGUF's tokenizer (no special tokens added) with eos appended, right-padded with eos to
the longer row; labels are the ids with -100 on the padding. No attention mask is passed: with
causal attention the padding at the end of a row cannot reach any position that carries a label.

Loss: HF's definition (logits shifted by one, mean cross-entropy over the labels that are not
-100), but with the log-softmax taken in float64 on the fp32 model's logits. torch's float32
CPU log_softmax (what `model(labels=...).loss` uses) is biased on this 49152-token vocabulary:
it returns log-probabilities ~1.4e-5 too high at the targets (the loss is 3e-6 relative too
low), and since the model is confident on some tokens, where the gradient at the logits is a
small difference, that bias grows to 7e-5 (layer 0) .. 1e-3 (layer 29) relative in the LoRA
gradients. With the float64 log-softmax the fp32 reference is within ~1e-5 of a float64 run
of the whole model; both numbers are recorded. Everything else runs in fp32.

It writes tests/fixtures/train/smollm2-layer0/:
    fixture.json        the texts, input ids and labels (batch x seq, flattened), the loss, its
                        NLL sum and token count, HF's own float32 loss (`hf_loss_f32`), the
                        float64 model's loss and, per layer-0 tensor, the fp32 reference's
                        max |g32 - g64| / max |g64| (`reference_vs_f64`), the LoRA and formula
                        parameters, the versions of torch / transformers / peft, and the GGUF's
                        name, size and sha256.
    grads.safetensors   f32 gradients of the 14 layer-0 LoRA tensors under PEFT's names
                        (base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight, ...)
                        after one backward of the mean loss.
"""

import hashlib
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import peft
import torch
import torch.nn.functional as F
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "train" / "smollm2-layer0"
PROJS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODULES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
           "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
RANK, ALPHA = 8, 16
AMP, FREQ, CHIRP, PHASE = 0.03, 0.37, 1.1e-3, 1.3
ROWS = 2


def lora_init(n, j):
    """The formula's values for tensor j, n elements, as float32."""
    vals = [AMP * math.sin(FREQ * i + CHIRP * i * i + PHASE * j) for i in range(n)]
    return torch.tensor(vals, dtype=torch.float64).to(torch.float32)


def default_gguf():
    env = os.environ.get("HONE_SMOLLM2_GGUF")
    if env:
        return env
    return os.path.expanduser("~/.cache/hone/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(gguf):
    d, name = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    )
    # transformers 5.x leaves a GgufHfQuantizer attached although every weight is a plain fp32
    # tensor (see ../shared/anchors/smollm2_gguf_to_hf.py); it would mark the model as not
    # trainable for PEFT. Check, then detach it.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any("Gguf" in type(m).__name__ for m in model.modules())
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return tok, model


def batch(tok):
    lines = (ROOT / "examples" / "polarity.jsonl").read_text().splitlines()[:ROWS]
    texts = [
        "{phrase} -> {tone}".format(**json.loads(line)) for line in lines
    ]
    eos = tok.eos_token_id
    rows = [tok(t, add_special_tokens=False).input_ids + [eos] for t in texts]
    seq = max(len(r) for r in rows)
    ids = [r + [eos] * (seq - len(r)) for r in rows]
    labels = [r + [-100] * (seq - len(r)) for r in rows]
    return texts, eos, torch.tensor(ids), torch.tensor(labels)


def main():
    gguf = sys.argv[1] if len(sys.argv) > 1 else default_gguf()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    tok, model = load(gguf)
    cfg = model.config
    assert cfg.num_hidden_layers == 30 and cfg.tie_word_embeddings
    config = LoraConfig(
        task_type="CAUSAL_LM", r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=PROJS
    )
    model = get_peft_model(model, config)
    model.train()

    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    names = {}
    with torch.no_grad():
        for layer in range(cfg.num_hidden_layers):
            for p, proj in enumerate(PROJS):
                for k, kind in enumerate(["lora_A", "lora_B"]):
                    key = (f"base_model.model.model.layers.{layer}.{MODULES[proj]}.{proj}"
                           f".{kind}.default.weight")
                    t = params[key]
                    j = 14 * layer + 2 * p + k
                    t.copy_(lora_init(t.numel(), j).reshape(t.shape))
                    names[key] = key.replace(".default", "")
    assert set(names) == trainable, "the formula must cover exactly the trainable tensors"

    texts, eos, ids, labels = batch(tok)
    tokens = int((labels[:, 1:] != -100).sum())

    def step():
        """One forward + backward; (HF's own loss, NLL sum, mean loss, layer-0 gradients)."""
        model.zero_grad()
        out = model(input_ids=ids, labels=labels)
        nll_sum = F.cross_entropy(
            out.logits[:, :-1].double().reshape(-1, out.logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        loss = nll_sum / tokens
        loss.backward()
        grads = {}
        for key, peft_key in names.items():
            g = params[key].grad
            assert g is not None and bool((g != 0).any()), f"{key}: zero gradient"
            if ".layers.0." in key:
                grads[peft_key] = g.detach().float().contiguous()
        assert len(grads) == 14
        return out.loss.item(), nll_sum.item(), loss.item(), grads

    hf_loss, nll_sum, loss, grads = step()
    # The same step with the whole model in float64: how far the fp32 reference itself is from
    # the exact gradients (the floor of any fp32 comparison).
    model.double()
    _, _, loss64, grads64 = step()
    model.float()
    reference_vs_f64 = {
        k: float((grads[k].double() - g).abs().max() / g.abs().max()) for k, g in grads64.items()
    }

    OUT.mkdir(parents=True, exist_ok=True)
    save_file(grads, str(OUT / "grads.safetensors"))
    fixture = {
        "model": {
            "file": os.path.basename(gguf),
            "size": os.path.getsize(gguf),
            "sha256": sha256(gguf),
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "lora": {"rank": RANK, "alpha": ALPHA, "dropout": 0.0, "targets": PROJS,
                 "layers": cfg.num_hidden_layers},
        "init": {
            "formula": "amp * sin(freq * i + chirp * i * i + phase * j), f64 then f32; "
                       "i: row-major index in the tensor; j = 14 * layer + 2 * proj + (0 A, 1 B)",
            "amp": AMP,
            "freq": FREQ,
            "chirp": CHIRP,
            "phase": PHASE,
        },
        "texts": texts,
        "eos_id": eos,
        "batch": ids.shape[0],
        "seq": ids.shape[1],
        "ids": ids.flatten().tolist(),
        "labels": labels.flatten().tolist(),
        "loss": loss,
        "nll_sum": nll_sum,
        "tokens": tokens,
        "hf_loss_f32": hf_loss,
        "loss_f64_model": loss64,
        "reference_vs_f64": reference_vs_f64,
    }
    (OUT / "fixture.json").write_text(json.dumps(fixture, indent=1) + "\n")
    for f in OUT.iterdir():
        f.chmod(0o644)
    size = sum(f.stat().st_size for f in OUT.iterdir())
    assert size < 1_000_000, f"{OUT} is {size} bytes"
    print(f"wrote {OUT} ({size} bytes): batch {ids.shape[0]} x {ids.shape[1]}, "
          f"{tokens} label tokens, loss {loss:.9f} (float64 model {loss64:.9f}, HF's float32 "
          f"loss {hf_loss:.9f}); fp32 vs float64 gradients: worst "
          f"{max(reference_vs_f64.values()):.1e}")


if __name__ == "__main__":
    main()
