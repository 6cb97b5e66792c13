//! An event file written by hone is read back by the real readers: tbparse's SummaryReader and
//! tensorboard's EventAccumulator (scripts/read_tensorboard.py, run with $HONE_PYTHON, the
//! python of the venv that `make pyenv` builds). Every scalar must come back with its tag, its
//! step and its value, exact as f32.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use hone_core::tensorboard::{EventWriter, MetricsSink};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/read_tensorboard.py"
);

fn python() -> PathBuf {
    match std::env::var_os("HONE_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "HONE_PYTHON is not set: run `make pyenv` (a venv with tbparse 0.0.9 and \
             tensorboard 2.21.0 at $HONE_CACHE/pyenv) and point HONE_PYTHON at its bin/python"
        ),
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hone-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn read_back(python: &Path, logdir: &Path) -> serde_json::Value {
    let out = Command::new(python)
        .arg(SCRIPT)
        .arg(logdir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (HONE_PYTHON): {e}; run `make pyenv`",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "read_tensorboard.py failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("read_tensorboard.py printed no JSON")
}

/// The value as read back: a JSON number, or "nan" / "inf" / "-inf".
fn read_value(v: &serde_json::Value) -> f32 {
    match v {
        serde_json::Value::String(s) if s == "nan" => f32::NAN,
        serde_json::Value::String(s) if s == "inf" => f32::INFINITY,
        serde_json::Value::String(s) if s == "-inf" => f32::NEG_INFINITY,
        v => {
            let x = v.as_f64().unwrap_or_else(|| panic!("not a value: {v}"));
            // The reader widened an f32; narrowing it back must be exact.
            assert_eq!(x as f32 as f64, x, "{x} is not an f32");
            x as f32
        }
    }
}

#[test]
fn scalars_written_by_hone_read_back_exactly_in_tbparse_and_event_accumulator() {
    let python = python(); // fail before writing anything when the venv is missing
    let dir = scratch_dir("tb-readback");
    let before = unix_now();
    let mut writer = EventWriter::create(&dir).unwrap();

    // (tag, step, value): the trainer's tags, step 0 (a proto3 default), a step past 2^32,
    // values that need all 24 bits, subnormals, signed zero and the non-finite ones a diverging
    // run produces.
    let mut expected: Vec<(String, u64, f32)> = Vec::new();
    for step in 0..25u64 {
        let loss = 2.5f32 / (1.0 + step as f32) + 0.1f32;
        expected.push(("train/loss".into(), step, loss));
        expected.push((
            "train/learning_rate".into(),
            step,
            2e-4f32 * (step as f32 / 24.0),
        ));
        expected.push(("train/grad_norm".into(), step, 1.0f32 / 3.0 + step as f32));
        expected.push(("train/epoch".into(), step, step as f32 / 7.0));
    }
    for (step, value) in [
        (5u64, 1.875f32),
        (10, 1.0e-30),
        (15, 3.4028235e38),
        (20, f32::MIN_POSITIVE / 8.0),
    ] {
        expected.push(("eval/loss".into(), step, value));
    }
    for (step, value) in [
        (1u64, f32::NAN),
        (2, f32::INFINITY),
        (3, f32::NEG_INFINITY),
        (4, -0.0),
        (1 << 40, -7.25),
    ] {
        expected.push(("train/odd_values".into(), step, value));
    }
    for (tag, step, value) in &expected {
        writer.add_scalar(tag, *value, *step).unwrap();
    }
    // And through the sink interface, with HF log names.
    writer
        .log(30, &[("loss", 0.75), ("eval_accuracy", 0.5)])
        .unwrap();
    expected.push(("train/loss".into(), 30, 0.75));
    expected.push(("eval/accuracy".into(), 30, 0.5));
    writer.flush().unwrap();
    let after = unix_now();

    let doc = read_back(&python, &dir);
    assert_eq!(doc["file_versions"], serde_json::json!(["brain.Event:2"]));
    expected.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for reader in ["tbparse", "event_accumulator"] {
        let rows = doc[reader]
            .as_array()
            .unwrap_or_else(|| panic!("no {reader} rows"));
        assert_eq!(rows.len(), expected.len(), "{reader}: scalar count");
        for (row, (tag, step, value)) in rows.iter().zip(&expected) {
            assert_eq!(row["tag"].as_str(), Some(tag.as_str()), "{reader}: {row}");
            assert_eq!(row["step"].as_u64(), Some(*step), "{reader}: {row}");
            let got = read_value(&row["value"]);
            assert!(
                got.to_bits() == value.to_bits() || (got.is_nan() && value.is_nan()),
                "{reader}: {tag} step {step}: wrote {value:e}, read {got:e}"
            );
            let wall = row["wall_time"].as_f64().unwrap();
            assert!(
                wall >= before - 1.0 && wall <= after + 1.0,
                "{reader}: wall_time {wall}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
