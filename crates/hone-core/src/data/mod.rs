//! Datasets for fine-tuning: read rows (JSONL, JSON, CSV/TSV, text), select a split, turn rows
//! into examples with a template or a chat template, tokenize them into training items, and
//! batch them with a reproducible shuffle.
//!
//! ```text
//! read_dataset ─▶ Dataset { rows } ─select(Split, max_samples)─▶ build_examples ─▶ Example { segments }
//!   ─tokenize_examples(encode)─▶ TrainItem { ids, labels } ─Loader─▶ Batch { ids, labels, attention_mask }
//! ```
//!
//! Labels follow Hugging Face: `labels` is aligned with `ids` (not shifted), -100 marks tokens
//! that carry no loss; the engine predicts `labels[t]` from `ids[..t]`.

mod batch;
mod read;
mod split;
mod template;

pub use batch::{
    epoch_order, tokenize_examples, Batch, DataPosition, Loader, LoaderOptions, Overflow, Padding,
    SplitMix64, TokenizeOptions, Tokenized, TrainItem, IGNORE_INDEX,
};
pub use read::{parse_dataset, read_dataset, DataFormat, Dataset, Row};
pub use split::Split;
pub use template::{
    build_examples, ChatRenderer, Example, ExampleFormat, Examples, Message, Segment, SkippedRow,
    Template,
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The whole pipeline on the committed polarity dataset, with a stand-in tokenizer (one id
    /// per byte) in place of the model's.
    #[test]
    fn polarity_pipeline_from_file_to_batches() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/polarity.jsonl"
        ));
        let ds = read_dataset(path, None).unwrap();
        let train = ds
            .select(Some(&Split::parse("train[:80%]").unwrap()), None)
            .unwrap();
        let eval = ds
            .select(Some(&Split::parse("train[160:]").unwrap()), Some(16))
            .unwrap();
        assert_eq!((train.rows.len(), eval.rows.len()), (160, 16));
        assert_eq!(eval.rows[0].line, 161);

        let format = ExampleFormat::Template(Template::parse("{phrase} -> {tone}").unwrap());
        let examples = build_examples(&train, &format, false, None).unwrap();
        assert!(examples.skipped.is_empty());
        let ex = &examples.examples[0];
        assert!(ex.prompt().ends_with(" ->"));
        assert!(ex.completion() == " positive" || ex.completion() == " negative");

        let bytes = |s: &str| -> crate::Result<Vec<u32>> { Ok(s.bytes().map(u32::from).collect()) };
        let opts = TokenizeOptions {
            completion_only: true,
            bos_id: None,
            eos_id: Some(0),
            max_seq_len: Some(128),
            overflow: Overflow::Truncate,
        };
        let tokenized =
            tokenize_examples(&examples.examples, &train.source, &bytes, &opts).unwrap();
        assert_eq!(tokenized.items.len() + tokenized.dropped.len(), 160);
        // Dropped examples are exactly those whose prompt alone fills max_seq_len.
        for ex in &examples.examples {
            let fills = ex.prompt().len() >= 128;
            assert_eq!(
                tokenized.dropped.contains(&ex.line),
                fills,
                "line {}",
                ex.line
            );
        }
        assert!(
            tokenized.truncated > 0,
            "some reviews are longer than 128 bytes"
        );
        // A short, untruncated item: trained labels spell " positive"/" negative" then eos.
        let item = tokenized.items.iter().find(|i| i.ids.len() < 100).unwrap();
        let trained: Vec<u8> = item
            .labels
            .iter()
            .filter(|&&l| l > 0)
            .map(|&l| l as u8)
            .collect();
        assert!(
            trained == b" positive" || trained == b" negative",
            "{trained:?}"
        );
        assert_eq!(item.labels.last(), Some(&0));

        let mut loader = Loader::new(
            tokenized.items,
            LoaderOptions {
                batch_size: 8,
                shuffle: true,
                seed: 7,
                drop_last: false,
                pad_id: 0,
                padding: Padding::Longest,
            },
        )
        .unwrap();
        assert_eq!(loader.batches_per_epoch(), loader.len().div_ceil(8));
        let b = loader.next_batch();
        assert_eq!(b.ids.len(), b.batch * b.seq);
        assert!(b.seq <= 128);
    }
}
