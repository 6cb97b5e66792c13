//! A tiny deterministic byte-level BPE vocabulary as GGUF metadata, for test models that need a
//! working tokenizer without a download.

use crate::gguf::MetaValue;

use super::byte_level_char;

/// The tiny vocabulary's merges, in rank order (GPT-2 byte alphabet: `Ġ` is a space, `Ċ` a newline).
/// scripts/make_tokenizer_fixtures.py holds a copy; tests check the two agree.
pub const TINY_MERGES: &[&str] = &[
    "Ġ t",
    "h e",
    "i n",
    "Ġ a",
    "e r",
    "o n",
    "Ġt he",
    "r e",
    "Ġ s",
    "a t",
    "Ġ w",
    "Ġ o",
    "e n",
    "Ġ c",
    "i t",
    "i s",
    "a n",
    "o r",
    "e s",
    "Ġ b",
    "e d",
    "Ġ f",
    "in g",
    "Ġ p",
    "o u",
    "Ġa n",
    "a l",
    "a r",
    "Ġt o",
    "Ġ m",
    "Ġo f",
    "Ġ in",
    "Ġ d",
    "Ġ h",
    "Ġan d",
    "i c",
    "a s",
    "l e",
    "Ġt h",
    "i on",
    "o m",
    "l l",
    "en t",
    "Ġ n",
    "Ġ l",
    "s t",
    "Ġ re",
    "v e",
    "Ġ e",
    "r o",
    "l y",
    "Ġb e",
    "Ġ g",
    "Ġ T",
    "c t",
    "Ġ S",
    "i d",
    "o t",
    "Ġ I",
    "u t",
    "e t",
    "Ġ A",
    "Ġ is",
    "Ġ on",
    "i m",
    "a m",
    "o w",
    "a y",
    "a d",
    "s e",
    "Ġth at",
    "c e",
    "i g",
    "Ġ it",
    "o l",
    "u r",
    "Ġ u",
    "Ġw h",
    "Ġ y",
    "Ġy ou",
    "Ġw it",
    "Ġwit h",
    "Ġf or",
    "h at",
    "Ġ H",
    "Ġ W",
    "e l",
    "Ġc on",
    "Ġ st",
    "e x",
    "Ċ Ċ",
    "Ġ Ġ",
    "ĠĠ ĠĠ",
    "Ġh e",
    "l o",
    "Ġw as",
    "Ġa re",
    "Ġ =",
    "( )",
    "Ġ {",
    "H e",
    "ll o",
    "He llo",
    "e ll",
    "ell o",
    "Ġh ello",
    "Ġw or",
    "l d",
    "Ġwor ld",
];

/// The tiny vocabulary's special tokens (ids 0, 1, 2).
const TINY_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// ChatML, as SmolLM2 uses it (without SmolLM2's default system prompt).
pub const TINY_CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// GGUF `tokenizer.*` metadata of a tiny byte-level BPE tokenizer (SmolLM2-style: `gpt2` model,
/// `smollm` pre-tokenizer, bos `<|im_start|>`, eos and pad `<|im_end|>`, ChatML template):
/// ids 0..3 are `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, ids 3..259 the 256 bytes, then one
/// token per merge of [`TINY_MERGES`] (368 tokens in all).
pub fn tiny_gpt2_metadata() -> Vec<(String, MetaValue)> {
    let mut tokens: Vec<String> = TINY_SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend((0..=255u8).map(|b| byte_level_char(b).to_string()));
    for merge in TINY_MERGES {
        tokens.push(merge.replace(' ', ""));
    }
    let token_type: Vec<MetaValue> = (0..tokens.len())
        .map(|i| MetaValue::I32(if i < TINY_SPECIALS.len() { 3 } else { 1 }))
        .collect();
    let strings = |v: Vec<String>| MetaValue::Array(v.into_iter().map(MetaValue::String).collect());
    let merges = TINY_MERGES.iter().map(|m| m.to_string()).collect();
    vec![
        (
            "tokenizer.ggml.model".into(),
            MetaValue::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".into(),
            MetaValue::String("smollm".into()),
        ),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            MetaValue::Array(token_type),
        ),
        ("tokenizer.ggml.merges".into(), strings(merges)),
        ("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), MetaValue::U32(0)),
        ("tokenizer.ggml.padding_token_id".into(), MetaValue::U32(2)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            MetaValue::Bool(false),
        ),
        (
            "tokenizer.chat_template".into(),
            MetaValue::String(TINY_CHATML_TEMPLATE.into()),
        ),
    ]
}
