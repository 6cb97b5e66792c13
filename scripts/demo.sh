#!/usr/bin/env bash
# make demo: fine-tune SmolLM2-135M-Instruct on the polarity sentences and show before/after.
#   scripts/demo.sh HONE_BINARY MODEL_GGUF [OUTPUT_DIR]
# Held-out accuracy (rows 161-200, never trained on) of the base model, a LoRA fine-tune with
# examples/polarity.yaml, the same evaluation with the adapter, and a few generations.
set -euo pipefail
HONE=$1
MODEL=$2
OUT=${3:-demo-output}
DATA=examples/polarity.jsonl
EVAL=(--config examples/polarity.yaml -m "$MODEL" --metrics loss,accuracy,f1 --max_new_tokens 3)

echo "== 1/4 base model on the 40 held-out sentences"
"$HONE" eval "${EVAL[@]}" --output_file "$OUT.before.json" --show 3

echo
echo "== 2/4 fine-tune a LoRA adapter on the 160 training sentences (examples/polarity.yaml)"
"$HONE" finetune --config examples/polarity.yaml -m "$MODEL" -o "$OUT" --overwrite_output_dir

echo
echo "== 3/4 the same evaluation with the adapter"
"$HONE" eval "${EVAL[@]}" --adapter "$OUT/adapter" --output_file "$OUT.after.json" --show 3

echo
echo "== 4/4 generations (greedy), base model then with the adapter"
for phrase in \
  "an utterly charming and hilarious film that reminded me why i love going to the movies ." \
  "the plot is paper-thin and the jokes fall flat ; a tedious two hours ." \
  "a quiet , moving portrait of grief that stays with you long after the credits ."; do
  base=$("$HONE" generate -q -m "$MODEL" -p "$phrase ->" --max_new_tokens 4 --stop $'\n')
  tuned=$("$HONE" generate -q -m "$MODEL" --adapter "$OUT/adapter" -p "$phrase ->" --max_new_tokens 4 --stop $'\n')
  echo "  prompt: $phrase ->"
  echo "    base : ${base#"$phrase ->"}"
  echo "    tuned: ${tuned#"$phrase ->"}"
done

echo
python3 - "$OUT.before.json" "$OUT.after.json" "$OUT/train_results.json" <<'PY'
import json, sys
b, a, t = (json.load(open(p)) for p in sys.argv[1:4])
print("== held-out (train[160:], 40 sentences)      before     after")
for k, name in [("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("eval_loss", "loss on the label tokens")]:
    print(f"   {name:<40} {b[k]:>8.3f}  {a[k]:>8.3f}")
print(f"   training: {t['global_step']} steps in {t['train_runtime_s']:.0f} s "
      f"({t['train_tokens_per_second']:.0f} tok/s), adapter from {t['adapter_from']}")
if a["accuracy"] <= b["accuracy"]:
    sys.exit("the fine-tuned adapter did not improve held-out accuracy")
PY
