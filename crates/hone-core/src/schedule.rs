//! Learning-rate schedules, value for value as transformers' `get_scheduler` under torch's
//! `LambdaLR`.
//!
//! `lr_at(k)` is the learning rate of the k-th optimizer step, counting from 0: `LambdaLR`
//! applies `lambda(0)` when it is built, the Trainer calls `optimizer.step()` and then
//! `lr_scheduler.step()`, so step k runs with `base_lr * lambda(k)`. The HF Trainer logs that same
//! value as `learning_rate` at `global_step = k + 1` (it reads the lr before stepping the
//! scheduler). The float operations below repeat transformers' lambdas in the same order so the
//! results agree to the last bit where `cos` does (tests/fixtures/schedule/lrs.json).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The shape of a schedule, named as in HF `TrainingArguments.lr_scheduler_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduleKind {
    /// `get_constant_schedule`: `base_lr` at every step; warmup is ignored, as in HF.
    Constant,
    /// `get_constant_schedule_with_warmup`: linear warmup from 0, then `base_lr`.
    ConstantWithWarmup,
    /// `get_linear_schedule_with_warmup`: linear warmup, then linear decay to 0 at `total_steps`.
    Linear,
    /// `get_cosine_schedule_with_warmup` with `num_cycles = 0.5`: warmup, then half a cosine to 0.
    Cosine,
}

impl ScheduleKind {
    /// Every kind, in the order their names are listed in error messages.
    pub const ALL: [ScheduleKind; 4] = [
        ScheduleKind::Constant,
        ScheduleKind::ConstantWithWarmup,
        ScheduleKind::Linear,
        ScheduleKind::Cosine,
    ];

    /// The HF name of this kind (`"linear"`, `"cosine"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::ConstantWithWarmup => "constant_with_warmup",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScheduleKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        ScheduleKind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| {
                let valid: Vec<&str> = ScheduleKind::ALL.iter().map(|k| k.name()).collect();
                Error::Invalid(format!(
                    "unknown lr_scheduler_type '{s}'; valid: {}",
                    valid.join(", ")
                ))
            })
    }
}

/// A learning-rate schedule: `lr_at(step)` for every optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// The shape of the schedule.
    pub kind: ScheduleKind,
    /// The peak learning rate (HF `learning_rate`).
    pub base_lr: f64,
    /// Steps of linear warmup from 0 to `base_lr` (ignored by [`ScheduleKind::Constant`]).
    pub warmup_steps: u64,
    /// Total optimizer steps; linear and cosine reach 0 here.
    pub total_steps: u64,
}

impl LrSchedule {
    /// A schedule; `base_lr` must be finite and not negative.
    pub fn new(
        kind: ScheduleKind,
        base_lr: f64,
        warmup_steps: u64,
        total_steps: u64,
    ) -> Result<Self> {
        if !base_lr.is_finite() || base_lr < 0.0 {
            return Err(Error::Invalid(format!(
                "learning_rate must be a finite number >= 0, got {base_lr}"
            )));
        }
        Ok(LrSchedule {
            kind,
            base_lr,
            warmup_steps,
            total_steps,
        })
    }

    /// The multiplier of `base_lr` at optimizer step `step` (transformers' lr lambda).
    pub fn factor(&self, step: u64) -> f64 {
        // Python ints never overflow; i128 holds every u64 difference exactly.
        let step_i = step as i128;
        let warmup = self.warmup_steps as i128;
        let total = self.total_steps as i128;
        let warming = self.kind != ScheduleKind::Constant && step_i < warmup;
        if warming {
            // float(current_step) / float(max(1, num_warmup_steps))
            return step as f64 / warmup.max(1) as f64;
        }
        match self.kind {
            ScheduleKind::Constant | ScheduleKind::ConstantWithWarmup => 1.0,
            ScheduleKind::Linear => {
                let x = (total - step_i) as f64 / (total - warmup).max(1) as f64;
                non_negative(x)
            }
            ScheduleKind::Cosine => {
                let num_cycles = 0.5;
                let progress = (step_i - warmup) as f64 / (total - warmup).max(1) as f64;
                let x = 0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos());
                non_negative(x)
            }
        }
    }

    /// The learning rate of the `step`-th optimizer step (0-based), as torch's `LambdaLR` sets it.
    pub fn lr_at(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}

/// Python's `max(0.0, x)`.
fn non_negative(x: f64) -> f64 {
    if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// Warmup steps for a warmup ratio, as HF `get_warmup_steps`: `ceil(total_steps * ratio)`.
pub fn warmup_steps_from_ratio(ratio: f64, total_steps: u64) -> Result<u64> {
    if !(0.0..=1.0).contains(&ratio) {
        return Err(Error::Invalid(format!(
            "warmup_ratio must be in [0, 1], got {ratio}"
        )));
    }
    // The same f64 product as Python's `num_training_steps * ratio`: 100 * 0.07 is
    // 7.000000000000001 there too, so both round up to 8.
    Ok((total_steps as f64 * ratio).ceil() as u64)
}

/// Warmup steps for HF's `warmup_steps` argument (transformers >= 5): a value >= 1 is a step
/// count (truncated, as Python's `int`), a value in [0, 1) a ratio of `total_steps`.
pub fn warmup_steps_from_arg(warmup_steps: f64, total_steps: u64) -> Result<u64> {
    if warmup_steps.is_nan() || warmup_steps < 0.0 {
        return Err(Error::Invalid(format!(
            "warmup_steps must be >= 0, got {warmup_steps}"
        )));
    }
    if warmup_steps >= 1.0 {
        if !warmup_steps.is_finite() || warmup_steps >= u64::MAX as f64 {
            return Err(Error::Invalid(format!(
                "warmup_steps is too large: {warmup_steps}"
            )));
        }
        return Ok(warmup_steps.trunc() as u64);
    }
    warmup_steps_from_ratio(warmup_steps, total_steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_hf_name_and_lists_them_on_error() {
        for kind in ScheduleKind::ALL {
            assert_eq!(kind.name().parse::<ScheduleKind>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.name());
        }
        let err = "cosine_with_restarts".parse::<ScheduleKind>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cosine_with_restarts"), "{msg}");
        assert!(
            msg.contains("constant, constant_with_warmup, linear, cosine"),
            "{msg}"
        );
        assert!("Linear".parse::<ScheduleKind>().is_err());
    }

    #[test]
    fn rejects_bad_learning_rates_and_ratios() {
        assert!(LrSchedule::new(ScheduleKind::Linear, f64::NAN, 0, 10).is_err());
        assert!(LrSchedule::new(ScheduleKind::Linear, -1e-4, 0, 10).is_err());
        assert!(LrSchedule::new(ScheduleKind::Linear, f64::INFINITY, 0, 10).is_err());
        assert!(warmup_steps_from_ratio(1.5, 10).is_err());
        assert!(warmup_steps_from_ratio(-0.1, 10).is_err());
        assert!(warmup_steps_from_ratio(f64::NAN, 10).is_err());
        assert!(warmup_steps_from_arg(-1.0, 10).is_err());
        assert!(warmup_steps_from_arg(f64::INFINITY, 10).is_err());
        assert_eq!(warmup_steps_from_ratio(1.0, 10).unwrap(), 10);
    }

    #[test]
    fn cosine_ends_at_zero_and_linear_stays_there() {
        let cos = LrSchedule::new(ScheduleKind::Cosine, 1.0, 2, 10).unwrap();
        assert_eq!(cos.lr_at(0), 0.0);
        assert_eq!(cos.lr_at(2), 1.0);
        assert!(cos.lr_at(10) < 1e-15);
        let lin = LrSchedule::new(ScheduleKind::Linear, 1.0, 2, 10).unwrap();
        assert_eq!(lin.lr_at(10), 0.0);
        assert_eq!(lin.lr_at(u64::MAX), 0.0);
    }

    /// transformers + torch, run by scripts/make_schedule_fixture.py.
    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/schedule/lrs.json"
    );

    fn fixture() -> serde_json::Value {
        let text = std::fs::read_to_string(FIXTURE).expect("read tests/fixtures/schedule/lrs.json");
        serde_json::from_str(&text).expect("parse lrs.json")
    }

    #[test]
    fn lr_at_matches_transformers_get_scheduler_under_torch_lambda_lr() {
        let doc = fixture();
        let cases = doc["cases"].as_array().unwrap();
        assert!(cases.len() >= 20);
        let mut checked = 0;
        for case in cases {
            let kind: ScheduleKind = case["kind"].as_str().unwrap().parse().unwrap();
            let base_lr = case["base_lr"].as_f64().unwrap();
            let total = case["total_steps"].as_u64().unwrap();
            let warmup = match case.get("warmup_ratio") {
                Some(ratio) => {
                    let w = warmup_steps_from_ratio(ratio.as_f64().unwrap(), total).unwrap();
                    assert_eq!(w, case["warmup_steps"].as_u64().unwrap(), "{case}");
                    w
                }
                None => case["warmup_steps"].as_u64().unwrap(),
            };
            let schedule = LrSchedule::new(kind, base_lr, warmup, total).unwrap();
            let lrs = case["lrs"].as_array().unwrap();
            assert!(lrs.len() as u64 > total);
            for (k, want) in lrs.iter().enumerate() {
                let want = want.as_f64().unwrap();
                let got = schedule.lr_at(k as u64);
                let tol = 1e-12 * want.abs();
                assert!(
                    (got - want).abs() <= tol,
                    "{kind} warmup {warmup} total {total}: step {k}: got {got:e}, torch {want:e}"
                );
                checked += 1;
            }
        }
        assert!(checked > 300, "{checked}");
    }

    #[test]
    fn warmup_steps_match_training_arguments_get_warmup_steps() {
        let doc = fixture();
        let rows = doc["warmup_args"].as_array().unwrap();
        assert!(rows.len() >= 8);
        for row in rows {
            let arg = row["warmup_steps_arg"].as_f64().unwrap();
            let total = row["total_steps"].as_u64().unwrap();
            let want = row["warmup_steps"].as_u64().unwrap();
            assert_eq!(warmup_steps_from_arg(arg, total).unwrap(), want, "{row}");
            if arg < 1.0 {
                assert_eq!(warmup_steps_from_ratio(arg, total).unwrap(), want, "{row}");
            }
        }
    }
}
