"""Make the LoRA training fixtures that crates/hone-cpu/tests/train_peft.rs compares the CPU
engine against: PyTorch + PEFT on the tiny HF models in tests/fixtures/hf-tiny-llama (llama3
rope, bf16 weights loaded as float32, untied head) and tests/fixtures/hf-tiny-qwen2 (q/k/v
biases, tied head).

Run from anywhere:

    HF_HUB_OFFLINE=1 /work/cache/venv/bin/python scripts/make_train_fixtures.py

For each model it writes, under tests/fixtures/train/<model>/ (and, for each entry of
MODULES_TO_SAVE, the same with those modules trained in full under
tests/fixtures/train/<model>-<modules>/):
    init-adapter/        the initial adapter as PEFT saves it (adapter_config.json +
                         adapter_model.safetensors): LoRA r=4, alpha=8, dropout 0, the seven
                         projections of every layer; A and B both random and non-zero.
    first_step_grads.safetensors
                         every LoRA gradient (PEFT names) after the first optimizer step's two
                         micro-batches, before clipping.
    final_adapter.safetensors
                         the LoRA values after the 20 steps below (PEFT names).
    expected.json        the micro-batches (input ids and HF-convention labels: unshifted,
                         -100 where no loss is taken), the first step's per-micro-batch NLL sums
                         and label counts, and the 20-step curve: loss, learning rate and
                         pre-clipping gradient norm of each optimizer step.

With `modules_to_save`, PEFT trains a copy of each named module (the adapter and the gradient
files hold it as `base_model.model.lm_head.weight`); the original stays frozen, so on the tied
qwen2 the copy of `lm_head` serves the output only and the input embedding stays the original
(`ensure_weight_tying` left at its default, False). Weight decay applies to the copies too.

The training loop is plain torch and mirrors what transformers 5.x's Trainer does with these
settings: AdamW (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on every LoRA matrix),
cosine schedule with 3 warmup steps (`get_cosine_schedule_with_warmup`: step k runs with
lr * lambda(k)), gradient accumulation 2 with the loss normalised by `num_items_in_batch`
(each micro-batch's summed token NLL divided by the label tokens of the whole step), and
`clip_grad_norm_(max_norm=1.0)` before each step. Step k uses micro-batches 2k mod 4 and
2k+1 mod 4 of the four stored ones.
"""

import json
import math
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "train"
MODELS = ["hf-tiny-llama", "hf-tiny-qwen2"]
# (model, modules_to_save) cases besides the plain LoRA ones.
MODULES_TO_SAVE = [("hf-tiny-qwen2", ["lm_head"]), ("hf-tiny-llama", ["embed_tokens"])]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8
BATCH, SEQ, N_MICRO = 2, 16, 4
STEPS, ACCUM = 20, 2
LR, WEIGHT_DECAY, WARMUP, MAX_NORM = 1e-3, 0.01, 3, 1.0


def micro_batches(vocab, gen):
    """Four micro-batches of BATCH x SEQ: a 'prompt' of -100 labels at the start of each row
    (length varies), and padding (-100) at the end of some rows."""
    out = []
    for i in range(N_MICRO):
        ids = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
        labels = ids.clone()
        for b in range(BATCH):
            prompt = 2 + (3 * i + 5 * b) % 6
            labels[b, :prompt] = -100
            pad = (i + b) % 3
            if pad:
                labels[b, SEQ - pad:] = -100
        out.append((ids, labels))
    return out


def label_tokens(labels):
    return int((labels[:, 1:] != -100).sum())


def nll_sum(model, ids, labels):
    logits = model(input_ids=ids).logits.float()
    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, vocab),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def cosine_with_warmup(step):
    if step < WARMUP:
        return float(step) / float(max(1, WARMUP))
    progress = float(step - WARMUP) / float(max(1, STEPS - WARMUP))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def peft_name(name):
    return name.replace(".modules_to_save.default", "").replace(".default", "")


def make(model_dir, modules_to_save=None):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    name = model_dir.name
    out = OUT / (name + "".join("-" + m for m in modules_to_save or []))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=RANK,
        lora_alpha=ALPHA,
        lora_dropout=0.0,
        target_modules=TARGETS,
        modules_to_save=modules_to_save,
    )
    model = get_peft_model(model, config)
    if modules_to_save:
        # The copies are new parameters: the frozen originals (the tied embedding) stay.
        emb = model.get_input_embeddings()
        head = model.get_output_embeddings()
        if "lm_head" in modules_to_save and "embed_tokens" not in modules_to_save:
            assert model.config.tie_word_embeddings
            assert head.weight.data_ptr() != emb.weight.data_ptr()
            assert not emb.weight.requires_grad and head.weight.requires_grad
    model.train()
    gen = torch.Generator().manual_seed(1234)
    params = []
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_A" in pname:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            elif "lora_B" in pname:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            if p.requires_grad:
                params.append((peft_name(pname), p))
    model.save_pretrained(out / "init-adapter")
    (out / "init-adapter" / "README.md").unlink(missing_ok=True)

    batches = micro_batches(model.config.vocab_size, gen)
    opt = torch.optim.AdamW(
        [p for _, p in params], lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WEIGHT_DECAY
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup)
    curve = {"loss": [], "lr": [], "grad_norm": [], "num_items": []}
    first = None
    for step in range(STEPS):
        mbs = [batches[(ACCUM * step + j) % N_MICRO] for j in range(ACCUM)]
        num_items = sum(label_tokens(lab) for _, lab in mbs)
        total = 0.0
        sums = []
        for ids, lab in mbs:
            s = nll_sum(model, ids, lab)
            (s / num_items).backward()
            sums.append(s.item())
            total += (s / num_items).item()
        if step == 0:
            grads = {n: p.grad.detach().clone().contiguous() for n, p in params}
            save_file(grads, str(out / "first_step_grads.safetensors"))
            first = {
                "nll_sums": sums,
                "tokens": [label_tokens(lab) for _, lab in mbs],
                "loss": total,
            }
        curve["lr"].append(opt.param_groups[0]["lr"])
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], MAX_NORM)
        curve["grad_norm"].append(float(norm))
        curve["loss"].append(total)
        curve["num_items"].append(num_items)
        opt.step()
        sched.step()
        opt.zero_grad()
    final = {n: p.detach().clone().contiguous() for n, p in params}
    save_file(final, str(out / "final_adapter.safetensors"))
    expected = {
        "model": f"tests/fixtures/{name}",
        "rank": RANK,
        "alpha": ALPHA,
        "batch": BATCH,
        "seq": SEQ,
        "steps": STEPS,
        "accumulation": ACCUM,
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "warmup_steps": WARMUP,
        "max_grad_norm": MAX_NORM,
        "micro_batches": [
            {"ids": ids.flatten().tolist(), "labels": lab.flatten().tolist()}
            for ids, lab in batches
        ],
        "first_step": first,
        "curve": curve,
    }
    if modules_to_save:
        expected["modules_to_save"] = modules_to_save
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    for f in out.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 250_000, f"{out} is {size} bytes"
    print(f"wrote {out} ({size} bytes); first loss {first['loss']:.6f}, "
          f"last loss {curve['loss'][-1]:.6f}")


def main():
    # PEFT stores target_modules as a set; a fixed hash seed keeps the saved order reproducible.
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0", HF_HUB_OFFLINE="1")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    torch.use_deterministic_algorithms(True)
    # Relative paths, so that base_model_name_or_path in the saved adapters is too.
    os.chdir(ROOT)
    for m in MODELS:
        make(Path("tests") / "fixtures" / m)
    for m, modules in MODULES_TO_SAVE:
        make(Path("tests") / "fixtures" / m, modules)


if __name__ == "__main__":
    main()
