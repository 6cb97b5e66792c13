"""make bench: ONNX Runtime GenAI (onnxruntime-genai, PyPI) on a folder written by
`hone auto-opt --use_ort_genai`, measured as `hone bench` measures hone's engines: a prompt of
random ordinary tokens, then greedy decode steps; best of N; one JSON line on stdout.

usage: ort_genai_bench.py FOLDER [--prompt_tokens 256] [--decode_tokens 64] [--repeats 3] [--threads 2]
"""

import argparse
import json
import time

import numpy as np
import onnxruntime_genai as og


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--prompt_tokens", type=int, default=256)
    ap.add_argument("--decode_tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    t0 = time.perf_counter()
    config = og.Config(a.folder)
    config.clear_providers()  # the CPU provider
    opts = {"intra_op_num_threads": a.threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
    model = og.Model(config)
    load_s = time.perf_counter() - t0
    vocab = json.load(open(f"{a.folder}/genai_config.json"))["model"]["vocab_size"]
    rng = np.random.default_rng(42)
    prompt = rng.integers(1000, vocab, size=a.prompt_tokens).astype(np.int32)

    best_prefill = best_decode = float("inf")
    total = a.prompt_tokens + a.decode_tokens
    for _ in range(a.repeats):
        params = og.GeneratorParams(model)
        # min_length keeps an end-of-text token from stopping the run early.
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        gen = og.Generator(model, params)
        t = time.perf_counter()
        gen.append_tokens(prompt)  # runs the prompt through the model
        best_prefill = min(best_prefill, time.perf_counter() - t)
        t = time.perf_counter()
        steps = 0
        while steps < a.decode_tokens and not gen.is_done():
            gen.generate_next_token()  # picks a token and runs it through the model
            steps += 1
        best_decode = min(best_decode, (time.perf_counter() - t) / steps * a.decode_tokens)
        del gen

    print(json.dumps({
        "model": a.folder,
        "engine": "onnxruntime-genai " + og.__version__,
        "threads": a.threads,
        "load_s": round(load_s, 3),
        "prompt_tokens": a.prompt_tokens,
        "prompt_tok_s": round(a.prompt_tokens / best_prefill, 1),
        "decode_tokens": a.decode_tokens,
        "decode_tok_s": round(a.decode_tokens / best_decode, 1),
    }))


if __name__ == "__main__":
    main()
