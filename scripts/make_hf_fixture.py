"""Make the tiny Hugging Face model folders and the safetensors reference file that the
hone-core `hf` and `safetensors` tests read, using the reference implementations
(transformers `save_pretrained`, `safetensors.torch.save_file`).

Run from the repository root:

    HF_HUB_OFFLINE=1 /work/cache/venv/bin/python scripts/make_hf_fixture.py

It writes
    tests/fixtures/hf-tiny-llama/   LlamaForCausalLM, bf16, untied, llama3 rope scaling
    tests/fixtures/hf-tiny-qwen2/   Qwen2ForCausalLM, f32, tied embeddings (q/k/v biases)
each with config.json, model.safetensors, generation_config.json and expected.json (spec
fields and a few tensor values for the Rust test), and
    tests/fixtures/safetensors-ref/mixed.safetensors   F32/F16/BF16 tensors + metadata.

To check that transformers loads a folder written by hone's `hf::write_folder`:

    HONE_HF_WRITE_DIR=/tmp/hone-written cargo test -p hone-core --lib \
        hf::tests::write_folder_for_transformers_check -- --ignored
    /work/cache/venv/bin/python scripts/make_hf_fixture.py --verify /tmp/hone-written/llama \
        /tmp/hone-written/qwen2
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def ramp(n):
    """Values the Rust test recomputes: i * 0.25 - 1.5."""
    return torch.arange(n, dtype=torch.float64) * 0.25 - 1.5


def make_safetensors_ref():
    from safetensors.torch import save_file

    out = FIXTURES / "safetensors-ref"
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        "a.float": ramp(6).to(torch.float32).reshape(2, 3),
        "b.half": ramp(5).to(torch.float16),
        "c.brain": ramp(3).to(torch.bfloat16).reshape(3, 1),
    }
    save_file(tensors, out / "mixed.safetensors",
              metadata={"format": 'pt "quoted"'})  # one key: the writer's order is a hash map's


def tensor_summary(t):
    flat = t.detach().reshape(-1).to(torch.float64)
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype).replace("torch.", ""),
        "first": [float(x) for x in flat[:4]],
        "last": float(flat[-1]),
        "sum": float(flat.sum()),
    }


def save_model(model, out: Path, gen_kwargs):
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    model.generation_config = GenerationConfig(**gen_kwargs)
    model.save_pretrained(out, safe_serialization=True)
    from safetensors.torch import load_file

    stored = load_file(out / "model.safetensors")
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
    ]
    if "lm_head.weight" in stored:
        names.append("lm_head.weight")
    if "model.layers.0.self_attn.k_proj.bias" in stored:
        names.append("model.layers.0.self_attn.k_proj.bias")
    expected = {
        "tensor_names": sorted(stored.keys()),
        "tensors": {n: tensor_summary(stored[n]) for n in names},
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir())
    assert size < 300_000, f"{out} is {size} bytes"
    print(f"wrote {out} ({size} bytes)")


def make_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=[2, 3],
        pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    save_model(model, FIXTURES / "hf-tiny-llama",
               dict(bos_token_id=1, eos_token_id=[2, 3], pad_token_id=0, do_sample=True,
                    temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.1))


def make_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    cfg = Qwen2Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True,
        bos_token_id=5,
        eos_token_id=6,
    )
    model = Qwen2ForCausalLM(cfg)
    # Random init leaves the biases at zero; make them visible to the test.
    with torch.no_grad():
        for layer in model.model.layers:
            for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                p.bias.normal_(0.0, 0.1)
    save_model(model, FIXTURES / "hf-tiny-qwen2", dict(eos_token_id=6, do_sample=True, temperature=0.6))


def verify(folder: Path):
    """Load a hone-written folder with transformers and check every weight came through."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(folder)
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"{folder}: loading info {problems}"
    stored = load_file(folder / "model.safetensors")
    state = model.state_dict()
    for name, t in stored.items():
        assert torch.equal(state[name].to(t.dtype), t), f"{folder}: {name} differs"
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # The same input through the transformers-saved fixture it was rewritten from must give
    # identical logits: every config field (rope scaling, eps, tying, biases) came through.
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        logits = model(ids).logits
        ref_dir = FIXTURES / f"hf-tiny-{cfg.model_type}"
        ref = AutoModelForCausalLM.from_pretrained(ref_dir)
        ref_logits = ref(ids).logits
    assert torch.equal(logits, ref_logits), f"{folder}: logits differ from {ref_dir}"
    msg = f"{folder}: {type(model).__name__} loaded, {len(stored)} tensors equal, logits equal"
    if (folder / "tokenizer.json").exists():
        tok = AutoTokenizer.from_pretrained(folder)
        msg += f"; tokenizer {type(tok).__name__} eos={tok.eos_token!r}"
        if tok.chat_template:
            text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
            msg += f"; chat template renders {text!r}"
    print(msg)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--verify", nargs="+", type=Path,
                    help="check hone-written folders with transformers instead of writing fixtures")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.verify:
        for f in args.verify:
            verify(f)
        return
    make_safetensors_ref()
    make_llama()
    make_qwen2()


if __name__ == "__main__":
    sys.exit(main())
