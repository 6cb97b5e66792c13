"""Build examples/polarity.jsonl (and a Windows-1252 test snippet) from gensim's copy of the
Pang & Lee sentence polarity sample.

gensim ships 200 labelled movie-review sentences (100 positive, 100 negative) as
gensim/test/test_data/pang_lee_polarity.cor, one per line: "__label__pos <text>" or
"__label__neg <text>", lowercased and tokenized, encoded in Windows-1252 (a few lines hold
0x97 em dashes and accented letters). Get the wheel without installing it and run from the
repository root:

    /work/cache/venv/bin/pip download --no-deps -d /work/cache/gensim gensim
    (cd /work/cache/gensim && unzip -o -q gensim-*.whl 'gensim/test/test_data/pang_lee*')
    /work/cache/venv/bin/python scripts/make_polarity_dataset.py \
        [--cor /work/cache/gensim/gensim/test/test_data/pang_lee_polarity.cor]

It writes

    examples/polarity.jsonl
        200 UTF-8 rows {"phrase": <text>, "tone": "positive" | "negative"} in a fixed shuffled
        order (random.Random(20240601)), so "train[:160]" / "train[160:]" give mixed labels.
        Text is decoded from Windows-1252 and stripped of surrounding whitespace; nothing else
        changes.
    tests/fixtures/data/polarity_cp1252.txt
        the raw bytes of lines 20..33 of the original file (still Windows-1252), for the reader's
        "not valid UTF-8" error test;
    tests/fixtures/data/polarity_cp1252.expected.json
        where that error must point: 1-based line, 0-based byte offset, and the byte's value.
"""

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_COR = Path("/work/cache/gensim/gensim/test/test_data/pang_lee_polarity.cor")
LABELS = {"__label__pos": "positive", "__label__neg": "negative"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cor", type=Path, default=DEFAULT_COR)
    args = ap.parse_args()

    raw = args.cor.read_bytes()
    raw_lines = raw.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()

    rows = []
    for number, raw_line in enumerate(raw_lines, start=1):
        text = raw_line.decode("cp1252").strip()
        if not text:
            continue
        label, _, phrase = text.partition(" ")
        if label not in LABELS or not phrase.strip():
            raise SystemExit(f"{args.cor}: line {number}: expected '__label__pos|neg <text>'")
        rows.append({"phrase": phrase.strip(), "tone": LABELS[label]})
    if len(rows) != 200:
        raise SystemExit(f"{args.cor}: expected 200 rows, got {len(rows)}")

    random.Random(20240601).shuffle(rows)
    out = ROOT / "examples" / "polarity.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = {t: sum(r["tone"] == t for r in rows) for t in ("positive", "negative")}
    print(f"wrote {out} ({len(rows)} rows, {counts})")

    # Windows-1252 snippet: original lines 20..33 (1-based), bytes untouched.
    snippet = b"".join(line + b"\n" for line in raw_lines[19:33])
    fixtures = ROOT / "tests" / "fixtures" / "data"
    fixtures.mkdir(parents=True, exist_ok=True)
    (fixtures / "polarity_cp1252.txt").write_bytes(snippet)
    try:
        snippet.decode("utf-8")
        raise SystemExit("snippet unexpectedly decodes as UTF-8")
    except UnicodeDecodeError as e:
        offset = e.start
    expected = {
        "line": snippet[:offset].count(b"\n") + 1,
        "byte": offset,
        "value": snippet[offset],
    }
    (fixtures / "polarity_cp1252.expected.json").write_text(json.dumps(expected) + "\n")
    print(f"wrote {fixtures / 'polarity_cp1252.txt'}: first invalid byte {expected}")


if __name__ == "__main__":
    main()
