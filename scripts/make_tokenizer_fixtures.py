"""Reference fixtures for hone's tokenizer and chat-template code (crates/hone-core/src/tokenizer.rs, chat.rs).

Run from the repository root (needs `make models` first, for the SmolLM2 GGUF):

    HF_HUB_OFFLINE=1 /work/cache/venv/bin/python scripts/make_tokenizer_fixtures.py

It writes, under tests/fixtures/tokenizer/:

- smollm2_encode.json: SmolLM2-135M-Instruct's tokenizer, loaded by transformers from the GGUF
  (`AutoTokenizer.from_pretrained(dir, gguf_file=name)`), on ~45 varied texts: ids with and without special
  tokens, and the decoded text. transformers' GGUF conversion gives every byte-level vocabulary GPT-2's
  pre-tokenizer unless it knows the `tokenizer.ggml.pre` name, and it does not know "smollm"; SmolLM2's own
  tokenizer.json (and llama.cpp's "smollm" pre-tokenizer) first isolates every digit:
  `Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]`.
  The two differ on a whitespace run before a digit ("a  1": "ĠĠ" + "1" versus "Ġ" + "Ġ" + "1"). `ids` is the
  real SmolLM2 tokenizer (transformers' conversion with that pre-tokenizer put back), which hone matches;
  `ids_transformers_gguf` is what transformers' GGUF path gives, kept to document the difference.
- smollm2_chat.json: SmolLM2's chat template rendered by `apply_chat_template(tokenize=False)` for several
  conversations, plus a few extra templates that exercise what chat templates use (trim/lstrip blocks,
  python string methods, loop controls, namespace, tojson, raise_exception, None/True/list printing).
- tiny_llama_spm.gguf + tiny_llama_spm.json: a tiny SentencePiece-style ("llama") vocabulary with scores,
  byte tokens, control and user-defined tokens, written as a GGUF with only metadata, and transformers' ids
  and decodes for it.
- tiny_gpt2.json: the tiny byte-level BPE vocabulary that `hone_core::tokenizer::tiny_gpt2_metadata()` builds
  (TINY_MERGES below must equal TINY_MERGES in tokenizer/tiny.rs; the Rust test checks), and transformers' ids for it.

SmolLM2's converted tokenizer.json itself is not written: it is ~1.6 MB, over the "well under 1 MB" fixture
rule; the Rust tests write `Tokenizer::to_json()` to a temporary folder and load it back instead.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gguf  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402
from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tokenizer"
SMOLLM2 = Path(
    os.environ.get("HONE_SMOLLM2_GGUF", ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
)

TEXTS = [
    "Hello, world!",
    "",
    " ",
    "\n",
    "   leading spaces",
    "trailing spaces   ",
    "  both sides  ",
    "a    b\n\n\n  c",
    "   \n\t  ",
    "12345 3.14159 1,000,000",
    "a  123 and x    42",
    "Phone: +1 (555) 010-9999, year 2024.",
    "v1.2.3-beta+build.42",
    "Café naïve résumé façade Ångström",
    "e\u0301 combining accent",
    "你好，世界！这是一个测试。",
    "日本語のテキストとカタカナ",
    "한국어 텍스트입니다",
    "مرحبا بالعالم",
    "שלום עולם",
    "Ελληνικά κείμενο",
    "Русский текст и Українська",
    "हिन्दी पाठ",
    "สวัสดีครับ",
    "Emoji: 😀👍🏽🇺🇸 ❤️ 🧑‍💻",
    "def foo(x):\n\treturn x ** 2  # comment\n",
    "    indented = [1, 2, 3]\n        deeper()\n",
    'fn main() {\n    println!("{}", 1 + 2);\n}',
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<|im_start|> spaced special <|im_end|>  ",
    "I'm sure they'll say it's fine, don't you think? We've seen it.",
    "ALL CAPS SHOUTING AND MiXeD CaSe",
    "tabs\tand\nnewlines\r\nmixed",
    "Punctuation!!! ??? ... --- (parens) [brackets] {braces}",
    "https://example.com/path?query=1&x=y#frag",
    "email@example.org",
    "\u200bzero\u200bwidth and\u00a0nbsp",
    "$$\\int_0^1 x^2 dx = \\frac{1}{3}$$",
    'JSON: {"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    "repeated aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "\x00\x01 control chars \x7f",
    "The quick brown fox jumps over the lazy dog. " * 40,
]

SMOLLM2_PRE_TOKENIZER = pre_tokenizers.Sequence(
    [
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ]
)

CONVERSATIONS = [
    ("system_user", [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi there!"}]),
    ("user_only", [{"role": "user", "content": "What is 2 + 2?"}]),
    (
        "multi_turn",
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one, in français: é à ü 你好 😀"},
        ],
    ),
    (
        "whitespace_content",
        [
            {"role": "user", "content": "  padded  \n\nwith blank lines\n"},
            {"role": "assistant", "content": "\tok\t"},
        ],
    ),
]

# Templates that exercise what real chat templates rely on. Rendered by transformers' jinja2 setup.
EXTRA_TEMPLATES = {
    "features": (
        "{%- set ns = namespace(count=0, sys='') -%}\n"
        "{{ bos_token }}\n"
        "{% for m in messages %}\n"
        "    {% if m['role'] == 'system' %}\n"
        "        {% set ns.sys = m['content'].strip() %}\n"
        "        {% continue %}\n"
        "    {% endif %}\n"
        "    {% if m.role not in ['user', 'assistant'] %}\n"
        "        {{ raise_exception('bad role: ' + m.role) }}\n"
        "    {% endif %}\n"
        "    {% set ns.count = ns.count + 1 %}\n"
        "    [{{ loop.index }}/{{ loop.length }}] {{ m['role'].upper() }}: {{ m['content'] | trim }}\n"
        "    {% if m['content'].startswith('STOP') %}{% break %}{% endif %}\n"
        "    {% if m.content.endswith('?') %}(question){% endif %}\n"
        "{% endfor %}\n"
        "sys={{ ns.sys | tojson }} count={{ ns.count }} words={{ messages[-1]['content'].split() | length }}\n"
        "{{ {'role': 'tool', 'n': 3, 'x': 2.5, 'ok': true, 'none': none, 'list': [1, 'é', '<&>']} | tojson }}\n"
        "{{ messages | map(attribute='role') | join(',') }}|{{ messages[0]['content'][:5] }}|{{ 'a-b-c'.replace('-', '+') }}\n"
        "{% if tools is not none %}tools!{% endif %}{% if documents is none %}nodocs{% endif %}\n"
        "{%- if add_generation_prompt %}<assistant>{% endif %}{{ eos_token }}\n"
    ),
    "python_repr": (
        "{{ none }}|{{ true }}|{{ false }}|{{ [1, 'a', none] }}|{{ {'k': 'v'} }}|{{ 1.5 }}|{{ 7 // 2 }}|{{ 7 / 2 }}"
        "|{{ 'x' ~ 1 }}|{{ messages[0]['content'] | tojson(indent=2) }}|{{ {'b': 1, 'a': [1, 2]} | tojson(indent=2) }}"
    ),
    "qwen_like": (
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
        "{%- else %}\n"
        "    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
        "{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "{%- endif %}\n"
    ),
    "alternation_check": (
        "{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{{ '[' + message['role'] + '] ' + message['content'] + '\\n' }}"
        "{% endfor %}"
    ),
}

# The tiny SentencePiece ("llama") vocabulary: pieces in descending score order.
SPM_PIECES = [
    "▁t", "he", "▁the", "in", "▁a", "er", "on", "re", "an", "▁s", "at", "en", "▁w", "▁o", "it", "is", "or",
    "es", "▁b", "ed", "ing", "▁an", "▁and", "▁to", "▁of", "▁in", "ll", "▁is", "▁wor", "ld", "▁world", "▁He",
    "llo", "▁Hello", "▁▁", "▁▁▁▁", "世界", "▁th", "▁thing", "▁things",
]
SPM_CHARS = list("▁etaoinshrdlucmwfgypbvkTHIW") + ["é", "世", "界", ".", ",", "!", "'"]
SPM_TEXTS = [
    "Hello world",
    "the and the",
    " leading space",
    "trailing space ",
    "multiple   spaces  here",
    "é世界 and x",
    "Hello<|im_end|>world",
    "<|user|> hi<|user|>",
    "",
    " ",
    "new\nline",
    "emoji 😀 falls back to bytes",
    "<s>literal bos",
    "ünïcödé things",
    "UPPER lower MiXeD",
]

# Must equal TINY_MERGES in crates/hone-core/src/tokenizer/tiny.rs (the Rust test compares them).
TINY_MERGES = [
    "Ġ t", "h e", "i n", "Ġ a", "e r", "o n", "Ġt he", "r e", "Ġ s", "a t", "Ġ w", "Ġ o", "e n", "Ġ c", "i t",
    "i s", "a n", "o r", "e s", "Ġ b", "e d", "Ġ f", "in g", "Ġ p", "o u", "Ġa n", "a l", "a r", "Ġt o", "Ġ m",
    "Ġo f", "Ġ in", "Ġ d", "Ġ h", "Ġan d", "i c", "a s", "l e", "Ġt h", "i on", "o m", "l l", "en t", "Ġ n",
    "Ġ l", "s t", "Ġ re", "v e", "Ġ e", "r o", "l y", "Ġb e", "Ġ g", "Ġ T", "c t", "Ġ S", "i d", "o t", "Ġ I",
    "u t", "e t", "Ġ A", "Ġ is", "Ġ on", "i m", "a m", "o w", "a y", "a d", "s e", "Ġth at", "c e", "i g",
    "Ġ it", "o l", "u r", "Ġ u", "Ġw h", "Ġ y", "Ġy ou", "Ġw it", "Ġwit h", "Ġf or", "h at", "Ġ H", "Ġ W",
    "e l", "Ġc on", "Ġ st", "e x", "Ċ Ċ", "Ġ Ġ", "ĠĠ ĠĠ", "Ġh e", "l o", "Ġw as", "Ġa re", "Ġ =", "( )",
    "Ġ {", "H e", "ll o", "He llo", "e ll", "ell o", "Ġh ello", "Ġw or", "l d", "Ġwor ld",
]
TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_TEXTS = [
    "Hello world",
    "Hello, world! The cat is on the mat.",
    "<|im_start|>user\nhello there<|im_end|>\n",
    "  two  spaces and    four",
    "digits 12345 and  7",
    "unicode: é 😀 你好",
    "",
    "x = {}\n\nfor it in that()",
]


def fail(msg):
    sys.exit(f"make_tokenizer_fixtures: {msg}")


def write_json(name, value):
    path = OUT / name
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    size = path.stat().st_size
    print(f"wrote {path.relative_to(ROOT)} ({size} bytes)")
    if size > 600_000:
        fail(f"{path} is {size} bytes; fixtures must stay well under 1 MB")


def smollm2_fixtures():
    if not SMOLLM2.is_file():
        fail(f"{SMOLLM2} is missing; run `make models` first")
    tok = AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)
    backend = tok.backend_tokenizer
    transformers_gguf_ids = [tok(t, add_special_tokens=True)["input_ids"] for t in TEXTS]
    backend.pre_tokenizer = SMOLLM2_PRE_TOKENIZER

    cases = []
    for text, hf_gguf_ids in zip(TEXTS, transformers_gguf_ids):
        ids = tok(text, add_special_tokens=True)["input_ids"]
        ids_no_special = tok(text, add_special_tokens=False)["input_ids"]
        cases.append(
            {
                "text": text,
                "ids": ids,
                "ids_no_special": ids_no_special,
                "ids_transformers_gguf": hf_gguf_ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        )
    differ = [c["text"] for c in cases if c["ids"] != c["ids_transformers_gguf"]]
    print(f"texts where transformers' GGUF conversion differs from SmolLM2's tokenizer.json: {differ!r}")
    write_json(
        "smollm2_encode.json",
        {
            "source": "SmolLM2-135M-Instruct.Q4_1.gguf via transformers AutoTokenizer(gguf_file=...), "
            "pre_tokenizer = SmolLM2 tokenizer.json's Sequence[Digits(individual), ByteLevel]",
            "vocab_size": len(tok),
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "pad_token": tok.pad_token,
            "unk_token": tok.unk_token,
            "add_bos_token": bool(getattr(tok, "add_bos_token", False)),
            "cases": cases,
        },
    )

    chat_cases = []
    for name, messages in CONVERSATIONS:
        for add_generation_prompt in (False, True):
            rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            chat_cases.append(
                {
                    "name": name,
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                    "rendered": rendered,
                    "ids": tok(rendered, add_special_tokens=False)["input_ids"],
                }
            )
    extra = []
    for name, template in EXTRA_TEMPLATES.items():
        for conv_name, messages in CONVERSATIONS:
            for add_generation_prompt in (False, True):
                entry = {
                    "template": name,
                    "name": conv_name,
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                }
                try:
                    entry["rendered"] = tok.apply_chat_template(
                        messages,
                        chat_template=template,
                        tokenize=False,
                        add_generation_prompt=add_generation_prompt,
                    )
                except Exception as e:  # raise_exception in the template
                    entry["error"] = str(e)
                extra.append(entry)
    write_json(
        "smollm2_chat.json",
        {
            "template": tok.chat_template,
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "cases": chat_cases,
            "extra_templates": EXTRA_TEMPLATES,
            "extra_cases": extra,
        },
    )


def tiny_llama_spm_fixtures():
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["<|im_end|>", "<|user|>"]
    types = [2, 3, 3] + [6] * 256 + [3, 4]
    scores = [0.0] * len(tokens)
    for rank, piece in enumerate(SPM_PIECES):
        tokens.append(piece)
        types.append(1)
        scores.append(-float(rank))
    for rank, ch in enumerate(SPM_CHARS):
        tokens.append(ch)
        types.append(1)
        scores.append(-1000.0 - rank)
    path = OUT / "tiny_llama_spm.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    # transformers wants a model config before it builds the tokenizer; no tensors are needed.
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")

    tok = AutoTokenizer.from_pretrained(str(OUT), gguf_file=path.name)
    cases = []
    for text in SPM_TEXTS:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        cases.append(
            {
                "text": text,
                "ids": ids,
                "ids_no_special": tok(text, add_special_tokens=False)["input_ids"],
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        )
    backend = json.loads(tok.backend_tokenizer.to_str())
    write_json(
        "tiny_llama_spm.json",
        {
            "source": "tiny_llama_spm.gguf via transformers AutoTokenizer(gguf_file=...)",
            "vocab_size": len(tok),
            "merges": backend["model"]["merges"],
            "cases": cases,
        },
    )


def tiny_gpt2_fixtures():
    spelling = bytes_to_unicode()
    tokens = TINY_SPECIALS + [spelling[b] for b in range(256)]
    for merge in TINY_MERGES:
        left, right = merge.split(" ")
        if left not in tokens or right not in tokens:
            fail(f"tiny merge {merge!r} uses a piece that is not a token yet")
        if left + right in tokens:
            fail(f"tiny merge {merge!r} makes a token that already exists")
        tokens.append(left + right)
    tokenizer_dict = {
        "tokenizer_type": "gpt2",
        "pre_tokenizer_type": "smollm",
        "tokens": tokens,
        "token_type": [3] * len(TINY_SPECIALS) + [1] * (len(tokens) - len(TINY_SPECIALS)),
        "merges": TINY_MERGES,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    backend, _ = convert_gguf_tokenizer("llama", tokenizer_dict)
    backend.pre_tokenizer = SMOLLM2_PRE_TOKENIZER
    cases = []
    for text in TINY_TEXTS:
        ids = backend.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids, "decoded": backend.decode(ids, skip_special_tokens=False)})
    write_json("tiny_gpt2.json", {"tokens": tokens, "merges": TINY_MERGES, "cases": cases})


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    smollm2_fixtures()
    tiny_llama_spm_fixtures()
    tiny_gpt2_fixtures()


if __name__ == "__main__":
    main()
