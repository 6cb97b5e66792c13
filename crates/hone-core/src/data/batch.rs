//! Tokenized training items and batches: label masking, truncation, right padding, and a
//! seeded per-epoch shuffle whose position a checkpoint can save and restore.
//!
//! Tokenization boundary. With `completion_only`, every segment of an example is tokenized on
//! its own and the ids are concatenated: `ids = encode(prompt) ++ encode(completion)`, labels
//! -100 on the prompt's ids. So the prompt's ids are exactly what the model sees at generation
//! time when given the prompt, and the boundary between masked and trained tokens is exact.
//! (Tokenizing the full text and masking `len(encode(prompt))` tokens, as TRL does, mislabels
//! a token when BPE merges across the boundary; template examples already move the prompt's
//! trailing spaces into the completion so a byte-level BPE splits there anyway.) Without
//! `completion_only` the whole text is tokenized at once, as transformers' `run_clm` does.
//!
//! `bos_id` is prepended (label -100) and `eos_id` appended after the completion (trained),
//! as fine-tuning scripts do; leave them `None` when the text already holds them (chat
//! templates usually do).

use std::path::Path;

use crate::data::template::Example;
use crate::error::{Error, Result};

/// The label of a token that carries no loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i32 = -100;

/// What to do with an example longer than `max_seq_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Keep the first `max_seq_len` tokens and count the example as truncated.
    #[default]
    Truncate,
    /// Fail, naming the example's line.
    Error,
}

/// How examples become token ids and labels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenizeOptions {
    /// Train only on the trained segments (completions, assistant turns).
    pub completion_only: bool,
    /// Prepended to every example, when given.
    pub bos_id: Option<u32>,
    /// Appended to every example (and trained on), when given.
    pub eos_id: Option<u32>,
    /// Longest sequence kept, in tokens (bos and eos included).
    pub max_seq_len: Option<usize>,
    /// What to do with longer examples.
    pub overflow: Overflow,
}

/// One tokenized example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainItem {
    /// 1-based line of the source row.
    pub line: usize,
    /// Token ids.
    pub ids: Vec<u32>,
    /// Same length as `ids`: the id itself where the loss applies, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i32>,
}

impl TrainItem {
    /// Number of positions whose label is predicted (`labels[1..]` not ignored).
    pub fn loss_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

/// The result of tokenizing examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// Items in example order.
    pub items: Vec<TrainItem>,
    /// How many examples were cut to `max_seq_len`.
    pub truncated: usize,
    /// Lines of examples dropped because no token of theirs carries a loss (e.g. an empty
    /// completion, or a prompt that filled `max_seq_len`).
    pub dropped: Vec<usize>,
}

/// Tokenize examples with `encode` (text -> ids, no special tokens added) into training items.
/// `source` names the dataset in errors.
pub fn tokenize_examples(
    examples: &[Example],
    source: &Path,
    encode: &dyn Fn(&str) -> Result<Vec<u32>>,
    options: &TokenizeOptions,
) -> Result<Tokenized> {
    if options.max_seq_len == Some(0) {
        return Err(Error::Invalid("max_seq_len must be at least 1".into()));
    }
    let mut out = Tokenized {
        items: Vec::with_capacity(examples.len()),
        truncated: 0,
        dropped: Vec::new(),
    };
    for ex in examples {
        let encode_at = |text: &str| {
            encode(text).map_err(|e| {
                Error::format(source, format!("line {}: tokenizing failed: {e}", ex.line))
            })
        };
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        if let Some(bos) = options.bos_id {
            ids.push(bos);
            labels.push(IGNORE_INDEX);
        }
        if options.completion_only {
            for seg in &ex.segments {
                let seg_ids = encode_at(&seg.text)?;
                for &id in &seg_ids {
                    labels.push(if seg.trained {
                        label_of(id, source)?
                    } else {
                        IGNORE_INDEX
                    });
                }
                ids.extend(seg_ids);
            }
        } else {
            let text_ids = encode_at(&ex.text())?;
            for &id in &text_ids {
                labels.push(label_of(id, source)?);
            }
            ids.extend(text_ids);
        }
        if let Some(eos) = options.eos_id {
            ids.push(eos);
            labels.push(label_of(eos, source)?);
        }
        if let Some(max) = options.max_seq_len {
            if ids.len() > max {
                if options.overflow == Overflow::Error {
                    return Err(Error::format(
                        source,
                        format!(
                            "line {}: example is {} tokens, longer than max_seq_len {max}",
                            ex.line,
                            ids.len()
                        ),
                    ));
                }
                ids.truncate(max);
                labels.truncate(max);
                out.truncated += 1;
            }
        }
        let item = TrainItem {
            line: ex.line,
            ids,
            labels,
        };
        if item.loss_tokens() == 0 {
            out.dropped.push(ex.line);
        } else {
            out.items.push(item);
        }
    }
    Ok(out)
}

fn label_of(id: u32, source: &Path) -> Result<i32> {
    i32::try_from(id)
        .map_err(|_| Error::format(source, format!("token id {id} does not fit a label (i32)")))
}

/// The small, fast generator behind the shuffle (splitmix64): the same numbers on every
/// platform, wasm included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (multiply-shift; the bias, below n / 2^64, does not matter here).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// The order in which epoch `epoch` visits `n` items under `seed` (Fisher-Yates).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    // Mix seed and epoch so that epochs are not shifted copies of one stream.
    let mut rng =
        SplitMix64::new(SplitMix64::new(seed).next_u64() ^ SplitMix64::new(epoch).next_u64());
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    order
}

/// How long a batch's rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// As long as the batch's longest item.
    #[default]
    Longest,
    /// Always this many tokens (fixed shapes; items must not be longer).
    Fixed(usize),
}

/// Batching settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Items per batch.
    pub batch_size: usize,
    /// Shuffle the items every epoch.
    pub shuffle: bool,
    /// Seed of the shuffle.
    pub seed: u64,
    /// Leave out an epoch's last, smaller batch.
    pub drop_last: bool,
    /// Id written into padding positions.
    pub pad_id: u32,
    /// Row length of a batch.
    pub padding: Padding,
}

/// A padded batch, row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Token ids, padded on the right with `pad_id`.
    pub ids: Vec<u32>,
    /// Labels, [`IGNORE_INDEX`] on padding.
    pub labels: Vec<i32>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<u32>,
    /// Rows.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Source line of each row.
    pub lines: Vec<usize>,
}

impl Batch {
    /// Pad `items` into one batch of rows `seq` long (at least the longest item).
    pub fn from_items(items: &[&TrainItem], pad_id: u32, seq: usize) -> Batch {
        let batch = items.len();
        let mut ids = vec![pad_id; batch * seq];
        let mut labels = vec![IGNORE_INDEX; batch * seq];
        let mut attention_mask = vec![0; batch * seq];
        for (row, item) in items.iter().enumerate() {
            let start = row * seq;
            let n = item.ids.len().min(seq);
            ids[start..start + n].copy_from_slice(&item.ids[..n]);
            labels[start..start + n].copy_from_slice(&item.labels[..n]);
            attention_mask[start..start + n].fill(1);
        }
        Batch {
            ids,
            labels,
            attention_mask,
            batch,
            seq,
            lines: items.iter().map(|i| i.line).collect(),
        }
    }

    /// Number of positions whose label is predicted (per row, `labels[1..]` not ignored):
    /// the denominator of a mean token loss.
    pub fn loss_tokens(&self) -> usize {
        (0..self.batch)
            .map(|r| {
                self.labels[r * self.seq..(r + 1) * self.seq]
                    .iter()
                    .skip(1)
                    .filter(|&&l| l != IGNORE_INDEX)
                    .count()
            })
            .sum()
    }
}

/// Where a loader is: the epoch, and how many items of that epoch's order were handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DataPosition {
    /// Epoch, from 0.
    pub epoch: u64,
    /// Items of this epoch already handed out.
    pub index: usize,
}

/// Hands out batches epoch after epoch, in a seeded order that depends only on (seed, epoch),
/// so saving [`DataPosition`] and restoring it resumes with exactly the same batches.
#[derive(Debug, Clone)]
pub struct Loader {
    items: Vec<TrainItem>,
    options: LoaderOptions,
    position: DataPosition,
    order: Vec<usize>,
}

impl Loader {
    /// A loader over `items`, at epoch 0.
    pub fn new(items: Vec<TrainItem>, options: LoaderOptions) -> Result<Self> {
        if items.is_empty() {
            return Err(Error::Invalid("no training items to batch".into()));
        }
        if options.batch_size == 0 {
            return Err(Error::Invalid("batch_size must be at least 1".into()));
        }
        if options.drop_last && items.len() < options.batch_size {
            return Err(Error::Invalid(format!(
                "drop_last with batch_size {} leaves no batch of {} items",
                options.batch_size,
                items.len()
            )));
        }
        if let Padding::Fixed(seq) = options.padding {
            if let Some(long) = items.iter().find(|i| i.ids.len() > seq) {
                return Err(Error::Invalid(format!(
                    "the example at line {} is {} tokens, longer than the padded length {seq}",
                    long.line,
                    long.ids.len()
                )));
            }
        }
        let mut loader = Loader {
            items,
            options,
            position: DataPosition::default(),
            order: Vec::new(),
        };
        loader.order = loader.order_of(0);
        Ok(loader)
    }

    fn order_of(&self, epoch: u64) -> Vec<usize> {
        if self.options.shuffle {
            epoch_order(self.items.len(), self.options.seed, epoch)
        } else {
            (0..self.items.len()).collect()
        }
    }

    /// Items handed out per epoch (all, or whole batches only with `drop_last`).
    fn epoch_items(&self) -> usize {
        if self.options.drop_last {
            self.items.len() / self.options.batch_size * self.options.batch_size
        } else {
            self.items.len()
        }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Always false: a loader holds at least one item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The items, in their original order.
    pub fn items(&self) -> &[TrainItem] {
        &self.items
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.epoch_items().div_ceil(self.options.batch_size)
    }

    /// Where the next batch comes from.
    pub fn position(&self) -> DataPosition {
        self.position
    }

    /// Resume from a saved position.
    pub fn set_position(&mut self, position: DataPosition) -> Result<()> {
        if position.index > self.epoch_items() {
            return Err(Error::Invalid(format!(
                "data position {} of epoch {} is past the epoch's {} items",
                position.index,
                position.epoch,
                self.epoch_items()
            )));
        }
        if position.epoch != self.position.epoch || self.order.is_empty() {
            self.order = self.order_of(position.epoch);
        }
        self.position = position;
        Ok(())
    }

    /// The next batch, moving on to the next epoch (and its order) when one ends.
    pub fn next_batch(&mut self) -> Batch {
        if self.position.index >= self.epoch_items() {
            let epoch = self.position.epoch + 1;
            self.order = self.order_of(epoch);
            self.position = DataPosition { epoch, index: 0 };
        }
        let start = self.position.index;
        let end = (start + self.options.batch_size).min(self.epoch_items());
        let rows: Vec<&TrainItem> = self.order[start..end]
            .iter()
            .map(|&i| &self.items[i])
            .collect();
        self.position.index = end;
        let seq = match self.options.padding {
            Padding::Fixed(seq) => seq,
            Padding::Longest => rows.iter().map(|i| i.ids.len()).max().unwrap_or(0),
        };
        Batch::from_items(&rows, self.options.pad_id, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::template::{Example, Segment};

    /// A stand-in tokenizer: one id per character (its code point), so boundaries are visible.
    fn chars(text: &str) -> Result<Vec<u32>> {
        Ok(text.chars().map(|c| c as u32).collect())
    }

    /// A stand-in BPE-like tokenizer that merges " p" into one token, to show why segments are
    /// tokenized separately.
    fn merging(text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut it = text.chars().peekable();
        while let Some(c) = it.next() {
            if c == ' ' && it.peek() == Some(&'p') {
                it.next();
                out.push(1000);
            } else {
                out.push(c as u32);
            }
        }
        Ok(out)
    }

    fn path() -> &'static Path {
        Path::new("d.jsonl")
    }

    #[test]
    fn completion_only_masks_the_prompt_and_appends_trained_eos() {
        let ex = Example::prompt_completion(3, "ab ->", " p");
        let opts = TokenizeOptions {
            completion_only: true,
            bos_id: Some(1),
            eos_id: Some(2),
            ..Default::default()
        };
        let t = tokenize_examples(std::slice::from_ref(&ex), path(), &merging, &opts).unwrap();
        let item = &t.items[0];
        assert_eq!(item.ids, vec![1, 97, 98, 32, 45, 62, 1000, 2]);
        assert_eq!(
            item.labels,
            vec![-100, -100, -100, -100, -100, -100, 1000, 2]
        );
        assert_eq!(item.line, 3);
        assert_eq!(item.loss_tokens(), 2);
        // Without completion_only the whole text is one encode call and everything is a label.
        let opts = TokenizeOptions {
            completion_only: false,
            ..opts
        };
        let item = &tokenize_examples(&[ex], path(), &merging, &opts)
            .unwrap()
            .items[0];
        assert_eq!(item.labels, vec![-100, 97, 98, 32, 45, 62, 1000, 2]);
    }

    #[test]
    fn separate_segments_keep_the_boundary_where_bpe_would_merge_across_it() {
        // Prompt ends in a space, completion starts with "p": the full text merges " p", so
        // masking len(encode(prompt)) tokens of encode(full) would hide the first answer token.
        let ex = Example::prompt_completion(1, "a ", "pq");
        let full = merging(&ex.text()).unwrap();
        let prompt_len = merging("a ").unwrap().len();
        assert_eq!(full, vec![97, 1000, 113]);
        assert_eq!(prompt_len, 2); // masking 2 of `full` would mask the merged " p"
        let opts = TokenizeOptions {
            completion_only: true,
            ..Default::default()
        };
        let item = &tokenize_examples(&[ex], path(), &merging, &opts)
            .unwrap()
            .items[0];
        assert_eq!(item.ids, vec![97, 32, 112, 113]);
        assert_eq!(item.labels, vec![-100, -100, 112, 113]);
    }

    #[test]
    fn multi_turn_segments_are_masked_separately() {
        let ex = Example {
            line: 1,
            segments: vec![
                Segment {
                    text: "U1".into(),
                    trained: false,
                },
                Segment {
                    text: "A1".into(),
                    trained: true,
                },
                Segment {
                    text: "U2".into(),
                    trained: false,
                },
                Segment {
                    text: "A2".into(),
                    trained: true,
                },
            ],
        };
        let opts = TokenizeOptions {
            completion_only: true,
            ..Default::default()
        };
        let item = &tokenize_examples(&[ex], path(), &chars, &opts)
            .unwrap()
            .items[0];
        assert_eq!(item.labels, vec![-100, -100, 65, 49, -100, -100, 65, 50]);
    }

    #[test]
    fn truncation_counts_or_fails_and_lossless_items_are_dropped() {
        let examples = vec![
            Example::prompt_completion(1, "abc", "de"),
            Example::prompt_completion(2, "a", "b"),
            Example::prompt_completion(3, "abcdef", "g"),
            Example::prompt_completion(4, "x", ""),
        ];
        let opts = TokenizeOptions {
            completion_only: true,
            max_seq_len: Some(4),
            ..Default::default()
        };
        let t = tokenize_examples(&examples, path(), &chars, &opts).unwrap();
        assert_eq!(t.truncated, 2);
        assert_eq!(t.items.len(), 2);
        assert_eq!(t.items[0].ids, vec![97, 98, 99, 100]);
        assert_eq!(t.items[0].labels, vec![-100, -100, -100, 100]);
        assert_eq!(t.dropped, vec![3, 4]);
        let opts = TokenizeOptions {
            overflow: Overflow::Error,
            ..opts
        };
        let err = tokenize_examples(&examples, path(), &chars, &opts)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "d.jsonl: line 1: example is 5 tokens, longer than max_seq_len 4"
        );
    }

    #[test]
    fn tokenizer_errors_name_the_line() {
        let fail = |_: &str| -> Result<Vec<u32>> { Err(Error::Invalid("boom".into())) };
        let err = tokenize_examples(
            &[Example::prompt_completion(9, "a", "b")],
            path(),
            &fail,
            &TokenizeOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "d.jsonl: line 9: tokenizing failed: boom");
    }

    fn items(lens: &[usize]) -> Vec<TrainItem> {
        lens.iter()
            .enumerate()
            .map(|(i, &n)| TrainItem {
                line: i + 1,
                ids: (0..n as u32).map(|t| 10 * (i as u32 + 1) + t).collect(),
                labels: (0..n as i32)
                    .map(|t| if t == 0 { -100 } else { t })
                    .collect(),
            })
            .collect()
    }

    fn options(batch_size: usize, shuffle: bool) -> LoaderOptions {
        LoaderOptions {
            batch_size,
            shuffle,
            seed: 42,
            drop_last: false,
            pad_id: 0,
            padding: Padding::Longest,
        }
    }

    #[test]
    fn batches_pad_right_with_masked_labels() {
        let mut loader = Loader::new(items(&[3, 1]), options(2, false)).unwrap();
        let b = loader.next_batch();
        assert_eq!((b.batch, b.seq), (2, 3));
        assert_eq!(b.ids, vec![10, 11, 12, 20, 0, 0]);
        assert_eq!(b.labels, vec![-100, 1, 2, -100, -100, -100]);
        assert_eq!(b.attention_mask, vec![1, 1, 1, 1, 0, 0]);
        assert_eq!(b.lines, vec![1, 2]);
        assert_eq!(b.loss_tokens(), 2);
        let mut fixed = Loader::new(
            items(&[2]),
            LoaderOptions {
                padding: Padding::Fixed(4),
                pad_id: 7,
                ..options(1, false)
            },
        )
        .unwrap();
        assert_eq!(fixed.next_batch().ids, vec![10, 11, 7, 7]);
        let err = Loader::new(
            items(&[5]),
            LoaderOptions {
                padding: Padding::Fixed(4),
                ..options(1, false)
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 1 is 5 tokens"), "{err}");
    }

    #[test]
    fn shuffle_is_a_pinned_permutation_that_changes_per_epoch() {
        let e0 = epoch_order(10, 42, 0);
        let e1 = epoch_order(10, 42, 1);
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(e0, e1);
        assert_ne!(e0, epoch_order(10, 43, 0));
        // Pinned: the same on every platform and across releases (checkpoints depend on it).
        assert_eq!(e0, PINNED_SEED42_EPOCH0);
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    /// Computed independently by a Python transcription of splitmix64 + Fisher-Yates.
    const PINNED_SEED42_EPOCH0: [usize; 10] = [4, 9, 1, 3, 5, 7, 2, 6, 0, 8];

    #[test]
    fn epochs_cover_every_item_once_and_drop_last_works() {
        let mut loader = Loader::new(items(&[1; 10]), options(4, true)).unwrap();
        assert_eq!(loader.batches_per_epoch(), 3);
        let mut seen: Vec<usize> = Vec::new();
        for _ in 0..3 {
            seen.extend(loader.next_batch().lines);
        }
        assert_eq!(
            loader.position(),
            DataPosition {
                epoch: 0,
                index: 10
            }
        );
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(sorted, (1..=10).collect::<Vec<_>>());
        let b = loader.next_batch();
        assert_eq!(loader.position(), DataPosition { epoch: 1, index: 4 });
        assert_eq!(b.batch, 4);

        let mut dl = Loader::new(
            items(&[1; 10]),
            LoaderOptions {
                drop_last: true,
                ..options(4, true)
            },
        )
        .unwrap();
        assert_eq!(dl.batches_per_epoch(), 2);
        let sizes: Vec<usize> = (0..4).map(|_| dl.next_batch().batch).collect();
        assert_eq!(sizes, vec![4, 4, 4, 4]);
        assert_eq!(dl.position(), DataPosition { epoch: 1, index: 8 });
    }

    #[test]
    fn restoring_a_position_resumes_with_the_same_batches() {
        let mut a = Loader::new(items(&[1, 2, 3, 4, 5, 6, 7]), options(3, true)).unwrap();
        for _ in 0..4 {
            a.next_batch();
        }
        let saved = a.position();
        let json = serde_json::to_string(&saved).unwrap();
        let expected: Vec<Batch> = (0..5).map(|_| a.next_batch()).collect();

        let mut b = Loader::new(items(&[1, 2, 3, 4, 5, 6, 7]), options(3, true)).unwrap();
        b.set_position(serde_json::from_str(&json).unwrap())
            .unwrap();
        let resumed: Vec<Batch> = (0..5).map(|_| b.next_batch()).collect();
        assert_eq!(resumed, expected);
        assert!(b.set_position(DataPosition { epoch: 0, index: 8 }).is_err());
    }

    #[test]
    fn loader_rejects_bad_options() {
        assert!(Loader::new(Vec::new(), options(1, false)).is_err());
        assert!(Loader::new(items(&[1]), options(0, false)).is_err());
        let dl = LoaderOptions {
            drop_last: true,
            ..options(4, false)
        };
        assert!(Loader::new(items(&[1, 1]), dl).is_err());
    }
}
