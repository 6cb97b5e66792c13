#!/usr/bin/env python3
"""Python side of hone-onnx's export test.

Usage: onnx_check.py MODEL.onnx INPUT.json OUTPUT.json

INPUT.json: {"num_layers", "num_kv_heads", "head_dim", "pad_id",
             "cases": [{"name", "prompts": [[ids...], ...], "decode": [[id per row], ...]}]}
Each case left-pads its prompts to one length (attention_mask 0, position_ids 0 there), runs
the prompt with an empty past, then one decode step per entry of "decode", feeding present.*
back as past_key_values.*. OUTPUT.json: {"cases": [{"name", "steps": [[row logits per
unpadded position, per batch row], ...]}]}, i.e. steps[s][b][p] is a list of vocab floats.
"""
import json
import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as e:  # the Rust test reports this
    sys.stderr.write(f"onnx_check.py needs numpy, onnx and onnxruntime: {e}\n")
    sys.exit(3)


def main():
    model_path, input_path, output_path = sys.argv[1:4]
    onnx.checker.check_model(model_path, full_check=True)
    cfg = json.load(open(input_path))
    L, KV, D = cfg["num_layers"], cfg["num_kv_heads"], cfg["head_dim"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    in_names = [i.name for i in sess.get_inputs()]
    expected = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{l}.{k}" for l in range(L) for k in ("key", "value")
    ]
    if in_names != expected:
        raise SystemExit(f"unexpected inputs {in_names}, wanted {expected}")
    out_names = [o.name for o in sess.get_outputs()]
    result = {"cases": []}
    for case in cfg["cases"]:
        prompts = case["prompts"]
        B = len(prompts)
        n = max(len(p) for p in prompts)
        pads = [n - len(p) for p in prompts]
        ids = np.array([[cfg["pad_id"]] * pad + p for p, pad in zip(prompts, pads)], np.int64)
        mask = np.array([[0] * pad + [1] * len(p) for p, pad in zip(prompts, pads)], np.int64)
        pos = np.array([[0] * pad + list(range(len(p))) for p, pad in zip(prompts, pads)], np.int64)
        past = {}
        for l in range(L):
            for k in ("key", "value"):
                past[f"past_key_values.{l}.{k}"] = np.zeros((B, KV, 0, D), np.float32)
        steps = []
        next_pos = np.array([len(p) for p in prompts], np.int64)
        for s in range(1 + len(case["decode"])):
            if s > 0:
                ids = np.array(case["decode"][s - 1], np.int64).reshape(B, 1)
                mask = np.concatenate([mask, np.ones((B, 1), np.int64)], axis=1)
                pos = next_pos.reshape(B, 1).copy()
                next_pos = next_pos + 1
            feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, **past}
            outs = dict(zip(out_names, sess.run(None, feeds)))
            logits = outs["logits"]
            assert logits.shape[:2] == ids.shape, (logits.shape, ids.shape)
            first = pads if s == 0 else [0] * B
            steps.append([logits[b, first[b]:].tolist() for b in range(B)])
            for l in range(L):
                for k in ("key", "value"):
                    pk = outs[f"present.{l}.{k}"]
                    assert pk.shape == (B, KV, mask.shape[1], D), pk.shape
                    past[f"past_key_values.{l}.{k}"] = pk
        result["cases"].append({"name": case["name"], "steps": steps})
    json.dump(result, open(output_path, "w"))


if __name__ == "__main__":
    main()
