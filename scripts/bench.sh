#!/usr/bin/env bash
# make bench: load time, prompt processing and decode speed of the CPU engine on SmolLM2-135M
# (2 threads), appended to BENCHMARKS.md with the machine, date and command.
set -euo pipefail
HONE=${1:?path to the hone binary}
GGUF=${2:?path to SmolLM2-135M-Instruct.Q4_1.gguf}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cd "$(dirname "$0")/.."
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
cores=$(nproc)
date=$(date -u +%Y-%m-%d)
rows=()
for mode in "" "--dequantize_at_load"; do
  cmd="hone bench -m SmolLM2-135M-Instruct.Q4_1.gguf --prompt_tokens 128 --decode_tokens 64 --repeats 3 $mode"
  json=$("$HONE" bench -m "$GGUF" --prompt_tokens 128 --decode_tokens 64 --repeats 3 $mode)
  echo "$json"
  row=$(JSON="$json" DATE="$date" CMD="$cmd" MACHINE="$cpu, $cores cores" python3 -c '
import json, os
r = json.loads(os.environ["JSON"])
cells = [os.environ["DATE"], os.environ["MACHINE"], r["weights"], r["threads"], r["load_s"], r["prompt_tok_s"], r["decode_tok_s"], "`" + os.environ["CMD"] + "`"]
print("| " + " | ".join(str(c) for c in cells) + " |")')
  rows+=("$row")
done
if ! grep -q '^## CPU engine: load, prompt, decode' BENCHMARKS.md 2>/dev/null; then
  cat >> BENCHMARKS.md <<TXT

## CPU engine: load, prompt, decode (SmolLM2-135M-Instruct Q4_1 GGUF)

Prompt = 128 tokens, decode = 64 tokens greedy, best of 3; \`make bench\` appends a row per mode.

| date | machine | weights | threads | load s | prompt tok/s | decode tok/s | command |
|---|---|---|---|---|---|---|---|
TXT
fi
for r in "${rows[@]}"; do echo "$r" >> BENCHMARKS.md; done
echo "appended ${#rows[@]} rows to BENCHMARKS.md"
