//! Tokenizer tests against transformers' fixtures (scripts/make_tokenizer_fixtures.py).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::*;
use crate::chat::{ChatMessage, ChatTemplate};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tokenizer"
);

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn read_fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/make_tokenizer_fixtures.py",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn smollm2_path() -> PathBuf {
    let path = std::env::var_os("HONE_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.is_file(),
        "{} is missing: run `make models` (or set HONE_SMOLLM2_GGUF)",
        path.display()
    );
    path
}

fn open_gguf(path: &Path) -> GgufFile {
    GgufFile::open(path).unwrap_or_else(|e| panic!("{e}"))
}

fn smollm2_gguf() -> GgufFile {
    open_gguf(&smollm2_path())
}

fn smollm2() -> Tokenizer {
    Tokenizer::from_gguf(&smollm2_gguf()).expect("SmolLM2 tokenizer")
}

fn tiny_gpt2() -> Tokenizer {
    let metadata: BTreeMap<String, MetaValue> = tiny_gpt2_metadata().into_iter().collect();
    Tokenizer::from_gguf_metadata(&metadata, Path::new("tiny-gpt2.gguf")).expect("tiny tokenizer")
}

fn tiny_spm() -> Tokenizer {
    Tokenizer::from_gguf(&open_gguf(&fixture("tiny_llama_spm.gguf"))).expect("tiny spm")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hone-tokenizer-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[derive(Deserialize)]
struct EncodeFixture {
    vocab_size: usize,
    bos_token: String,
    eos_token: String,
    add_bos_token: bool,
    cases: Vec<EncodeCase>,
}

#[derive(Deserialize)]
struct EncodeCase {
    text: String,
    ids: Vec<u32>,
    ids_no_special: Vec<u32>,
    #[serde(default)]
    ids_transformers_gguf: Vec<u32>,
    decoded: String,
    decoded_skip_special: String,
}

/// Every fixture text: ids (both settings) and decodes equal transformers'.
fn check_encode_cases(tok: &Tokenizer, cases: &[EncodeCase]) {
    assert!(!cases.is_empty());
    for case in cases {
        let t = &case.text;
        assert_eq!(tok.encode(t, true).unwrap(), case.ids, "ids of {t:?}");
        assert_eq!(
            tok.encode(t, false).unwrap(),
            case.ids_no_special,
            "ids (no special tokens) of {t:?}"
        );
        assert_eq!(
            tok.decode(&case.ids, false).unwrap(),
            case.decoded,
            "decode of {t:?}"
        );
        assert_eq!(
            tok.decode(&case.ids, true).unwrap(),
            case.decoded_skip_special,
            "decode (skipping special tokens) of {t:?}"
        );
    }
}

/// Streaming decode, one id at a time, concatenates to the full decode.
fn check_streaming(tok: &Tokenizer, ids: &[u32], skip_special_tokens: bool) {
    let mut stream = tok.decode_stream(skip_special_tokens);
    let mut text = String::new();
    for &id in ids {
        if let Some(delta) = stream.step(id).unwrap() {
            assert!(!delta.is_empty());
            text.push_str(&delta);
        }
    }
    if let Some(rest) = stream.finish().unwrap() {
        text.push_str(&rest);
    }
    assert_eq!(
        text,
        tok.decode(ids, skip_special_tokens).unwrap(),
        "ids {ids:?}"
    );
}

#[test]
fn smollm2_ids_match_transformers_on_every_fixture_text() {
    let fx: EncodeFixture = read_fixture("smollm2_encode.json");
    let tok = smollm2();
    assert_eq!(tok.vocab_size(), fx.vocab_size);
    assert_eq!(tok.bos_token.as_deref(), Some(fx.bos_token.as_str()));
    assert_eq!(tok.eos_token.as_deref(), Some(fx.eos_token.as_str()));
    assert_eq!(tok.add_bos, fx.add_bos_token);
    assert_eq!(
        (tok.bos_id, tok.eos_ids.clone(), tok.pad_id),
        (Some(1), vec![2], Some(2))
    );
    assert!(fx.cases.len() >= 40);
    check_encode_cases(&tok, &fx.cases);
}

#[test]
fn smollm2_digits_are_split_like_its_tokenizer_json_not_like_gpt2() {
    // The one fixture text where transformers' GGUF conversion (plain GPT-2 pre-tokenizer) and
    // SmolLM2's tokenizer.json disagree; this guards the "smollm" pre-tokenizer choice.
    let fx: EncodeFixture = read_fixture("smollm2_encode.json");
    let differing: Vec<&EncodeCase> = fx
        .cases
        .iter()
        .filter(|c| c.ids != c.ids_transformers_gguf)
        .collect();
    assert_eq!(differing.len(), 1);
    let tok = smollm2();
    assert_ne!(
        tok.encode(&differing[0].text, true).unwrap(),
        differing[0].ids_transformers_gguf
    );
}

#[test]
fn smollm2_decode_round_trips_and_streams() {
    let fx: EncodeFixture = read_fixture("smollm2_encode.json");
    let tok = smollm2();
    for case in &fx.cases {
        let ids = tok.encode(&case.text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), case.text);
        check_streaming(&tok, &ids, false);
        check_streaming(&tok, &ids, true);
    }
}

#[test]
fn streaming_holds_back_a_split_character() {
    let tok = smollm2();
    // "😀" is four bytes; in SmolLM2's vocabulary it takes more than one token.
    let ids = tok.encode("a😀b", false).unwrap();
    assert!(ids.len() >= 3, "{ids:?}");
    let mut stream = tok.decode_stream(false);
    let deltas: Vec<Option<String>> = ids.iter().map(|&id| stream.step(id).unwrap()).collect();
    assert!(
        deltas.iter().flatten().all(|d| !d.contains('\u{FFFD}')),
        "{deltas:?}"
    );
    assert!(deltas.contains(&None), "{deltas:?}");
    let text: String = deltas.into_iter().flatten().collect();
    assert_eq!(text, "a😀b");
    // A stream cut inside the character flushes what decode would give.
    let mut stream = tok.decode_stream(false);
    for &id in &ids[..2] {
        let _ = stream.step(id).unwrap();
    }
    let rest = stream.finish().unwrap().unwrap_or_default();
    assert!(rest.ends_with('\u{FFFD}'), "{rest:?}");
}

#[derive(Deserialize)]
struct ChatFixture {
    template: String,
    bos_token: String,
    eos_token: String,
    cases: Vec<ChatCase>,
    extra_templates: BTreeMap<String, String>,
    extra_cases: Vec<ChatCase>,
}

#[derive(Deserialize)]
struct ChatCase {
    #[serde(default)]
    template: Option<String>,
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    #[serde(default)]
    rendered: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    ids: Option<Vec<u32>>,
}

#[test]
fn smollm2_chat_template_matches_transformers_byte_for_byte() {
    let fx: ChatFixture = read_fixture("smollm2_chat.json");
    let gguf = smollm2_gguf();
    let Some(MetaValue::String(source)) = gguf.get("tokenizer.chat_template") else {
        panic!("SmolLM2 GGUF has no chat template");
    };
    assert_eq!(source, &fx.template);
    let template = ChatTemplate::new(source).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    assert!(fx.cases.len() >= 8);
    for case in &fx.cases {
        let rendered = template
            .render(
                &case.messages,
                case.add_generation_prompt,
                tok.bos_token.as_deref().unwrap_or_default(),
                tok.eos_token.as_deref().unwrap_or_default(),
            )
            .unwrap();
        assert_eq!(
            Some(&rendered),
            case.rendered.as_ref(),
            "{} {}",
            case.name,
            case.add_generation_prompt
        );
        assert_eq!(
            Some(tok.encode(&rendered, false).unwrap()),
            case.ids,
            "{}",
            case.name
        );
    }
}

#[test]
fn chat_template_features_match_jinja2() {
    let fx: ChatFixture = read_fixture("smollm2_chat.json");
    assert!(fx.extra_cases.len() >= 30);
    let mut errors = 0;
    for case in &fx.extra_cases {
        let name = case.template.as_deref().unwrap();
        let template = ChatTemplate::new(&fx.extra_templates[name]).unwrap();
        let got = template.render(
            &case.messages,
            case.add_generation_prompt,
            &fx.bos_token,
            &fx.eos_token,
        );
        let what = format!(
            "template {name}, conversation {}, gen {}",
            case.name, case.add_generation_prompt
        );
        match (&case.rendered, &case.error) {
            (Some(want), _) => assert_eq!(&got.unwrap(), want, "{what}"),
            (None, Some(want)) => {
                errors += 1;
                assert_eq!(
                    got.unwrap_err().to_string(),
                    format!("chat template: {want}"),
                    "{what}"
                );
            }
            (None, None) => panic!("fixture case without result: {what}"),
        }
    }
    assert!(errors >= 2, "the fixtures should exercise raise_exception");
}

#[derive(Deserialize)]
struct SpmFixture {
    vocab_size: usize,
    merges: Vec<(String, String)>,
    cases: Vec<EncodeCase>,
}

#[test]
fn llama_spm_tokenizer_from_tiny_gguf_matches_transformers() {
    let fx: SpmFixture = read_fixture("tiny_llama_spm.json");
    let tok = tiny_spm();
    assert_eq!(tok.vocab_size(), fx.vocab_size);
    assert!(tok.add_bos, "llama vocabularies add bos by default");
    assert_eq!(tok.bos_token.as_deref(), Some("<s>"));
    assert_eq!(tok.eos_ids, vec![2]);
    check_encode_cases(&tok, &fx.cases);
    for case in &fx.cases {
        check_streaming(&tok, &case.ids, false);
        check_streaming(&tok, &case.ids, true);
    }
}

#[test]
fn spm_merges_from_scores_match_transformers_generate_merges() {
    let fx: SpmFixture = read_fixture("tiny_llama_spm.json");
    let gguf = open_gguf(&fixture("tiny_llama_spm.gguf"));
    let merges = GgufVocab::read(&gguf.metadata, &gguf.path).unwrap().merges;
    assert!(fx.merges.len() > 30);
    assert_eq!(merges, fx.merges);
}

#[derive(Deserialize)]
struct TinyFixture {
    tokens: Vec<String>,
    merges: Vec<String>,
    cases: Vec<TinyCase>,
}

#[derive(Deserialize)]
struct TinyCase {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

#[test]
fn tiny_gpt2_metadata_matches_the_fixture_and_transformers() {
    let fx: TinyFixture = read_fixture("tiny_gpt2.json");
    let metadata: BTreeMap<String, MetaValue> = tiny_gpt2_metadata().into_iter().collect();
    let strings = |key: &str| -> Vec<String> {
        let Some(MetaValue::Array(items)) = metadata.get(key) else {
            panic!("{key} missing");
        };
        items
            .iter()
            .map(|v| match v {
                MetaValue::String(s) => s.clone(),
                other => panic!("{key}: {other:?}"),
            })
            .collect()
    };
    assert_eq!(strings("tokenizer.ggml.tokens"), fx.tokens);
    assert_eq!(strings("tokenizer.ggml.merges"), fx.merges);
    assert_eq!(fx.tokens.len(), 368);
    let tok = tiny_gpt2();
    assert_eq!(tok.vocab_size(), 368);
    assert_eq!(
        (tok.bos_id, tok.eos_ids.clone(), tok.pad_id, tok.add_bos),
        (Some(1), vec![2], Some(2), false)
    );
    for case in &fx.cases {
        assert_eq!(
            tok.encode(&case.text, true).unwrap(),
            case.ids,
            "{:?}",
            case.text
        );
        assert_eq!(tok.decode(&case.ids, false).unwrap(), case.decoded);
        check_streaming(&tok, &case.ids, true);
    }
    // The ChatML template renders and its markers are single tokens.
    let template = ChatTemplate::new(TINY_CHATML_TEMPLATE).unwrap();
    let text = template
        .render(&[ChatMessage::new("user", "hello")], true, "", "")
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&text, true).unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 2);
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 1);
}

#[test]
fn to_json_loads_back_with_from_file() {
    let fx: TinyFixture = read_fixture("tiny_gpt2.json");
    let spm: SpmFixture = read_fixture("tiny_llama_spm.json");
    for (name, tok, texts) in [
        (
            "gpt2",
            tiny_gpt2(),
            fx.cases.iter().map(|c| c.text.clone()).collect::<Vec<_>>(),
        ),
        (
            "spm",
            tiny_spm(),
            spm.cases.iter().map(|c| c.text.clone()).collect(),
        ),
    ] {
        let dir = temp_dir(&format!("roundtrip-{name}"));
        let json_path = dir.join("tokenizer.json");
        let config_path = dir.join("tokenizer_config.json");
        std::fs::write(&json_path, tok.to_json().unwrap()).unwrap();
        let config = tok.config_json(Some(TINY_CHATML_TEMPLATE));
        std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        for (back, with_config) in [
            (
                Tokenizer::from_file(&json_path, Some(&config_path)).unwrap(),
                true,
            ),
            (Tokenizer::from_file(&json_path, None).unwrap(), false),
        ] {
            assert_eq!(back.vocab_size(), tok.vocab_size(), "{name}");
            assert_eq!(back.add_bos, tok.add_bos, "{name}");
            // Without a config only a bos the post-processor adds, or a well-known name, is found.
            if with_config || tok.add_bos {
                assert_eq!(back.bos_id, tok.bos_id, "{name}");
            }
            if with_config {
                assert_eq!(back.eos_ids.first(), tok.eos_ids.first(), "{name}");
            }
            for text in &texts {
                assert_eq!(
                    back.encode(text, true).unwrap(),
                    tok.encode(text, true).unwrap(),
                    "{name} {text:?}"
                );
            }
        }
        let with_config = Tokenizer::from_file(&json_path, Some(&config_path)).unwrap();
        assert_eq!(with_config.pad_id, tok.pad_id, "{name}");
        assert_eq!(with_config.eos_ids, tok.eos_ids, "{name}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn smollm2_tokenizer_json_round_trip_keeps_every_id() {
    let fx: EncodeFixture = read_fixture("smollm2_encode.json");
    let tok = smollm2();
    let dir = temp_dir("smollm2");
    let json_path = dir.join("tokenizer.json");
    std::fs::write(&json_path, tok.to_json().unwrap()).unwrap();
    // SmolLM2's own tokenizer_config.json names its special tokens like this.
    let config_path = dir.join("tokenizer_config.json");
    std::fs::write(
        &config_path,
        r#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>", "special": true},
            "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "add_prefix_space": false}"#,
    )
    .unwrap();
    let back = Tokenizer::from_file(&json_path, Some(&config_path)).unwrap();
    assert_eq!(
        (back.bos_id, back.eos_ids.clone(), back.pad_id, back.add_bos),
        (Some(1), vec![2], Some(2), false)
    );
    check_encode_cases(&back, &fx.cases);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn config_add_bos_token_rebuilds_the_post_processor() {
    let tok = tiny_gpt2();
    let dir = temp_dir("add-bos");
    let json_path = dir.join("tokenizer.json");
    std::fs::write(&json_path, tok.to_json().unwrap()).unwrap();
    let config_path = dir.join("tokenizer_config.json");
    std::fs::write(
        &config_path,
        r#"{"bos_token": {"content": "<|endoftext|>"}, "eos_token": "<|im_end|>", "add_bos_token": true, "add_eos_token": true}"#,
    )
    .unwrap();
    let back = Tokenizer::from_file(&json_path, Some(&config_path)).unwrap();
    assert!(back.add_bos);
    let ids = back.encode("hello", true).unwrap();
    assert_eq!(ids.first(), Some(&0));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(
        back.encode("hello", false).unwrap(),
        tok.encode("hello", false).unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn tiny_meta_with(
    edit: impl FnOnce(&mut BTreeMap<String, MetaValue>),
) -> BTreeMap<String, MetaValue> {
    let mut metadata: BTreeMap<String, MetaValue> = tiny_gpt2_metadata().into_iter().collect();
    edit(&mut metadata);
    metadata
}

#[test]
fn gguf_errors_name_the_file_and_the_key() {
    let path = Path::new("models/broken.gguf");
    let missing = |key: &str| {
        let metadata = tiny_meta_with(|m| {
            m.remove(key);
        });
        let err = Tokenizer::from_gguf_metadata(&metadata, path).unwrap_err();
        assert!(
            matches!(&err, Error::MissingField { path: p, field } if p == path && field == key),
            "{err:?}"
        );
        assert!(err.to_string().contains("models/broken.gguf"), "{err}");
    };
    missing("tokenizer.ggml.tokens");
    missing("tokenizer.ggml.model");
    missing("tokenizer.ggml.merges");

    let metadata = tiny_meta_with(|m| {
        m.insert(
            "tokenizer.ggml.model".into(),
            MetaValue::String("bert".into()),
        );
    });
    let msg = Tokenizer::from_gguf_metadata(&metadata, path)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bert") && msg.contains("gpt2") && msg.contains("llama"),
        "{msg}"
    );

    let metadata = tiny_meta_with(|m| {
        m.insert(
            "tokenizer.ggml.eos_token_id".into(),
            MetaValue::U32(100_000),
        );
    });
    let msg = Tokenizer::from_gguf_metadata(&metadata, path)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("tokenizer.ggml.eos_token_id") && msg.contains("100000"),
        "{msg}"
    );

    let metadata = tiny_meta_with(|m| {
        m.insert("tokenizer.ggml.tokens".into(), MetaValue::U32(3));
    });
    let msg = Tokenizer::from_gguf_metadata(&metadata, path)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("tokenizer.ggml.tokens") && msg.contains("array"),
        "{msg}"
    );

    let metadata = tiny_meta_with(|m| {
        m.insert(
            "tokenizer.ggml.merges".into(),
            MetaValue::Array(vec![MetaValue::String("nospace".into())]),
        );
    });
    let msg = Tokenizer::from_gguf_metadata(&metadata, path)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("tokenizer.ggml.merges") && msg.contains("nospace"),
        "{msg}"
    );

    let metadata = tiny_meta_with(|m| {
        m.insert(
            "tokenizer.ggml.merges".into(),
            MetaValue::Array(vec![MetaValue::String("Ġ zzzz".into())]),
        );
    });
    let msg = Tokenizer::from_gguf_metadata(&metadata, path)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("zzzz") && msg.contains("not a token"), "{msg}");

    let metadata = tiny_meta_with(|m| {
        m.insert(
            "tokenizer.ggml.model".into(),
            MetaValue::String("llama".into()),
        );
        m.remove("tokenizer.ggml.merges");
    });
    let err = Tokenizer::from_gguf_metadata(&metadata, path).unwrap_err();
    assert!(
        matches!(&err, Error::MissingField { field, .. } if field == "tokenizer.ggml.scores"),
        "{err:?}"
    );
}

#[test]
fn eot_and_eom_ids_end_generation_too() {
    let metadata = tiny_meta_with(|m| {
        m.insert("tokenizer.ggml.eot_token_id".into(), MetaValue::U32(0));
        m.insert("tokenizer.ggml.eom_token_id".into(), MetaValue::I32(2));
    });
    let tok = Tokenizer::from_gguf_metadata(&metadata, Path::new("x.gguf")).unwrap();
    assert_eq!(tok.eos_ids, vec![2, 0]);
}

#[test]
fn add_bos_defaults_follow_llama_cpp() {
    let with_pre = |pre: &str, flag: Option<bool>| {
        let metadata = tiny_meta_with(|m| {
            m.insert("tokenizer.ggml.pre".into(), MetaValue::String(pre.into()));
            match flag {
                Some(b) => m.insert("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(b)),
                None => m.remove("tokenizer.ggml.add_bos_token"),
            };
        });
        Tokenizer::from_gguf_metadata(&metadata, Path::new("x.gguf")).unwrap()
    };
    let tok = with_pre("llama-bpe", None);
    assert!(tok.add_bos);
    assert_eq!(tok.encode("hello", true).unwrap()[0], 1);
    assert!(!with_pre("llama-bpe", Some(false)).add_bos);
    assert!(!with_pre("smollm", None).add_bos);
    assert!(with_pre("gpt-2", Some(true)).add_bos);
    // Unknown names fall back to GPT-2's pre-tokenizer rather than failing.
    let unknown = with_pre("some-new-family", None);
    let gpt2 = with_pre("gpt-2", None);
    assert_eq!(
        unknown.encode("a  1 hello", false).unwrap(),
        gpt2.encode("a  1 hello", false).unwrap()
    );
}

#[test]
fn pre_tokenizer_families_split_as_their_tokenizer_json() {
    let pieces = |pre: &str, text: &str| -> Vec<String> {
        let metadata = tiny_meta_with(|m| {
            m.insert("tokenizer.ggml.pre".into(), MetaValue::String(pre.into()));
        });
        let tok = Tokenizer::from_gguf_metadata(&metadata, Path::new("x.gguf")).unwrap();
        let pre_tok = tok.inner.get_pre_tokenizer().unwrap();
        let mut s = tokenizers::PreTokenizedString::from(text);
        tokenizers::PreTokenizer::pre_tokenize(pre_tok, &mut s).unwrap();
        s.get_splits(
            tokenizers::OffsetReferential::Original,
            tokenizers::OffsetType::Char,
        )
        .into_iter()
        .map(|(p, _, _)| p.to_string())
        .collect()
    };
    assert_eq!(pieces("smollm", "ab  12"), ["ab", "ĠĠ", "1", "2"]);
    assert_eq!(pieces("gpt-2", "ab  12"), ["ab", "Ġ", "Ġ12"]);
    assert_eq!(pieces("llama-bpe", "ab 12345"), ["ab", "Ġ", "123", "45"]);
    assert_eq!(pieces("qwen2", "ab 12"), ["ab", "Ġ", "1", "2"]);
}

#[test]
fn from_file_errors_name_the_path() {
    let dir = temp_dir("errors");
    let absent = dir.join("absent.json");
    let err = Tokenizer::from_file(&absent, None).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if path == &absent),
        "{err:?}"
    );

    let bad = dir.join("tokenizer.json");
    std::fs::write(&bad, "{not json").unwrap();
    let msg = Tokenizer::from_file(&bad, None).unwrap_err().to_string();
    assert!(
        msg.contains(&bad.display().to_string()) && msg.contains("invalid tokenizer.json"),
        "{msg}"
    );

    std::fs::write(&bad, tiny_gpt2().to_json().unwrap()).unwrap();
    let bad_config = dir.join("tokenizer_config.json");
    std::fs::write(&bad_config, "[1, 2").unwrap();
    let msg = Tokenizer::from_file(&bad, Some(&bad_config))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("invalid JSON"),
        "{msg}"
    );

    std::fs::write(&bad_config, r#"{"bos_token": 5}"#).unwrap();
    let msg = Tokenizer::from_file(&bad, Some(&bad_config))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("bos_token"), "{msg}");

    let err = Tokenizer::from_file(&bad, Some(&dir.join("nope.json"))).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if path.ends_with("nope.json")),
        "{err:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn byte_level_alphabet_is_gpt2s() {
    assert_eq!(byte_level_char(b' '), 'Ġ');
    assert_eq!(byte_level_char(b'\n'), 'Ċ');
    assert_eq!(byte_level_char(0), '\u{100}');
    assert_eq!(byte_level_char(b'a'), 'a');
    assert_eq!(byte_level_char(0xAD), '\u{143}');
    assert_eq!(byte_level_char(0xFF), 'ÿ');
    assert_eq!(byte_level_alphabet().len(), 256);
    assert_eq!(byte_level_spelling("é\t".as_bytes()), "Ã©ĉ");
}

#[test]
fn raw_byte_tokens_are_respelled_into_the_byte_alphabet() {
    // A byte-level GGUF that wrote a token with a raw newline still finds it (as transformers does).
    let metadata = tiny_meta_with(|m| {
        let Some(MetaValue::Array(tokens)) = m.get_mut("tokenizer.ggml.tokens") else {
            unreachable!()
        };
        let last = tokens.len();
        tokens.push(MetaValue::String("\n\n\n".into()));
        let Some(MetaValue::Array(types)) = m.get_mut("tokenizer.ggml.token_type") else {
            unreachable!()
        };
        types.push(MetaValue::I32(1));
        let Some(MetaValue::Array(merges)) = m.get_mut("tokenizer.ggml.merges") else {
            unreachable!()
        };
        merges.push(MetaValue::String("ĊĊ Ċ".into()));
        assert_eq!(last, 368);
    });
    let tok = Tokenizer::from_gguf_metadata(&metadata, Path::new("x.gguf")).unwrap();
    assert_eq!(tok.token_to_id("ĊĊĊ"), Some(368));
    assert_eq!(tok.encode("\n\n\n", false).unwrap(), vec![368]);
}
