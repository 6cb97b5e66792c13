"""Reference values for hone-core's evaluation metrics (crates/hone-core/src/metrics.rs).

Install the reference packages once into a private target folder (not the system python):

    /work/cache/venv/bin/pip install --target /work/cache/pymetrics \
        sacrebleu==2.6.0 rouge-score==0.1.2 scikit-learn

then run from the repository root:

    PYTHONPATH=/work/cache/pymetrics /work/cache/venv/bin/python scripts/make_metric_fixtures.py

It writes

    tests/fixtures/metrics/text.json
        "pairs": ~35 (hypothesis, reference) pairs with punctuation, casing, numbers, HTML
        entities, empty strings, unusual whitespace and non-ASCII text; for each pair the
        sacrebleu 13a tokenization of both sides, the rouge-score tokens of both sides, the
        sacrebleu corpus BLEU of the one-pair corpus, and rouge-score's ROUGE-1/2/L
        precision/recall/F-measure (RougeScorer(["rouge1", "rouge2", "rougeL"]), no stemmer).
        "corpora": corpus BLEU (sacrebleu.corpus_bleu, defaults: 13a, exp smoothing, 4-grams)
        over several sub-corpora, one with two references per segment; plus the mean ROUGE
        F-measures over the same hypotheses.
    tests/fixtures/metrics/classification.json
        label lists with sklearn accuracy_score and f1_score(average="macro") after stripping
        surrounding whitespace from every label.
    tests/fixtures/metrics/perplexity.json
        per-token negative log-likelihoods and exp(mean).
"""

import json
import math
import random
from pathlib import Path

import sacrebleu
from rouge_score import rouge_scorer, tokenize as rouge_tokenize
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sklearn.metrics import accuracy_score, f1_score

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "metrics"

PAIRS = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat is on the mat", "there is a cat on the mat"),
    ("Hello, world!", "Hello world"),
    ("The Cat Sat", "the cat sat"),
    ("", "something was expected here"),
    ("It costs 3.50 dollars, not 1,000.", "It costs 3.50 dollars, not 1,000 dollars."),
    ("5-10 people came at 9:30", "5 - 10 people came at 9:30"),
    ("Café naïve — “quotes” über", "Cafe naive - \"quotes\" uber"),
    ("今天天气很好", "今天 天气 很好"),
    ("&quot;quoted&quot; &amp; done &lt;tag&gt;", "\"quoted\" & done <tag>"),
    ("we <skipped> this part", "we skipped this part"),
    ("line-\nbreak and more\nlines", "linebreak and more lines"),
    ("   padded with spaces   ", "padded with spaces"),
    ("the the the the the the the", "the cat"),
    ("a much longer hypothesis that goes on and on about the small cat on the mat",
     "the small cat on the mat"),
    ("don't won't it's rock'n'roll", "do not will not it is rock and roll"),
    ("e.g. the U.S.A. and i.e. etc.", "for example the USA and that is etc."),
    ("1.5, 2.5 and 3. and .5 and ,5 and 4,", "1.5 , 2.5 and 3 . and . 5"),
    ("great 👍 movie!!", "great movie 👍"),
    ("tab\tseparated\twords", "tab separated words"),
    ("positive", "negative"),
    ("positive", "positive"),
    ("İstanbul ISTANBUL istanbul", "istanbul"),
    ("Σίσυφος ΟΔΟΣ odos", "odos"),
    ("$100 @user #tag 50% a+b=c ~x^y |pipe| {braces} [brackets] back\\slash",
     "$ 100 @ user # tag 50 % a + b = c"),
    ("a...b x,,y ...", "a . . . b x , , y"),
    ("!!!", "wow"),
    ("a non empty hypothesis", ""),
    ("", ""),
    ("nbsp\u00a0here and\x1cfile sep\x1fand\u2028ls", "nbsp here and file sep and ls"),
    ("carriage\r\nreturn\rhere", "carriage return here"),
    ("The quick brown fox jumps over the lazy dog near the bank of the river.",
     "A quick brown fox jumped over a lazy dog by the river bank."),
    ("Stocks rose 2.3% on Tuesday, the biggest gain since March.",
     "Stocks climbed 2.3 percent on Tuesday, their largest gain since March."),
    ("K\u212a kelvin sign", "kk kelvin sign"),
    ("trailing dash- and -leading and mid-word 3-4", "trailing dash - and - leading and mid-word 3 - 4"),
]

SECOND_REFS = [
    "the cat sat on a mat",
    "a cat is on the mat",
    "hello, world",
    "the cat sat down",
    "something",
    "it is 3.50 dollars",
]


def bleu_dict(score):
    return {
        "score": score.score,
        "counts": list(score.counts),
        "totals": list(score.totals),
        "precisions": list(score.precisions),
        "bp": score.bp,
        "sys_len": score.sys_len,
        "ref_len": score.ref_len,
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    tok13a = Tokenizer13a()

    pairs = []
    for hyp, ref in PAIRS:
        r = scorer.score(ref, hyp)  # rouge-score takes (target, prediction)
        pairs.append({
            "hyp": hyp,
            "ref": ref,
            # sacrebleu preprocesses with rstrip() before tokenizing
            "hyp_13a": tok13a(hyp.rstrip()),
            "ref_13a": tok13a(ref.rstrip()),
            "hyp_rouge_tokens": rouge_tokenize.tokenize(hyp, None),
            "ref_rouge_tokens": rouge_tokenize.tokenize(ref, None),
            "bleu": bleu_dict(sacrebleu.corpus_bleu([hyp], [[ref]])),
            "rouge": {k: {"precision": v.precision, "recall": v.recall, "fmeasure": v.fmeasure}
                      for k, v in r.items()},
        })

    def rouge_means(idx):
        sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
        for i in idx:
            for k in sums:
                sums[k] += pairs[i]["rouge"][k]["fmeasure"]
        return {k: v / len(idx) for k, v in sums.items()}

    corpora = []
    for name, idx in [
        ("all", list(range(len(PAIRS)))),
        ("first10", list(range(10))),
        ("english_prose", [0, 1, 2, 3, 13, 14, 31, 32]),
        ("no_match", [4, 20, 26]),
    ]:
        hyps = [PAIRS[i][0] for i in idx]
        refs = [PAIRS[i][1] for i in idx]
        corpora.append({
            "name": name,
            "hyps": hyps,
            "refs": [refs],
            "bleu": bleu_dict(sacrebleu.corpus_bleu(hyps, [refs])),
            "rouge_mean_f": rouge_means(idx),
        })
    # two references per segment
    idx = list(range(len(SECOND_REFS)))
    hyps = [PAIRS[i][0] for i in idx]
    refs = [[PAIRS[i][1] for i in idx], SECOND_REFS]
    corpora.append({
        "name": "two_refs",
        "hyps": hyps,
        "refs": refs,
        "bleu": bleu_dict(sacrebleu.corpus_bleu(hyps, refs)),
        "rouge_mean_f": None,
    })

    (OUT / "text.json").write_text(
        json.dumps({"sacrebleu": sacrebleu.__version__, "rouge_score": "0.1.2",
                    "pairs": pairs, "corpora": corpora}, ensure_ascii=False, indent=1) + "\n",
        encoding="utf-8")

    rng = random.Random(1234)
    labels3 = ["positive", "negative", "neutral"]
    cls_cases = [
        ("binary", ["positive", "negative", "positive", "negative", "positive"],
         ["positive", "positive", "positive", "negative", "negative"]),
        ("all_correct", ["a", "b", "c"], ["a", "b", "c"]),
        ("all_wrong", ["a", "b", "a"], ["b", "a", "b"]),
        ("single_class", ["pos", "pos", "pos"], ["pos", "pos", "pos"]),
        ("garbage_predictions", ["positive", "negative", "positive", "negative"],
         ["positive", "posit", "I think it is negative", "negative"]),
        ("whitespace", [" positive", "negative\n", "positive"],
         ["positive\n", " negative ", "\tnegative"]),
        ("case_sensitive", ["Positive", "negative"], ["positive", "negative"]),
        ("three_class_random", [rng.choice(labels3) for _ in range(50)],
         [rng.choice(labels3 + ["other"]) for _ in range(50)]),
    ]
    classification = []
    for name, y_true, y_pred in cls_cases:
        t = [s.strip() for s in y_true]
        p = [s.strip() for s in y_pred]
        classification.append({
            "name": name,
            "references": y_true,
            "predictions": y_pred,
            "accuracy": accuracy_score(t, p),
            "macro_f1": f1_score(t, p, average="macro", zero_division=0.0),
        })
    (OUT / "classification.json").write_text(
        json.dumps(classification, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    ppl = []
    for name, nll in [
        ("uniform_vocab", [math.log(49152.0)] * 7),
        ("mixed", [0.01, 2.5, 7.25, 0.0, 3.125, 11.0]),
        ("single", [1.7]),
        ("random", [rng.uniform(0, 12) for _ in range(300)]),
    ]:
        ppl.append({"name": name, "nll": nll, "perplexity": math.exp(sum(nll) / len(nll))})
    (OUT / "perplexity.json").write_text(json.dumps(ppl, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
