//! The Trainer: optimizer steps with gradient accumulation, a learning-rate schedule, gradient
//! clipping, periodic logging / evaluation / checkpoints, early stopping and non-finite loss
//! detection. It drives any [`Engine`] and knows nothing about where the compute runs; it
//! reaches files only through the [`TrainerHooks`] the caller gives it.
#![allow(async_fn_in_trait)] // used generically (`impl TrainerHooks`), like `Engine`

use serde::{Deserialize, Serialize};

use crate::data::{Batch, DataPosition, Loader};
use crate::engine::{Engine, LossSum, MicroBatch};
use crate::error::{Error, Result};

/// The loop's settings (HF TrainingArguments names where they exist).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerOptions {
    /// Optimizer steps to take in all.
    pub max_steps: u64,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Global grad-norm clipping (None or <= 0: off).
    pub max_grad_norm: Option<f32>,
    /// Log every N steps (0 = never).
    pub logging_steps: u64,
    /// Evaluate every N steps (0 = only at the end, when there is an eval set).
    pub eval_steps: u64,
    /// Checkpoint every N steps (0 = only at the end).
    pub save_steps: u64,
    /// Stop after this many evaluations without improvement (0 = off).
    pub early_stopping_patience: u32,
    /// Minimum improvement of the eval loss that counts.
    pub early_stopping_threshold: f64,
    /// Base seed; the dropout seed of each micro-batch derives from it and the step.
    pub seed: u64,
}

/// Where the training stands: all a checkpoint needs besides engine state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Data position after the last consumed micro-batch.
    pub data: DataPosition,
    /// (step, mean train loss) of every step so far.
    pub loss_history: Vec<(u64, f64)>,
    /// (step, eval loss) of every evaluation so far.
    pub eval_history: Vec<(u64, f64)>,
    /// Best eval loss and its step.
    pub best: Option<(u64, f64)>,
    /// Evaluations since the best.
    pub evals_without_improvement: u32,
    /// Label tokens seen.
    pub tokens_seen: u64,
}

impl TrainerState {
    /// A fresh run.
    pub fn new() -> Self {
        TrainerState {
            step: 0,
            data: DataPosition::default(),
            loss_history: Vec::new(),
            eval_history: Vec::new(),
            best: None,
            evals_without_improvement: 0,
            tokens_seen: 0,
        }
    }
}

impl Default for TrainerState {
    fn default() -> Self {
        Self::new()
    }
}

/// What happened, for progress bars, logs and the browser's callback.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    /// An optimizer step finished.
    Step {
        step: u64,
        epoch: f64,
        loss: f64,
        lr: f32,
        grad_norm: f32,
        /// Label tokens of the step (the loss's denominator).
        tokens: usize,
        /// Tokens fed through the model in the step (padding excluded).
        input_tokens: usize,
    },
    /// An evaluation finished.
    Eval {
        step: u64,
        loss: f64,
        perplexity: f64,
        best: bool,
    },
    /// Early stopping ended the run.
    EarlyStop { step: u64, best_step: u64 },
}

/// The caller's side of the loop: the schedule, logging and checkpointing. Every method but
/// `lr` has a default that does nothing.
pub trait TrainerHooks<E: Engine> {
    /// Learning rate of the optimizer step with index `step` (0-based).
    fn lr(&self, step: u64) -> f32;
    /// Something happened; return false to stop training after this step.
    fn on_event(&mut self, _event: &TrainEvent) -> Result<bool> {
        Ok(true)
    }
    /// Save a checkpoint of `engine` and `state` (called after `state.step` steps).
    async fn save_checkpoint(&mut self, _engine: &E, _state: &TrainerState) -> Result<()> {
        Ok(())
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    MaxSteps,
    EarlyStopping,
    Requested,
}

/// Drives an engine over a loader.
pub struct Trainer<E: Engine> {
    pub engine: E,
    pub loader: Loader,
    pub eval_batches: Vec<Batch>,
    pub options: TrainerOptions,
    pub state: TrainerState,
}

impl<E: Engine> Trainer<E> {
    /// A trainer at step 0 (or at `state`, when resuming: the loader is moved to its position).
    pub fn new(
        engine: E,
        mut loader: Loader,
        eval_batches: Vec<Batch>,
        options: TrainerOptions,
        state: Option<TrainerState>,
    ) -> Result<Self> {
        if options.gradient_accumulation_steps == 0 {
            return Err(Error::Invalid(
                "gradient_accumulation_steps must be at least 1".into(),
            ));
        }
        if options.max_steps == 0 {
            return Err(Error::Invalid("max_steps must be at least 1".into()));
        }
        let state = state.unwrap_or_default();
        loader.set_position(state.data)?;
        Ok(Trainer {
            engine,
            loader,
            eval_batches,
            options,
            state,
        })
    }

    /// Epochs completed, fractionally.
    pub fn epoch(&self) -> f64 {
        let per_epoch = self.loader.len().max(1) as f64;
        let p = self.loader.position();
        p.epoch as f64 + p.index as f64 / per_epoch
    }

    /// Mean loss over the eval batches.
    pub async fn evaluate(&mut self) -> Result<LossSum> {
        let mut total = LossSum::default();
        for b in &self.eval_batches {
            let l = self.engine.eval_loss(&micro(b)).await?;
            total.nll_sum += l.nll_sum;
            total.tokens += l.tokens;
        }
        Ok(total)
    }

    /// One optimizer step: accumulate gradients over micro-batches, normalised by the label
    /// tokens of the whole step (as transformers' Trainer does with `num_items_in_batch`), then
    /// clip and apply AdamW. Returns the step's mean loss, grad norm, label tokens and input
    /// tokens (padding excluded).
    pub async fn step(&mut self, lr: f32) -> Result<(f64, f32, usize, usize)> {
        let batches: Vec<Batch> = (0..self.options.gradient_accumulation_steps)
            .map(|_| self.loader.next_batch())
            .collect();
        let tokens: usize = batches.iter().map(Batch::loss_tokens).sum();
        let input_tokens: usize = batches
            .iter()
            .map(|b| b.attention_mask.iter().filter(|&&m| m != 0).count())
            .sum();
        if tokens == 0 {
            return Err(Error::Invalid(format!(
                "step {}: the batch has no label tokens (every label is -100); check --completion_only and --max_seq_len",
                self.state.step + 1
            )));
        }
        let mut loss = LossSum::default();
        for (i, b) in batches.iter().enumerate() {
            let seed = self.options.seed
                ^ (self.state.step.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(i as u64);
            self.engine.set_dropout_seed(seed);
            let l = self
                .engine
                .forward_backward(&micro(b), 1.0 / tokens as f32)
                .await?;
            loss.nll_sum += l.nll_sum;
            loss.tokens += l.tokens;
        }
        let mean = loss.mean();
        if !mean.is_finite() {
            return Err(Error::Invalid(format!(
                "step {}: the loss is {mean} (not finite); training stopped before applying this step, the last checkpoint is intact; lower --learning_rate or check the data",
                self.state.step + 1
            )));
        }
        let clip = self.options.max_grad_norm.filter(|&n| n > 0.0);
        let stats = self.engine.optimizer_step(lr, clip).await?;
        if !stats.grad_norm.is_finite() {
            return Err(Error::Invalid(format!(
                "step {}: the gradient norm is {} (not finite); the last checkpoint is intact",
                self.state.step + 1,
                stats.grad_norm
            )));
        }
        self.state.step += 1;
        self.state.data = self.loader.position();
        self.state.tokens_seen += tokens as u64;
        self.state.loss_history.push((self.state.step, mean));
        Ok((mean, stats.grad_norm, tokens, input_tokens))
    }

    /// Train until `max_steps`, early stopping or a hook asks to stop.
    pub async fn run(&mut self, hooks: &mut impl TrainerHooks<E>) -> Result<StopCause> {
        let o = self.options.clone();
        while self.state.step < o.max_steps {
            let lr = hooks.lr(self.state.step);
            let (loss, grad_norm, tokens, input_tokens) = self.step(lr).await?;
            let step = self.state.step;
            let mut go_on = hooks.on_event(&TrainEvent::Step {
                step,
                epoch: self.epoch(),
                loss,
                lr,
                grad_norm,
                tokens,
                input_tokens,
            })?;
            let last = step == o.max_steps;
            let mut early = false;
            let eval_now = !self.eval_batches.is_empty()
                && ((o.eval_steps > 0 && step.is_multiple_of(o.eval_steps)) || last);
            if eval_now {
                let l = self.evaluate().await?.mean();
                let improved = match self.state.best {
                    None => true,
                    Some((_, b)) => l < b - o.early_stopping_threshold,
                };
                if improved {
                    self.state.best = Some((step, l));
                    self.state.evals_without_improvement = 0;
                } else {
                    self.state.evals_without_improvement += 1;
                }
                self.state.eval_history.push((step, l));
                go_on &= hooks.on_event(&TrainEvent::Eval {
                    step,
                    loss: l,
                    perplexity: l.exp(),
                    best: improved,
                })?;
                if o.early_stopping_patience > 0
                    && self.state.evals_without_improvement >= o.early_stopping_patience
                {
                    early = true;
                }
            }
            let save_now =
                (o.save_steps > 0 && step.is_multiple_of(o.save_steps)) || last || early || !go_on;
            if save_now {
                hooks.save_checkpoint(&self.engine, &self.state).await?;
            }
            if early {
                let best_step = self.state.best.map(|b| b.0).unwrap_or(step);
                hooks.on_event(&TrainEvent::EarlyStop { step, best_step })?;
                return Ok(StopCause::EarlyStopping);
            }
            if !go_on {
                return Ok(StopCause::Requested);
            }
        }
        Ok(StopCause::MaxSteps)
    }
}

fn micro(b: &Batch) -> MicroBatch<'_> {
    MicroBatch {
        ids: &b.ids,
        labels: &b.labels,
        batch: b.batch,
        seq: b.seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{LoaderOptions, Padding, TrainItem, IGNORE_INDEX};
    use crate::engine::{NamedTensor, OptimizerState, StepStats};

    /// A toy engine: loss of a label token = (w[id % 4] - label / 100)^2, plain SGD.
    #[derive(Clone)]
    struct Toy {
        w: Vec<f32>,
        g: Vec<f32>,
        steps: u64,
        fail_at_step: Option<u64>,
    }

    impl Engine for Toy {
        fn describe(&self) -> String {
            "toy".into()
        }
        async fn forward_backward(&mut self, b: &MicroBatch<'_>, scale: f32) -> Result<LossSum> {
            let mut out = LossSum::default();
            for r in 0..b.batch {
                for t in 1..b.seq {
                    let l = b.labels[r * b.seq + t];
                    if l == IGNORE_INDEX {
                        continue;
                    }
                    let i = (b.ids[r * b.seq + t - 1] % 4) as usize;
                    let d = self.w[i] - l as f32 / 100.0;
                    out.nll_sum += (d * d) as f64;
                    out.tokens += 1;
                    self.g[i] += 2.0 * d * scale;
                }
            }
            if self.fail_at_step == Some(self.steps + 1) {
                out.nll_sum = f64::NAN;
            }
            Ok(out)
        }
        async fn optimizer_step(&mut self, lr: f32, _clip: Option<f32>) -> Result<StepStats> {
            let norm = self.g.iter().map(|g| g * g).sum::<f32>().sqrt();
            for (w, g) in self.w.iter_mut().zip(&mut self.g) {
                *w -= lr * *g;
                *g = 0.0;
            }
            self.steps += 1;
            Ok(StepStats { grad_norm: norm })
        }
        async fn eval_loss(&mut self, b: &MicroBatch<'_>) -> Result<LossSum> {
            let saved = self.g.clone();
            let l = self.forward_backward(b, 0.0).await;
            self.g = saved;
            l
        }
        async fn params(&self) -> Result<Vec<NamedTensor>> {
            Ok(vec![NamedTensor {
                name: "w".into(),
                shape: vec![4],
                data: self.w.clone(),
            }])
        }
        async fn set_params(&mut self, p: &[NamedTensor]) -> Result<()> {
            self.w = p[0].data.clone();
            Ok(())
        }
        async fn grads(&self) -> Result<Vec<NamedTensor>> {
            Ok(vec![NamedTensor {
                name: "w".into(),
                shape: vec![4],
                data: self.g.clone(),
            }])
        }
        async fn optimizer_state(&self) -> Result<OptimizerState> {
            Ok(OptimizerState {
                step: self.steps,
                exp_avg: vec![],
                exp_avg_sq: vec![],
            })
        }
        async fn set_optimizer_state(&mut self, s: &OptimizerState) -> Result<()> {
            self.steps = s.step;
            Ok(())
        }
        fn set_dropout_seed(&mut self, _seed: u64) {}
    }

    fn toy() -> Toy {
        Toy {
            w: vec![0.0; 4],
            g: vec![0.0; 4],
            steps: 0,
            fail_at_step: None,
        }
    }

    fn items() -> Vec<TrainItem> {
        (0..10u32)
            .map(|i| {
                let n = 3 + (i as usize % 4);
                let ids: Vec<u32> = (0..n as u32).map(|t| (i + t) % 7).collect();
                let labels: Vec<i32> = (0..n as i32)
                    .map(|t| {
                        if t == 0 {
                            IGNORE_INDEX
                        } else {
                            (i as i32 * 13 + t * 7) % 90
                        }
                    })
                    .collect();
                TrainItem {
                    line: i as usize + 1,
                    ids,
                    labels,
                }
            })
            .collect()
    }

    fn loader(batch_size: usize) -> Loader {
        let o = LoaderOptions {
            batch_size,
            shuffle: true,
            seed: 5,
            drop_last: false,
            pad_id: 0,
            padding: Padding::Longest,
        };
        Loader::new(items(), o).unwrap()
    }

    fn options(max_steps: u64) -> TrainerOptions {
        TrainerOptions {
            max_steps,
            gradient_accumulation_steps: 2,
            max_grad_norm: Some(1.0),
            logging_steps: 1,
            eval_steps: 2,
            save_steps: 3,
            early_stopping_patience: 0,
            early_stopping_threshold: 0.0,
            seed: 1,
        }
    }

    /// Hooks that keep the events and the last checkpoint in memory.
    #[derive(Default)]
    struct Memory {
        events: Vec<TrainEvent>,
        saved: Vec<(Toy, TrainerState)>,
        stop_after: Option<u64>,
    }

    impl TrainerHooks<Toy> for Memory {
        fn lr(&self, step: u64) -> f32 {
            0.5 / (1.0 + step as f32)
        }
        fn on_event(&mut self, e: &TrainEvent) -> Result<bool> {
            self.events.push(e.clone());
            Ok(match (e, self.stop_after) {
                (TrainEvent::Step { step, .. }, Some(s)) => *step < s,
                _ => true,
            })
        }
        async fn save_checkpoint(&mut self, engine: &Toy, state: &TrainerState) -> Result<()> {
            self.saved.push((engine.clone(), state.clone()));
            Ok(())
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // The toy engine never awaits anything pending: one poll completes it.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("toy future pending"),
        }
    }

    #[test]
    fn stopping_and_resuming_reproduces_the_uninterrupted_loss_curve_exactly() {
        let mut full = Trainer::new(toy(), loader(2), vec![], options(9), None).unwrap();
        let mut hooks = Memory::default();
        assert_eq!(block_on(full.run(&mut hooks)).unwrap(), StopCause::MaxSteps);

        let mut first = Trainer::new(toy(), loader(2), vec![], options(9), None).unwrap();
        let mut h1 = Memory {
            stop_after: Some(4),
            ..Default::default()
        };
        assert_eq!(block_on(first.run(&mut h1)).unwrap(), StopCause::Requested);
        let (engine, state) = h1.saved.last().unwrap().clone();
        assert_eq!(state.step, 4);
        let mut resumed = Trainer::new(engine, loader(2), vec![], options(9), Some(state)).unwrap();
        block_on(resumed.run(&mut Memory::default())).unwrap();
        assert_eq!(resumed.state.loss_history, full.state.loss_history);
        assert_eq!(resumed.engine.w, full.engine.w);
    }

    #[test]
    fn accumulation_normalises_by_the_tokens_of_the_whole_step() {
        // One item per micro-batch x 2 accumulation == two items in one micro-batch, no shuffle.
        let o = |b| LoaderOptions {
            batch_size: b,
            shuffle: false,
            seed: 0,
            drop_last: false,
            pad_id: 0,
            padding: Padding::Fixed(8),
        };
        let mut a = Trainer::new(
            toy(),
            Loader::new(items(), o(1)).unwrap(),
            vec![],
            options(3),
            None,
        )
        .unwrap();
        let mut opts = options(3);
        opts.gradient_accumulation_steps = 1;
        let mut b = Trainer::new(
            toy(),
            Loader::new(items(), o(2)).unwrap(),
            vec![],
            opts,
            None,
        )
        .unwrap();
        block_on(a.run(&mut Memory::default())).unwrap();
        block_on(b.run(&mut Memory::default())).unwrap();
        for (x, y) in a.engine.w.iter().zip(&b.engine.w) {
            assert!((x - y).abs() < 1e-6, "{:?} vs {:?}", a.engine.w, b.engine.w);
        }
        for ((_, x), (_, y)) in a.state.loss_history.iter().zip(&b.state.loss_history) {
            assert!((x - y).abs() < 1e-9);
        }
    }

    #[test]
    fn a_non_finite_loss_stops_with_the_step_named_and_nothing_applied() {
        let mut engine = toy();
        engine.fail_at_step = Some(3);
        let mut t = Trainer::new(engine, loader(2), vec![], options(9), None).unwrap();
        let mut hooks = Memory::default();
        let err = block_on(t.run(&mut hooks)).unwrap_err().to_string();
        assert!(
            err.contains("step 3") && err.contains("not finite"),
            "{err}"
        );
        assert_eq!(t.state.step, 2);
        assert_eq!(
            t.engine.steps, 2,
            "the failing step must not reach the optimizer"
        );
    }

    #[test]
    fn early_stopping_ends_the_run_and_checkpoints_the_stop() {
        let eval: Vec<Batch> = vec![loader(10).next_batch()];
        let mut o = options(50);
        o.eval_steps = 1;
        o.early_stopping_patience = 2;
        o.early_stopping_threshold = 10.0; // nothing counts as improvement after the first eval
        let mut t = Trainer::new(toy(), loader(2), eval, o, None).unwrap();
        let mut hooks = Memory::default();
        assert_eq!(
            block_on(t.run(&mut hooks)).unwrap(),
            StopCause::EarlyStopping
        );
        assert_eq!(t.state.step, 3);
        assert_eq!(t.state.best.unwrap().0, 1);
        assert!(matches!(
            hooks.events.last(),
            Some(TrainEvent::EarlyStop {
                step: 3,
                best_step: 1
            })
        ));
        assert_eq!(hooks.saved.last().unwrap().1.step, 3);
    }
}
