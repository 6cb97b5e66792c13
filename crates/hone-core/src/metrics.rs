//! Evaluation metrics, each matching a reference implementation exactly:
//!
//! - [`accuracy`] and [`macro_f1`] over label strings, as scikit-learn's `accuracy_score` and
//!   `f1_score(average="macro", zero_division=0)`. Labels are compared after trimming
//!   surrounding whitespace (a generated `" positive\n"` counts as `"positive"`); case matters.
//!   Macro-F1 averages over every label seen in references or predictions, so a prediction
//!   outside the label set is a class of its own with F1 0, as in scikit-learn.
//! - [`corpus_bleu`] as sacrebleu 2.x `corpus_bleu` with its defaults: 13a tokenization, no
//!   lowercasing, 4-grams, `smooth_method="exp"`, closest reference length for the brevity
//!   penalty; the score is on sacrebleu's 0-100 scale.
//! - [`rouge`] as rouge-score's `RougeScorer(["rouge1", "rouge2", "rougeL"])` without a stemmer
//!   (lowercase, every run of characters other than `a-z0-9` is a separator), F-measures
//!   averaged over examples. Stemming (`use_stemmer=True`) is not implemented.
//! - [`perplexity`] = exp(mean token negative log-likelihood).

use std::collections::HashMap;

use crate::error::{Error, Result};

fn check_lengths(what: &str, predictions: usize, references: usize) -> Result<()> {
    if predictions != references {
        return Err(Error::Invalid(format!(
            "{what}: {predictions} predictions but {references} references"
        )));
    }
    if predictions == 0 {
        return Err(Error::Invalid(format!("{what}: no examples")));
    }
    Ok(())
}

/// A label as compared by [`accuracy`] and [`macro_f1`]: surrounding whitespace removed.
pub fn normalize_label(label: &str) -> &str {
    label.trim()
}

/// Fraction of predictions equal to their reference (after [`normalize_label`]).
pub fn accuracy<P: AsRef<str>, R: AsRef<str>>(predictions: &[P], references: &[R]) -> Result<f64> {
    check_lengths("accuracy", predictions.len(), references.len())?;
    let correct = predictions
        .iter()
        .zip(references)
        .filter(|(p, r)| normalize_label(p.as_ref()) == normalize_label(r.as_ref()))
        .count();
    Ok(correct as f64 / predictions.len() as f64)
}

/// Unweighted mean over labels of F1 = 2·tp / (2·tp + fp + fn), over every label that occurs
/// in the references or the predictions (after [`normalize_label`]).
pub fn macro_f1<P: AsRef<str>, R: AsRef<str>>(predictions: &[P], references: &[R]) -> Result<f64> {
    check_lengths("macro_f1", predictions.len(), references.len())?;
    // label -> (true positives, false positives, false negatives)
    let mut counts: HashMap<&str, (u64, u64, u64)> = HashMap::new();
    for (p, r) in predictions.iter().zip(references) {
        let (p, r) = (normalize_label(p.as_ref()), normalize_label(r.as_ref()));
        if p == r {
            counts.entry(p).or_default().0 += 1;
        } else {
            counts.entry(p).or_default().1 += 1;
            counts.entry(r).or_default().2 += 1;
        }
    }
    let sum: f64 = counts
        .values()
        .map(|&(tp, fp, fn_)| 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64)
        .sum();
    Ok(sum / counts.len() as f64)
}

/// Corpus BLEU and the statistics behind it (sacrebleu's `BLEUScore` fields).
#[derive(Debug, Clone, PartialEq)]
pub struct BleuScore {
    /// BLEU on the 0-100 scale.
    pub score: f64,
    /// Matched n-grams, n = 1..4.
    pub counts: [u64; 4],
    /// Hypothesis n-grams, n = 1..4.
    pub totals: [u64; 4],
    /// Smoothed n-gram precisions, 0-100.
    pub precisions: [f64; 4],
    /// Brevity penalty.
    pub bp: f64,
    /// Hypothesis tokens.
    pub sys_len: u64,
    /// Reference tokens (closest reference length per segment).
    pub ref_len: u64,
}

/// Python's `str.isspace` (which, unlike Rust's `char::is_whitespace`, includes U+001C..U+001F).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Apply `re.sub(r"(A)(B)", repl, s)` for single-character classes A and B, with Python's
/// left-to-right, non-overlapping matching.
fn sub_pairs(
    chars: &[char],
    first: impl Fn(char) -> bool,
    second: impl Fn(char) -> bool,
    repl: impl Fn(char, char, &mut Vec<char>),
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && first(chars[i]) && second(chars[i + 1]) {
            repl(chars[i], chars[i + 1], &mut out);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// sacrebleu's `13a` tokenization (mteval-v13a): the segment's tokens joined by single spaces.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut chars: Vec<char> = format!(" {line} ").chars().collect();
    // ASCII punctuation and symbols except ' , - . become separate tokens.
    let is_symbol =
        |c: char| matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/');
    let mut spaced = Vec::with_capacity(chars.len() * 2);
    for c in chars {
        if is_symbol(c) {
            spaced.extend([' ', c, ' ']);
        } else {
            spaced.push(c);
        }
    }
    chars = spaced;
    let digit = |c: char| c.is_ascii_digit();
    let dot_comma = |c: char| c == '.' || c == ',';
    // Period and comma unless preceded by a digit.
    chars = sub_pairs(
        &chars,
        |c| !digit(c),
        dot_comma,
        |a, b, out| out.extend([a, ' ', b, ' ']),
    );
    // Period and comma unless followed by a digit.
    chars = sub_pairs(
        &chars,
        dot_comma,
        |c| !digit(c),
        |a, b, out| out.extend([' ', a, ' ', b]),
    );
    // Dash after a digit.
    chars = sub_pairs(
        &chars,
        digit,
        |c| c == '-',
        |a, b, out| out.extend([a, ' ', b, ' ']),
    );
    let text: String = chars.into_iter().collect();
    text.split(is_py_space)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// n-gram counts (n = 1..=4) of a token list.
fn ngram_counts<'a>(tokens: &[&'a str]) -> HashMap<Vec<&'a str>, u64> {
    let mut counts = HashMap::new();
    for n in 1..=4 {
        for gram in tokens.windows(n) {
            *counts.entry(gram.to_vec()).or_insert(0) += 1;
        }
    }
    counts
}

/// Corpus BLEU of `hypotheses` against one reference each (sacrebleu `corpus_bleu(hyps, [refs])`).
pub fn corpus_bleu<H: AsRef<str>, R: AsRef<str>>(
    hypotheses: &[H],
    references: &[R],
) -> Result<BleuScore> {
    check_lengths("BLEU", hypotheses.len(), references.len())?;
    corpus_bleu_multi(hypotheses, &[references])
}

/// Corpus BLEU with several reference streams: `reference_streams[k][i]` is the k-th reference
/// of segment i (sacrebleu `corpus_bleu(hyps, reference_streams)`).
pub fn corpus_bleu_multi<H: AsRef<str>, R: AsRef<str>>(
    hypotheses: &[H],
    reference_streams: &[&[R]],
) -> Result<BleuScore> {
    if reference_streams.is_empty() {
        return Err(Error::Invalid("BLEU: no references".into()));
    }
    for stream in reference_streams {
        check_lengths("BLEU", hypotheses.len(), stream.len())?;
    }
    let mut counts = [0u64; 4];
    let mut totals = [0u64; 4];
    let (mut sys_len, mut ref_len) = (0u64, 0u64);
    for (i, hyp) in hypotheses.iter().enumerate() {
        let refs: Vec<String> = reference_streams
            .iter()
            .map(|s| tokenize_13a(s[i].as_ref().trim_end_matches(is_py_space)))
            .collect();
        // Clipping counts: the most times each n-gram occurs in any one reference.
        let mut max_ref: HashMap<Vec<&str>, u64> = HashMap::new();
        let mut ref_lens = Vec::new();
        for r in &refs {
            let tokens: Vec<&str> = r.split(' ').filter(|t| !t.is_empty()).collect();
            ref_lens.push(tokens.len() as u64);
            for (gram, c) in ngram_counts(&tokens) {
                let slot = max_ref.entry(gram).or_insert(0);
                *slot = (*slot).max(c);
            }
        }
        let hyp = tokenize_13a(hyp.as_ref().trim_end_matches(is_py_space));
        let tokens: Vec<&str> = hyp.split(' ').filter(|t| !t.is_empty()).collect();
        let hyp_len = tokens.len() as u64;
        // Closest reference length; ties go to the shorter reference.
        let mut closest = ref_lens[0];
        for &len in &ref_lens[1..] {
            let (d, best) = (len.abs_diff(hyp_len), closest.abs_diff(hyp_len));
            if d < best || (d == best && len < closest) {
                closest = len;
            }
        }
        sys_len += hyp_len;
        ref_len += closest;
        for (gram, c) in ngram_counts(&tokens) {
            let n = gram.len() - 1;
            totals[n] += c;
            counts[n] += c.min(max_ref.get(&gram).copied().unwrap_or(0));
        }
    }
    Ok(bleu_from_stats(counts, totals, sys_len, ref_len))
}

/// sacrebleu's `compute_bleu` with `smooth_method="exp"` and no effective order.
fn bleu_from_stats(counts: [u64; 4], totals: [u64; 4], sys_len: u64, ref_len: u64) -> BleuScore {
    let bp = if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let mut precisions = [0.0f64; 4];
    let mut score = 0.0;
    if counts.iter().any(|&c| c > 0) {
        let mut smooth = 1.0;
        for n in 0..4 {
            if totals[n] == 0 {
                break;
            }
            precisions[n] = if counts[n] == 0 {
                smooth *= 2.0;
                100.0 / (smooth * totals[n] as f64)
            } else {
                100.0 * counts[n] as f64 / totals[n] as f64
            };
        }
        // sacrebleu's my_log: log(0) is floored to -9999999999.
        let log_sum: f64 = precisions
            .iter()
            .map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() })
            .sum();
        score = bp * (log_sum / 4.0).exp();
    }
    BleuScore {
        score,
        counts,
        totals,
        precisions,
        bp,
        sys_len,
        ref_len,
    }
}

/// Mean ROUGE F-measures over examples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RougeScores {
    /// ROUGE-1 (unigram overlap) F-measure.
    pub rouge1: f64,
    /// ROUGE-2 (bigram overlap) F-measure.
    pub rouge2: f64,
    /// ROUGE-L (longest common subsequence) F-measure.
    pub rouge_l: f64,
}

/// rouge-score's default tokenizer: lowercase, then the runs of `a-z0-9`.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

fn f_measure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// Counts of the n-grams of `tokens`.
fn word_ngrams(tokens: &[String], n: usize) -> HashMap<&[String], u64> {
    let mut m = HashMap::new();
    if tokens.len() >= n {
        for g in tokens.windows(n) {
            *m.entry(g).or_insert(0) += 1;
        }
    }
    m
}

fn rouge_n(target: &[String], prediction: &[String], n: usize) -> f64 {
    let (t, p) = (word_ngrams(target, n), word_ngrams(prediction, n));
    let overlap: u64 = t
        .iter()
        .map(|(g, &c)| c.min(p.get(g).copied().unwrap_or(0)))
        .sum();
    let t_total: u64 = t.values().sum();
    let p_total: u64 = p.values().sum();
    f_measure(
        overlap as f64 / p_total.max(1) as f64,
        overlap as f64 / t_total.max(1) as f64,
    )
}

fn rouge_lcs(target: &[String], prediction: &[String]) -> f64 {
    if target.is_empty() || prediction.is_empty() {
        return 0.0;
    }
    let mut prev = vec![0usize; prediction.len() + 1];
    let mut cur = vec![0usize; prediction.len() + 1];
    for t in target {
        for (j, p) in prediction.iter().enumerate() {
            cur[j + 1] = if t == p {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let lcs = prev[prediction.len()] as f64;
    f_measure(lcs / prediction.len() as f64, lcs / target.len() as f64)
}

/// ROUGE-1/2/L F-measures of one prediction against its reference (rouge-score's
/// `RougeScorer.score(target=reference, prediction=prediction)`).
pub fn rouge_pair(prediction: &str, reference: &str) -> RougeScores {
    let (t, p) = (rouge_tokens(reference), rouge_tokens(prediction));
    RougeScores {
        rouge1: rouge_n(&t, &p, 1),
        rouge2: rouge_n(&t, &p, 2),
        rouge_l: rouge_lcs(&t, &p),
    }
}

/// ROUGE-1/2/L F-measures averaged over examples.
pub fn rouge<P: AsRef<str>, R: AsRef<str>>(
    predictions: &[P],
    references: &[R],
) -> Result<RougeScores> {
    check_lengths("ROUGE", predictions.len(), references.len())?;
    let mut sum = RougeScores {
        rouge1: 0.0,
        rouge2: 0.0,
        rouge_l: 0.0,
    };
    for (p, r) in predictions.iter().zip(references) {
        let s = rouge_pair(p.as_ref(), r.as_ref());
        sum.rouge1 += s.rouge1;
        sum.rouge2 += s.rouge2;
        sum.rouge_l += s.rouge_l;
    }
    let n = predictions.len() as f64;
    Ok(RougeScores {
        rouge1: sum.rouge1 / n,
        rouge2: sum.rouge2 / n,
        rouge_l: sum.rouge_l / n,
    })
}

/// exp(mean) of per-token negative log-likelihoods (natural log).
pub fn perplexity(token_nll: &[f64]) -> Result<f64> {
    perplexity_from_sum(token_nll.iter().sum(), token_nll.len())
}

/// exp(total / tokens): perplexity from a summed negative log-likelihood.
pub fn perplexity_from_sum(total_nll: f64, tokens: usize) -> Result<f64> {
    if tokens == 0 {
        return Err(Error::Invalid("perplexity: no tokens".into()));
    }
    if !total_nll.is_finite() {
        return Err(Error::Invalid(format!(
            "perplexity: the summed negative log-likelihood is {total_nll}"
        )));
    }
    Ok((total_nll / tokens as f64).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/metrics");

    fn fixture(name: &str) -> Value {
        let path = format!("{FIXTURES}/{name}");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}; run scripts/make_metric_fixtures.py"));
        serde_json::from_str(&text).unwrap()
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    fn close(got: f64, want: &Value, what: &str) {
        let want = want.as_f64().unwrap();
        assert!((got - want).abs() <= 1e-6, "{what}: got {got}, want {want}");
    }

    fn check_bleu(got: &BleuScore, want: &Value, what: &str) {
        close(got.score, &want["score"], &format!("{what} score"));
        close(got.bp, &want["bp"], &format!("{what} bp"));
        for n in 0..4 {
            assert_eq!(
                got.counts[n],
                want["counts"][n].as_u64().unwrap(),
                "{what} counts"
            );
            assert_eq!(
                got.totals[n],
                want["totals"][n].as_u64().unwrap(),
                "{what} totals"
            );
            close(
                got.precisions[n],
                &want["precisions"][n],
                &format!("{what} p{n}"),
            );
        }
        assert_eq!(
            got.sys_len,
            want["sys_len"].as_u64().unwrap(),
            "{what} sys_len"
        );
        assert_eq!(
            got.ref_len,
            want["ref_len"].as_u64().unwrap(),
            "{what} ref_len"
        );
    }

    #[test]
    fn tokenize_13a_matches_sacrebleu() {
        let f = fixture("text.json");
        for p in f["pairs"].as_array().unwrap() {
            for (text, tok) in [("hyp", "hyp_13a"), ("ref", "ref_13a")] {
                let input = p[text].as_str().unwrap();
                assert_eq!(
                    tokenize_13a(input.trim_end_matches(is_py_space)),
                    p[tok].as_str().unwrap(),
                    "{input:?}"
                );
            }
        }
    }

    #[test]
    fn bleu_matches_sacrebleu_per_pair_and_per_corpus() {
        let f = fixture("text.json");
        for p in f["pairs"].as_array().unwrap() {
            let (h, r) = (p["hyp"].as_str().unwrap(), p["ref"].as_str().unwrap());
            check_bleu(
                &corpus_bleu(&[h], &[r]).unwrap(),
                &p["bleu"],
                &format!("{h:?}"),
            );
        }
        for c in f["corpora"].as_array().unwrap() {
            let hyps = strings(&c["hyps"]);
            let streams: Vec<Vec<String>> =
                c["refs"].as_array().unwrap().iter().map(strings).collect();
            let stream_refs: Vec<&[String]> = streams.iter().map(|s| s.as_slice()).collect();
            let got = corpus_bleu_multi(&hyps, &stream_refs).unwrap();
            check_bleu(&got, &c["bleu"], c["name"].as_str().unwrap());
        }
    }

    #[test]
    fn rouge_matches_rouge_score() {
        let f = fixture("text.json");
        for p in f["pairs"].as_array().unwrap() {
            let (h, r) = (p["hyp"].as_str().unwrap(), p["ref"].as_str().unwrap());
            assert_eq!(rouge_tokens(h), strings(&p["hyp_rouge_tokens"]), "{h:?}");
            assert_eq!(rouge_tokens(r), strings(&p["ref_rouge_tokens"]), "{r:?}");
            let s = rouge_pair(h, r);
            close(
                s.rouge1,
                &p["rouge"]["rouge1"]["fmeasure"],
                &format!("{h:?} r1"),
            );
            close(
                s.rouge2,
                &p["rouge"]["rouge2"]["fmeasure"],
                &format!("{h:?} r2"),
            );
            close(
                s.rouge_l,
                &p["rouge"]["rougeL"]["fmeasure"],
                &format!("{h:?} rL"),
            );
        }
        for c in f["corpora"].as_array().unwrap() {
            let want = &c["rouge_mean_f"];
            if want.is_null() {
                continue;
            }
            let got = rouge(&strings(&c["hyps"]), &strings(&c["refs"][0])).unwrap();
            close(got.rouge1, &want["rouge1"], "mean rouge1");
            close(got.rouge2, &want["rouge2"], "mean rouge2");
            close(got.rouge_l, &want["rougeL"], "mean rougeL");
        }
    }

    #[test]
    fn classification_matches_sklearn() {
        for c in fixture("classification.json").as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            let (p, r) = (strings(&c["predictions"]), strings(&c["references"]));
            close(accuracy(&p, &r).unwrap(), &c["accuracy"], name);
            close(macro_f1(&p, &r).unwrap(), &c["macro_f1"], name);
        }
    }

    #[test]
    fn perplexity_matches_exp_mean_nll() {
        for c in fixture("perplexity.json").as_array().unwrap() {
            let nll: Vec<f64> = c["nll"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let got = perplexity(&nll).unwrap();
            let want = c["perplexity"].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-9 * want,
                "{}: {got} vs {want}",
                c["name"]
            );
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(accuracy(&["a"], &["a", "b"]).is_err());
        assert!(macro_f1::<&str, &str>(&[], &[]).is_err());
        assert!(corpus_bleu(&["a"], &["a", "b"]).is_err());
        assert!(rouge(&["a", "b"], &["a"]).is_err());
        assert!(perplexity(&[]).is_err());
        assert!(perplexity_from_sum(f64::NAN, 3).is_err());
        let streams: [&[&str]; 0] = [];
        assert!(corpus_bleu_multi(&["a"], &streams).is_err());
    }
}
