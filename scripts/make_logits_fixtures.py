"""Reference logits from transformers (PyTorch, fp32) for hone's CPU forward tests.

What it writes (tests/fixtures/logits/):
  smollm2.safetensors + smollm2.json  three prompts on SmolLM2-135M-Instruct (the Q4_1 GGUF,
      dequantized to fp32 by transformers): token ids, logits of every position at a strided
      subset of the vocabulary (every 97th id) and the full last-position logits.
  hf.safetensors                      logits of the committed HF folders tests/fixtures/hf-tiny-llama
      (bf16, untied, llama3 rope scaling) and hf-tiny-qwen2 (q/k/v biases) for HF_INPUT.
  tiny.safetensors + tiny.json        for each tiny random GGUF that `cargo run --release -p hone-core
      --example write_tiny_models -- DIR` writes (one per tensor type, llama and qwen2): the
      file's checksum (so a changed generator is detected) and logits for fixed token ids.

usage: HF_HUB_OFFLINE=1 /path/to/venv/bin/python scripts/make_logits_fixtures.py SMOLLM2_GGUF TINY_DIR
       (venv: torch 2.15.0, transformers 5.23.0, gguf, safetensors; see ENVIRONMENT.md)
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "logits")
os.makedirs(OUT, exist_ok=True)

SMOLLM2_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "<|im_start|>user\nWhat is 12 * 7? Answer briefly.<|im_end|>\n<|im_start|>assistant\n",
]
VOCAB_STRIDE = 97


def load(path):
    d, name = os.path.split(os.path.abspath(path))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    return model


def smollm2(gguf):
    d, name = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = load(gguf)
    tensors, meta = {}, {"model": name, "vocab_stride": VOCAB_STRIDE, "prompts": []}
    for i, p in enumerate(SMOLLM2_PROMPTS):
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
        tensors[f"p{i}.strided"] = logits[:, ::VOCAB_STRIDE].contiguous()
        tensors[f"p{i}.last"] = logits[-1].contiguous()
        meta["prompts"].append({"text": p, "ids": ids[0].tolist(),
                                "greedy_next": int(logits[-1].argmax())})
    save_file(tensors, os.path.join(OUT, "smollm2.safetensors"))
    json.dump(meta, open(os.path.join(OUT, "smollm2.json"), "w"), indent=1)
    print("smollm2:", [m["ids"][:8] for m in meta["prompts"]])


HF_INPUT = [(7 * i + 3) % 128 for i in range(40)]


def hf_folders():
    tensors = {}
    for name in ["hf-tiny-llama", "hf-tiny-qwen2"]:
        d = os.path.join(HERE, "..", "tests", "fixtures", name)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        with torch.no_grad():
            tensors[name] = model(input_ids=torch.tensor([HF_INPUT])).logits[0].float().contiguous()
    save_file(tensors, os.path.join(OUT, "hf.safetensors"))
    print("hf folders:", list(tensors))


def fnv1a64(path):
    h = 0xcbf29ce484222325
    data = open(path, "rb").read()
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def tiny(tiny_dir):
    manifest = json.load(open(os.path.join(tiny_dir, "manifest.json")))
    tensors, meta = {}, {"models": []}
    for m in manifest["models"]:
        path = os.path.join(tiny_dir, m["file"])
        model = load(path)
        entry = {"file": m["file"], "fnv1a64": fnv1a64(path), "inputs": m["inputs"]}
        for j, ids in enumerate(m["inputs"]):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            tensors[f"{m['file']}.{j}"] = logits.contiguous()
        meta["models"].append(entry)
        print("tiny:", m["file"], logits.shape)
    save_file(tensors, os.path.join(OUT, "tiny.safetensors"))
    json.dump(meta, open(os.path.join(OUT, "tiny.json"), "w"), indent=1)


if __name__ == "__main__":
    hf_folders()
    smollm2(sys.argv[1])
    if len(sys.argv) > 2:
        tiny(sys.argv[2])
