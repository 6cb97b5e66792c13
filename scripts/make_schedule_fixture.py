"""Learning-rate schedule fixture: the lr that torch uses at each optimizer step under
transformers' get_scheduler, plus TrainingArguments.get_warmup_steps for fractional warmup.

Run from the repository root with the reference venv:

    HF_HUB_OFFLINE=1 /work/cache/venv/bin/python scripts/make_schedule_fixture.py

Writes tests/fixtures/schedule/lrs.json. For every case it builds an SGD optimizer with
lr=base_lr, wraps it with transformers.get_scheduler(kind, ...), and then runs the loop exactly
as the HF Trainer does: read param_groups[0]["lr"] (the lr this optimizer.step() will use),
optimizer.step(), lr_scheduler.step(). So lrs[k] is the lr of the k-th optimizer step
(k = 0, 1, ...), which is what hone's LrSchedule::lr_at(k) must return. The sequences run a few
steps past total_steps to pin down behaviour there too.
"""

import json
import os
import tempfile

import torch
import transformers
from transformers import TrainingArguments, get_scheduler

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "schedule", "lrs.json")
KINDS = ["constant", "constant_with_warmup", "linear", "cosine"]
EXTRA_STEPS = 3


def hf_warmup_steps(warmup_steps, total):
    """TrainingArguments(warmup_steps=...).get_warmup_steps(total), the real thing."""
    with tempfile.TemporaryDirectory() as out_dir:
        args = TrainingArguments(output_dir=out_dir, warmup_steps=warmup_steps, report_to=[])
        return args.get_warmup_steps(total)


def lr_sequence(kind, base_lr, warmup, total):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base_lr)
    scheduler = get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(total + EXTRA_STEPS):
        lr = optimizer.param_groups[0]["lr"]
        assert lr == scheduler.get_last_lr()[0]
        lrs.append(float(lr))
        param.grad = torch.ones(1)
        optimizer.step()
        scheduler.step()
    return lrs


def main():
    cases = []
    # (base_lr, warmup_steps, total_steps): the common case, then the edges.
    shapes = [(2e-4, 3, 20), (1e-3, 0, 5), (5e-5, 5, 5), (3e-4, 8, 5), (1e-4, 0, 1), (7e-4, 1, 2)]
    for base_lr, warmup, total in shapes:
        for kind in KINDS:
            cases.append({"kind": kind, "base_lr": base_lr, "warmup_steps": warmup, "total_steps": total,
                          "lrs": lr_sequence(kind, base_lr, warmup, total)})

    # Fractional warmup (TrainingArguments.warmup_steps in [0, 1) is a ratio of total steps).
    # 0.07 * 100 = 7.000000000000001 in f64, so HF's ceil gives 8 (and 0.29 * 100 rounds the
    # other way, 28.999999999999996 -> 29): hone must do the same f64 product, not a rounded one.
    warmup_args = []
    for arg, total in [(0.1, 30), (0.07, 100), (0.29, 100), (0.03, 100), (0.05, 7), (0.0, 10), (0.5, 3), (0.99, 4), (5.0, 40), (2.7, 10)]:
        warmup_args.append({"warmup_steps_arg": arg, "total_steps": total, "warmup_steps": hf_warmup_steps(arg, total)})
    for ratio, total in [(0.07, 100), (0.05, 7)]:
        warmup = hf_warmup_steps(ratio, total)
        for kind in ["linear", "cosine"]:
            cases.append({"kind": kind, "base_lr": 2e-4, "warmup_ratio": ratio, "warmup_steps": warmup,
                          "total_steps": total, "lrs": lr_sequence(kind, 2e-4, warmup, total)})

    doc = {
        "generator": "scripts/make_schedule_fixture.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "warmup_args": warmup_args,
        "cases": cases,
    }
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
