#!/usr/bin/env bash
# make bench: on SmolLM2-135M with 2 threads,
#  1. load time, prompt processing and decode speed of the CPU engine;
#  2. LoRA training (r 8, alpha 16, all seven projections; batch 4 x 256, the same with gradient
#     checkpointing, batch 1 x 128): tokens/s and peak RSS of `hone bench-train` next to
#     PyTorch + PEFT (scripts/peft_cpu_bench.py) on the same configs, in the same run, each in
#     its own process, interleaved; runs disturbed by other processes are discarded and rerun.
# Rows are appended to BENCHMARKS.md with the machine, date and commands.
#
# usage: bench.sh HONE GGUF [HF_DIR PEFT_PYTHON]   (without the last two: inference rows only)
# env: BENCH_MAX_OTHER (cores other processes may use during a timed run, default 0.1),
#      BENCH_RETRIES (reruns of a disturbed run, default 3), BENCH_QUIET_WAIT_S (default 900),
#      BENCH_TRAIN_STEPS (timed steps, default 10), BENCH_LOG (file that gets every JSON line).
set -euo pipefail
shopt -s inherit_errexit  # a failing benchmark inside $(...) stops the script
HONE=${1:?path to the hone binary}
GGUF=${2:?path to SmolLM2-135M-Instruct.Q4_1.gguf}
HF_DIR=${3:-}
PEFT_PYTHON=${4:-}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
MAX_OTHER=${BENCH_MAX_OTHER:-0.1}
RETRIES=${BENCH_RETRIES:-3}
QUIET_WAIT_S=${BENCH_QUIET_WAIT_S:-900}
STEPS=${BENCH_TRAIN_STEPS:-10}
LOG=${BENCH_LOG:-/dev/null}
cd "$(dirname "$0")/.."
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
cores=$(nproc)
isa=$(grep -qw avx512f /proc/cpuinfo && echo AVX-512 || { grep -qw avx2 /proc/cpuinfo && echo AVX2 || uname -m; })
date=$(date -u +%Y-%m-%d)

# Insert lines $3 into BENCHMARKS.md after the last table row of the section whose heading is
# $1, first creating the section (heading, then $2) at the end of the file when it is missing.
add_to_section() {
  HEADING="$1" INTRO="$2" ROWS="$3" python3 - <<'PY'
import os
path = "BENCHMARKS.md"
heading, intro, rows = os.environ["HEADING"], os.environ["INTRO"], os.environ["ROWS"]
lines = open(path).read().splitlines() if os.path.exists(path) else ["# Benchmarks"]
if heading not in lines:
    lines += [""] + [heading] + intro.splitlines()
start = lines.index(heading)
end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
last_row = max(i for i in range(start, end) if lines[i].startswith("|"))
lines[last_row + 1:last_row + 1] = rows.splitlines()
open(path, "w").write("\n".join(lines) + "\n")
PY
}

# Cores the rest of the machine uses over 3 s (nothing of ours runs meanwhile).
others_busy() {
  python3 -c '
import os, time
def busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")
a, t = busy(), time.time(); time.sleep(3)
print(round((busy() - a) / (time.time() - t), 2))'
}

wait_quiet() {
  local t0=$SECONDS other said=""
  while (( SECONDS - t0 < QUIET_WAIT_S )); do
    other=$(others_busy)
    if python3 -c "import sys; sys.exit(0 if $other < $MAX_OTHER else 1)"; then return; fi
    [[ -n $said ]] || echo "  machine busy ($other cores used by others), waiting" >&2
    said=1
  done
  echo "  warning: the machine never went quiet" >&2
}

# ---- 1. inference --------------------------------------------------------------------------
rows=""
for mode in "" "--dequantize_at_load"; do
  cmd="hone bench -m SmolLM2-135M-Instruct.Q4_1.gguf --prompt_tokens 128 --decode_tokens 64 --repeats 3 $mode"
  wait_quiet
  json=$("$HONE" bench -m "$GGUF" --prompt_tokens 128 --decode_tokens 64 --repeats 3 $mode)
  echo "$json" | tee -a "$LOG"
  row=$(JSON="$json" DATE="$date" CMD="$cmd" MACHINE="$cpu, $cores cores" python3 -c '
import json, os
r = json.loads(os.environ["JSON"])
cells = [os.environ["DATE"], os.environ["MACHINE"], r["weights"], r["threads"], r["load_s"], r["prompt_tok_s"], r["decode_tok_s"], "`" + os.environ["CMD"].strip() + "`"]
print("| " + " | ".join(str(c) for c in cells) + " |")')
  rows+="$row"$'\n'
done
add_to_section "## CPU engine: load, prompt, decode (SmolLM2-135M-Instruct Q4_1 GGUF)" "
Prompt = 128 tokens, decode = 64 tokens greedy, best of 3; \`make bench\` appends a row per mode.

| date | machine | weights | threads | load s | prompt tok/s | decode tok/s | command |
|---|---|---|---|---|---|---|---|" "$rows"
echo "appended 2 inference rows to BENCHMARKS.md"

# ---- 1b. the GPU engine (wgpu) next to the CPU engine ---------------------------------------
# On a machine without a GPU the adapter is lavapipe (Vulkan emulated on the CPU): the row shows
# what the kernels reach there, not GPU speed. BENCH_GPU_STEPS timed steps (default 2).
GPU_STEPS=${BENCH_GPU_STEPS:-2}
gcommon="--batch 4 --seq 256 --lora_r 8 --lora_alpha 16 --target_modules all-linear --warmup 1 --steps $GPU_STEPS"
wait_quiet
# shellcheck disable=SC2086
gj=$("$HONE" bench-train -m "$GGUF" $gcommon --device gpu | tail -n 1)
echo "$gj" | tee -a "$LOG"
# The same with --fp16 (mixed precision) where the adapter has shader-f16.
wait_quiet
# shellcheck disable=SC2086
if hj=$("$HONE" bench-train -m "$GGUF" $gcommon --device gpu --fp16 | tail -n 1); then
  echo "$hj" | tee -a "$LOG"
else
  hj=""
  echo "  --fp16 refused by this adapter (no shader-f16): no fp16 row" >&2
fi
wait_quiet
# shellcheck disable=SC2086
cj=$("$HONE" bench-train -m "$GGUF" $gcommon --device cpu | tail -n 1)
echo "$cj" | tee -a "$LOG"
grow=$(GJ="$gj" HJ="$hj" CJ="$cj" DATE="$date" MACHINE="$cpu, $cores cores" python3 -c '
import json, os
c = json.loads(os.environ["CJ"])
for j in [os.environ["GJ"], os.environ["HJ"]]:
    if not j:
        continue
    g = json.loads(j)
    adapter = g["device"] + (" --fp16" if g.get("fp16") else "")
    cells = [os.environ["DATE"], os.environ["MACHINE"], adapter, "4 x 256", g["tok_s"], g["s_step"],
             g["gpu_planned_mib"], c["tok_s"], "%.2fx" % (g["tok_s"] / c["tok_s"])]
    print("| " + " | ".join(str(x) for x in cells) + " |")')
add_to_section "## GPU engine (wgpu): LoRA training on SmolLM2-135M-Instruct Q4_1" "
LoRA r 8, alpha 16, all seven projections, batch 4 x 256, 1 warm-up + N timed steps, next to the CPU
engine (2 threads) on the same machine in the same run. Planned GPU memory = frozen weights (kept
quantized) + LoRA/AdamW state + every planned activation. Command:
\`hone bench-train -m SmolLM2-135M-Instruct.Q4_1.gguf $gcommon --device gpu|cpu\` (the \`--fp16\` row
adds \`--fp16\`: f16 products, f32 sums and master weights)

| date | machine | adapter | batch | GPU tok/s | s/step | planned GPU MiB | CPU engine tok/s | GPU / CPU |
|---|---|---|---|---|---|---|---|---|" "$grow"
echo "appended GPU engine rows to BENCHMARKS.md"

# ---- 1c. ONNX Runtime: hone's ort runner and ONNX Runtime GenAI on the same export ----------
# SmolLM2-135M exported by `hone auto-opt --use_ort_genai` (fp32 and int4, into bench-out/), run by
# `hone bench --engine ort` (the ort crate, ONNX Runtime from ORT_DYLIB_PATH) and by
# onnxruntime-genai (scripts/ort_genai_bench.py, HONE_PYTHON from `make pyenv`), next to the CPU
# engine on the GGUF; 256-token prompt, 64 greedy decode steps, best of 3, 2 threads, each in its
# own process, one after the other. Skipped (said) when HONE_PYTHON or ORT_DYLIB_PATH is not set.
if [[ -n "${HONE_PYTHON:-}" && -n "${ORT_DYLIB_PATH:-}" ]]; then
  onnx_rows=""
  for precision in fp32 int4; do
    dir="bench-out/smollm2-onnx-$precision"
    "$HONE" auto-opt -m "$GGUF" --precision "$precision" --use_ort_genai --overwrite -o "$dir" >&2
    size=$(du -m "$dir/model.onnx" | cut -f1)
    rflags="--prompt_tokens 256 --decode_tokens 64 --repeats 3"
    runs=()
    if [[ $precision == fp32 ]]; then  # the CPU engine once, for scale
      runs+=("hone CPU engine, GGUF Q4_1|hone bench -m SmolLM2-135M-Instruct.Q4_1.gguf $rflags|$HONE bench -m $GGUF $rflags")
    fi
    runs+=(
      "hone --engine ort (ort crate), ONNX $precision ($size MiB)|hone bench --engine ort -m $dir $rflags|$HONE bench --engine ort -m $dir $rflags"
      "onnxruntime-genai 0.18.0, ONNX $precision ($size MiB)|python scripts/ort_genai_bench.py $dir $rflags --threads $RAYON_NUM_THREADS|$HONE_PYTHON scripts/ort_genai_bench.py $dir $rflags --threads $RAYON_NUM_THREADS"
    )
    for run in "${runs[@]}"; do
      IFS='|' read -r label shown cmd <<<"$run"
      wait_quiet
      # shellcheck disable=SC2086  # cmd is a word list
      json=$($cmd | tail -n 1)
      echo "$json" | tee -a "$LOG"
      onnx_rows+=$(JSON="$json" DATE="$date" MACHINE="$cpu, $cores cores" LABEL="$label" CMD="$shown" python3 -c '
import json, os
r = json.loads(os.environ["JSON"])
cells = [os.environ["DATE"], os.environ["MACHINE"], os.environ["LABEL"], r["threads"], r["load_s"],
         r["prompt_tok_s"], r["decode_tok_s"], "`" + os.environ["CMD"] + "`"]
print("| " + " | ".join(str(c) for c in cells) + " |")')$'\n'
    done
  done
  add_to_section "## ONNX Runtime: hone's ort runner and ONNX Runtime GenAI (SmolLM2-135M-Instruct)" "
SmolLM2-135M-Instruct Q4_1 GGUF exported by \`hone auto-opt --use_ort_genai --precision fp32|int4\`
(fp32: weights dequantized; int4: the projections as MatMulNBits from the Q4_1 blocks) and run on ONNX Runtime 1.31.1's CPU provider by hone (\`hone bench --engine
ort\`: the ort crate, KV cache fed back as \`past_key_values\`) and by onnxruntime-genai 0.18.0 on the
same folder; hone's CPU engine on the GGUF for scale. Prompt = 256 random ordinary tokens, then 64
greedy decode steps; best of 3; 2 threads; each in its own process, one after the other.

| date | machine | runtime, model file | threads | load s | prompt tok/s | decode tok/s | command |
|---|---|---|---|---|---|---|---|" "$onnx_rows"
  echo "appended ONNX Runtime rows to BENCHMARKS.md"
else
  echo "HONE_PYTHON or ORT_DYLIB_PATH not set (make pyenv ort-lib): ONNX Runtime rows skipped" >&2
fi

if [[ -z "$HF_DIR" || -z "$PEFT_PYTHON" ]]; then
  echo "no HF folder / PEFT python given: LoRA training rows skipped"
  exit 0
fi

# ---- 2. LoRA training, hone next to PyTorch + PEFT -----------------------------------------
# Run a benchmark command until a run is undisturbed (cpu_other < MAX_OTHER) or the retries
# are spent; print its JSON line (with "contended": true when every attempt was disturbed).
measure() {
  local label=$1 json other
  shift
  for ((attempt = 0; attempt <= RETRIES; attempt++)); do
    wait_quiet
    json=$("$@" | tail -n 1)
    echo "$label attempt $attempt: $json" | tee -a "$LOG" >&2
    other=$(JSON="$json" python3 -c 'import json, os; print(json.loads(os.environ["JSON"])["cpu_other"])')
    if python3 -c "import sys; sys.exit(0 if $other < $MAX_OTHER else 1)"; then
      echo "$json"
      return
    fi
  done
  JSON="$json" python3 -c 'import json, os; r = json.loads(os.environ["JSON"]); r["contended"] = True; print(json.dumps(r))'
}

# (label, hone flags, PEFT flags, also f32 weights?)
configs=(
  "4 x 256|--batch 4 --seq 256||yes"
  "4 x 256, gradient checkpointing|--batch 4 --seq 256 --gradient_checkpointing|--gc|no"
  "1 x 128|--batch 1 --seq 128|--batch 1 --seq 128|no"
)
common="--lora_r 8 --lora_alpha 16 --target_modules all-linear --warmup 2 --steps $STEPS"
train_rows=""
for c in "${configs[@]}"; do
  IFS='|' read -r label hone_flags peft_flags f32 <<<"$c"
  echo "== LoRA training, $label" >&2
  # shellcheck disable=SC2086  # flags are word lists
  q=$(measure "hone Q4_1 $label" "$HONE" bench-train -m "$GGUF" $hone_flags $common)
  # shellcheck disable=SC2086
  p=$(measure "PEFT $label" "$PEFT_PYTHON" scripts/peft_cpu_bench.py --model "$HF_DIR" --mode lora \
    $peft_flags --steps "$STEPS" --warmup 2 --threads "$RAYON_NUM_THREADS")
  runs=("Q4_1 (as stored)|$q")
  if [[ $f32 == yes ]]; then
    # shellcheck disable=SC2086
    f=$(measure "hone f32 $label" "$HONE" bench-train -m "$GGUF" $hone_flags $common --dequantize_at_load)
    runs+=("f32 (dequantized at load)|$f")
  fi
  for run in "${runs[@]}"; do
    weights=${run%%|*}
    train_rows+=$(HONE_JSON="${run#*|}" PEFT_JSON="$p" DATE="$date" MACHINE="$cpu, $cores cores, $isa" \
      CONFIG="$label" WEIGHTS="$weights" python3 -c '
import json, os
h, p = json.loads(os.environ["HONE_JSON"]), json.loads(os.environ["PEFT_JSON"])
note = " (contended)" if h.get("contended") or p.get("contended") else ""
speed, rss = h["tok_s"] / p["tok_s"], h["peak_rss_mib"] / p["peak_rss_mib"]
others = "%.2f / %.2f" % (h["cpu_other"], p["cpu_other"])
cells = [os.environ["DATE"], os.environ["MACHINE"], os.environ["CONFIG"] + note, os.environ["WEIGHTS"],
         h["tok_s"], round(h["peak_rss_mib"]), p["tok_s"], p["peak_rss_mib"],
         "%.2fx" % speed, "%.2fx" % rss, others]
print("| " + " | ".join(str(c) for c in cells) + " |")')$'\n'
  done
done
add_to_section "## CPU engine: LoRA training vs PyTorch + PEFT (SmolLM2-135M-Instruct)" "
LoRA r 8, alpha 16, all seven projections, AdamW (lr 2e-4), random token ids with labels = ids,
2 threads, 2 warm-up + $STEPS timed steps (forward + backward + optimizer step), each run in its
own process, hone and PEFT interleaved in the same \`make bench\`. Peak RSS is the process's
high-water mark (VmHWM / ru_maxrss), everything included (PEFT: ~0.7 GiB of imports). Ratios
are hone / PEFT (goal: tok/s >= 1.5x at peak RSS <= 0.5x). \"others\" = cores other processes
used during the timed steps (hone / PEFT); runs over $MAX_OTHER are rerun. Commands:

- hone: \`hone bench-train -m SmolLM2-135M-Instruct.Q4_1.gguf --batch B --seq S [--gradient_checkpointing] [--dequantize_at_load] $common\`
- PyTorch + PEFT (torch 2.15.0, transformers 5.23.0, peft 0.21.2, fp32 HF folder made from the
  same GGUF by scripts/smollm2_gguf_to_hf.py): \`python scripts/peft_cpu_bench.py --model smollm2-135m-hf --mode lora [--gc] [--batch 1 --seq 128] --steps $STEPS --warmup 2 --threads 2\`

| date | machine | config | hone weights | hone tok/s | hone peak RSS MiB | PEFT tok/s | PEFT peak RSS MiB | tok/s ratio | RSS ratio | others |
|---|---|---|---|---|---|---|---|---|---|---|" "$train_rows"
echo "appended LoRA training rows to BENCHMARKS.md"
