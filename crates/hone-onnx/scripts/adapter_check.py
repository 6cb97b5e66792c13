#!/usr/bin/env python3
"""Python side of hone-onnx's adapter tests: read `.onnx_adapter` files back with onnxruntime's
AdapterFormat, and run one exported model with each adapter made active per request
(RunOptions.add_active_adapter), without reloading the session.

Usage: adapter_check.py MODEL.onnx INPUT.json OUTPUT.json

INPUT.json: {"num_layers", "num_kv_heads", "head_dim", "prompt": [ids], "decode": id,
             "adapters": {"name": "path.onnx_adapter"}, "runs": [null | "name", ...]}
OUTPUT.json: {"adapters": {"name": {"format_version", "adapter_version", "model_version",
                                    "params": {"tensor": {"dims": [...], "values": [...]}}}},
              "runs": [[logits row per prompt position, then the decode step's row], ...]}
"""
import json
import sys

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:  # the Rust test reports this
    sys.stderr.write(f"adapter_check.py needs numpy and onnxruntime: {e}\n")
    sys.exit(3)


def read_back(path):
    fmt = ort.AdapterFormat.read_adapter(path)
    params = {}
    for name, value in fmt.get_parameters().items():
        arr = value.numpy()
        params[name] = {"dims": list(arr.shape), "values": arr.astype(np.float64).ravel().tolist()}
    return {
        "format_version": fmt.get_format_version(),
        "adapter_version": fmt.get_adapter_version(),
        "model_version": fmt.get_model_version(),
        "params": params,
    }


def main():
    model_path, input_path, output_path = sys.argv[1:4]
    cfg = json.load(open(input_path))
    L, KV, D = cfg["num_layers"], cfg["num_kv_heads"], cfg["head_dim"]
    result = {"adapters": {}, "runs": []}
    loaded = {}
    for name, path in cfg["adapters"].items():
        result["adapters"][name] = read_back(path)
        lora = ort.LoraAdapter()
        lora.Load(path)
        loaded[name] = lora
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    for run in cfg["runs"]:
        ro = ort.RunOptions()
        if run is not None:
            ro.add_active_adapter(loaded[run])
        ids = np.array([cfg["prompt"]], np.int64)
        n = ids.shape[1]
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones((1, n), np.int64),
            "position_ids": np.arange(n, dtype=np.int64).reshape(1, n),
        }
        for l in range(L):
            for k in ("key", "value"):
                feeds[f"past_key_values.{l}.{k}"] = np.zeros((1, KV, 0, D), np.float32)
        names = [o.name for o in sess.get_outputs()]
        outs = dict(zip(names, sess.run(None, feeds, ro)))
        rows = outs["logits"][0].tolist()
        step = {
            "input_ids": np.array([[cfg["decode"]]], np.int64),
            "attention_mask": np.ones((1, n + 1), np.int64),
            "position_ids": np.array([[n]], np.int64),
        }
        for l in range(L):
            for k in ("key", "value"):
                step[f"past_key_values.{l}.{k}"] = outs[f"present.{l}.{k}"]
        outs = dict(zip(names, sess.run(None, step, ro)))
        rows.append(outs["logits"][0, 0].tolist())
        result["runs"].append(rows)
    json.dump(result, open(output_path, "w"))


if __name__ == "__main__":
    main()
