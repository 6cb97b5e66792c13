#!/usr/bin/env python3
"""Python side of hone's ONNX Runtime GenAI tests: greedy generation with onnxruntime-genai.

Usage: genai_check.py FOLDER INPUT.json OUTPUT.json

INPUT.json: {"max_new_tokens": N,
             "adapters": {"name": "path.onnx_adapter", ...}            (optional),
             "runs": [{"prompt": "text", "adapter": "name" or null}, ...]}
All runs share one loaded model (adapters switch per generator, the model is not reloaded).
OUTPUT.json: {"runs": [{"prompt_ids": [...], "ids": [new ids...], "text": "decoded new ids"}]}
"""
import json
import sys

try:
    import onnxruntime_genai as og
except ImportError as e:  # the Rust test reports this
    sys.stderr.write(f"genai_check.py needs onnxruntime-genai: {e}\n")
    sys.exit(3)


def main():
    folder, input_path, output_path = sys.argv[1:4]
    cfg = json.load(open(input_path))
    model = og.Model(folder)
    tokenizer = og.Tokenizer(model)
    adapters = None
    if cfg.get("adapters"):
        adapters = og.Adapters(model)
        for name, path in cfg["adapters"].items():
            adapters.load(path, name)
    runs = []
    for run in cfg["runs"]:
        prompt_ids = [int(i) for i in tokenizer.encode(run["prompt"])]
        params = og.GeneratorParams(model)
        params.set_search_options(
            do_sample=False,
            max_length=len(prompt_ids) + cfg["max_new_tokens"],
            batch_size=1,
        )
        gen = og.Generator(model, params)
        if run.get("adapter"):
            gen.set_active_adapter(adapters, run["adapter"])
        gen.append_tokens(prompt_ids)
        while not gen.is_done():
            gen.generate_next_token()
        seq = [int(i) for i in gen.get_sequence(0)]
        new = seq[len(prompt_ids):]
        runs.append({"prompt_ids": prompt_ids, "ids": new, "text": tokenizer.decode(new)})
        del gen
    json.dump({"runs": runs}, open(output_path, "w"))


if __name__ == "__main__":
    main()
