//! Helpers shared by hone-onnx's tests: temp folders, the Python with ONNX Runtime, and
//! running one of `scripts/*.py` with a JSON input and output.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hone-onnx-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn python() -> PathBuf {
    match std::env::var_os("HONE_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "HONE_PYTHON is not set: this test runs the exported model with ONNX Runtime and \
             needs a Python with numpy, onnx, onnxruntime and onnxruntime-genai, as `make \
             pyenv` installs it:\n  make pyenv && HONE_PYTHON=$HOME/.cache/hone/pyenv/bin/python \
             cargo test -p hone-onnx"
        ),
    }
}

/// Run `scripts/{script}` with `args`, then `input` (written as JSON into `dir`) and the
/// output path; returns the output JSON. Panics with the script's output on failure.
pub fn run_script(script: &str, args: &[&Path], input: &Value, dir: &Path) -> Value {
    let (inp, out) = (dir.join("input.json"), dir.join("output.json"));
    std::fs::write(&inp, serde_json::to_vec(input).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let py = python();
    let res = Command::new(&py)
        .arg(&script)
        .args(args)
        .arg(&inp)
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("HONE_PYTHON={}: cannot run it: {e}", py.display()));
    if !res.status.success() {
        panic!(
            "{} {} failed ({}):\n{}{}",
            py.display(),
            script.display(),
            res.status,
            String::from_utf8_lossy(&res.stdout),
            String::from_utf8_lossy(&res.stderr)
        );
    }
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}
