//! Tokenizer glue over the `tokenizers` crate: loaded from tokenizer.json (+ tokenizer_config.json)
//! or rebuilt from GGUF `tokenizer.ggml.*` metadata the way transformers rebuilds it, so that ids
//! match Hugging Face's for the same model.
//!
//! A GGUF tokenizer becomes the same `tokenizers` components a tokenizer.json would hold (BPE model,
//! added tokens, normalizer, pre-tokenizer, post-processor, decoder), so [`Tokenizer::to_json`]
//! writes a tokenizer.json that loads back with [`Tokenizer::from_file`] and gives the same ids.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, MetaValue};

mod tiny;
pub use tiny::{tiny_gpt2_metadata, TINY_CHATML_TEMPLATE, TINY_MERGES};

/// A model's tokenizer plus the special tokens hone needs (bos/eos/pad, add_bos).
#[derive(Clone)]
pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    pub source: PathBuf,
    pub bos_token: Option<String>,
    pub bos_id: Option<u32>,
    pub eos_token: Option<String>,
    /// All ids that end generation (eos, and e.g. `<|im_end|>`/`<|eot_id|>` when declared).
    pub eos_ids: Vec<u32>,
    pub pad_id: Option<u32>,
    /// Whether `encode(.., add_special_tokens=true)` prepends bos (read from the post-processor;
    /// changing this field does not change `encode`).
    pub add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("eos_ids", &self.eos_ids)
            .field("pad_id", &self.pad_id)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// `tokenizer.ggml.pre` names hone maps to the pre-tokenizer of that family's tokenizer.json.
/// Any other name (and a missing key) gets GPT-2's ByteLevel pre-tokenizer, as transformers does.
pub const KNOWN_GGUF_PRE_TOKENIZERS: &[&str] = &[
    "default",
    "gpt-2",
    "gpt2",
    "mpt",
    "olmo",
    "smollm",
    "starcoder",
    "refact",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "qwen2",
    "deepseek-r1-qwen",
];

/// GGUF `tokenizer.ggml.model` values hone can rebuild.
pub const KNOWN_GGUF_TOKENIZER_MODELS: &[&str] = &["gpt2", "llama"];

/// Llama 3's split regex, from its tokenizer.json.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex, from its tokenizer.json (single digits).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

impl Tokenizer {
    /// Load `tokenizer.json` (and, when `config` is given, special tokens from tokenizer_config.json).
    pub fn from_file(path: &Path, config: Option<&Path>) -> Result<Self> {
        let json = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config_text = match config {
            Some(config_path) => Some((
                std::fs::read_to_string(config_path).map_err(|e| Error::io(config_path, e))?,
                config_path,
            )),
            None => None,
        };
        Self::from_json(
            &json,
            path,
            config_text.as_ref().map(|(text, p)| (text.as_str(), *p)),
        )
    }

    /// Load from tokenizer.json text already in memory (`source` names it in errors), with an
    /// optional tokenizer_config.json text and its path.
    pub fn from_json(json: &str, source: &Path, config: Option<(&str, &Path)>) -> Result<Self> {
        let inner: tokenizers::Tokenizer = json
            .parse()
            .map_err(|e| Error::tokenizer(source, format!("invalid tokenizer.json: {e}")))?;
        let mut tok = Tokenizer {
            inner,
            source: source.to_path_buf(),
            bos_token: None,
            bos_id: None,
            eos_token: None,
            eos_ids: Vec::new(),
            pad_id: None,
            add_bos: false,
        };
        let pad_token;
        match config {
            Some((text, config_path)) => {
                let cfg: Json = serde_json::from_str(text)
                    .map_err(|e| Error::format(config_path, format!("invalid JSON: {e}")))?;
                let token_field = |name: &str| -> Result<Option<String>> {
                    match cfg.get(name) {
                        None | Some(Json::Null) => Ok(None),
                        Some(Json::String(s)) => Ok(Some(s.clone())),
                        Some(v) => match v.get("content") {
                            Some(Json::String(s)) => Ok(Some(s.clone())),
                            _ => Err(Error::invalid_field(
                                config_path,
                                name,
                                "expected a string or an object with a string 'content'",
                            )),
                        },
                    }
                };
                let bool_field = |name: &str| -> Result<Option<bool>> {
                    match cfg.get(name) {
                        None | Some(Json::Null) => Ok(None),
                        Some(Json::Bool(b)) => Ok(Some(*b)),
                        Some(_) => Err(Error::invalid_field(config_path, name, "expected a bool")),
                    }
                };
                tok.bos_token = token_field("bos_token")?;
                tok.eos_token = token_field("eos_token")?;
                pad_token = token_field("pad_token")?;
                let add_bos = bool_field("add_bos_token")?;
                let add_eos = bool_field("add_eos_token")?;
                tok.bos_id = tok.bos_token.as_deref().and_then(|t| tok.token_to_id(t));
                if add_bos.is_some() || add_eos.is_some() {
                    // transformers rebuilds the post-processor when the config says either.
                    let bos = tok.bos_token.clone().zip(tok.bos_id);
                    let eos_id = tok.eos_token.as_deref().and_then(|t| tok.token_to_id(t));
                    let eos = tok.eos_token.clone().zip(eos_id);
                    let post = template_post_processor(
                        bos.filter(|_| add_bos == Some(true)),
                        eos.filter(|_| add_eos == Some(true)),
                    );
                    tok.set_post_processor(post)?;
                }
            }
            None => {
                tok.bos_token = tok.probe_added_bos().and_then(|id| tok.id_to_token(id));
                if tok.bos_token.is_none() {
                    tok.bos_token = tok.first_special(&["<s>", "<|begin_of_text|>", "<bos>"]);
                }
                tok.bos_id = tok.bos_token.as_deref().and_then(|t| tok.token_to_id(t));
                tok.eos_token = tok.first_special(&[
                    "</s>",
                    "<|end_of_text|>",
                    "<|endoftext|>",
                    "<eos>",
                    "<|im_end|>",
                    "<|eot_id|>",
                ]);
                // Chat models end a turn with their own marker; without a config to say which,
                // every well-known end-of-turn marker the vocabulary has ends generation.
                for marker in ["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>"] {
                    if let Some(id) = tok.special_id(marker) {
                        tok.eos_ids.push(id);
                    }
                }
                pad_token = tok.inner.get_padding().map(|p| p.pad_token.clone());
            }
        }
        if let Some(id) = tok.eos_token.as_deref().and_then(|t| tok.token_to_id(t)) {
            tok.eos_ids.retain(|&x| x != id);
            tok.eos_ids.insert(0, id);
        }
        tok.pad_id = pad_token.as_deref().and_then(|t| tok.token_to_id(t));
        tok.add_bos = tok.bos_id.is_some() && tok.probe_added_bos() == tok.bos_id;
        Ok(tok)
    }

    /// Rebuild the tokenizer from GGUF `tokenizer.ggml.*` metadata (gpt2 BPE or llama SentencePiece).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        Self::from_gguf_metadata(&gguf.metadata, &gguf.path)
    }

    /// [`Tokenizer::from_gguf`] on a metadata map (`path` names the file in errors).
    pub fn from_gguf_metadata(metadata: &BTreeMap<String, MetaValue>, path: &Path) -> Result<Self> {
        let built = GgufVocab::read(metadata, path)?;
        let inner = built.tokenizer(path)?;
        let id_token = |id: Option<u32>| id.map(|i| built.tokens[i as usize].clone());
        let mut eos_ids: Vec<u32> = Vec::new();
        for id in [built.eos_id, built.eot_id, built.eom_id]
            .into_iter()
            .flatten()
        {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        Ok(Tokenizer {
            inner,
            source: path.to_path_buf(),
            bos_token: id_token(built.bos_id),
            bos_id: built.bos_id,
            eos_token: id_token(built.eos_id),
            eos_ids,
            pad_id: built.pad_id,
            add_bos: built.add_bos && built.bos_id.is_some(),
        })
    }

    /// Token ids of `text`; with `add_special_tokens`, bos is prepended when the model wants it.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::tokenizer(&self.source, format!("encode failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::tokenizer(&self.source, format!("decode failed: {e}")))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a token (as spelled in the vocabulary, e.g. `Ġthe`, or an added token like `<|im_end|>`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary spelling of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a special added token (skipped by `decode(.., skip_special_tokens=true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    }

    /// The tokenizer.json document for this tokenizer (what HF folders hold).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| Error::tokenizer(&self.source, format!("could not serialize: {e}")))
    }

    /// A tokenizer_config.json document that, next to [`Tokenizer::to_json`]'s output, loads back
    /// with the same special tokens (and carries `chat_template` when given).
    pub fn config_json(&self, chat_template: Option<&str>) -> Json {
        let pad_token = self.pad_id.and_then(|id| self.id_to_token(id));
        let mut cfg = json!({
            "add_bos_token": self.add_bos,
            "add_eos_token": false,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": pad_token,
            "clean_up_tokenization_spaces": false,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        if let Some(template) = chat_template {
            cfg["chat_template"] = Json::String(template.to_string());
        }
        cfg
    }

    /// A streaming detokenizer: feed ids one at a time, get text as soon as it is complete.
    pub fn decode_stream(&self, skip_special_tokens: bool) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            skip_special_tokens,
            ids: Vec::new(),
            context: 0,
            prefix: String::new(),
        }
    }

    fn set_post_processor(&mut self, post: Json) -> Result<()> {
        let wrapper: tokenizers::processors::PostProcessorWrapper = serde_json::from_value(post)
            .map_err(|e| {
                Error::tokenizer(
                    &self.source,
                    format!("could not build the post-processor: {e}"),
                )
            })?;
        self.inner.with_post_processor(Some(wrapper));
        Ok(())
    }

    /// The id the post-processor puts before the text, if any.
    fn probe_added_bos(&self) -> Option<u32> {
        let with = self.inner.encode("a", true).ok()?;
        let without = self.inner.encode("a", false).ok()?;
        let (with, without) = (with.get_ids(), without.get_ids());
        (with.len() > without.len() && with.first() != without.first())
            .then(|| with.first().copied())
            .flatten()
    }

    fn special_id(&self, token: &str) -> Option<u32> {
        self.token_to_id(token).filter(|&id| self.is_special(id))
    }

    fn first_special(&self, candidates: &[&str]) -> Option<String> {
        candidates
            .iter()
            .find(|t| self.special_id(t).is_some())
            .map(|t| t.to_string())
    }
}

/// Incremental detokenizer from [`Tokenizer::decode_stream`]. The text it returns, concatenated,
/// equals `decode` of all ids: a delta is held back while the decoded text ends in U+FFFD (an
/// incomplete UTF-8 character), and each delta is the difference between decoding a short window
/// of recent ids with and without the new ones (so decoders that strip or join stay correct).
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    /// Recent ids: `ids[..context]` were already emitted, the rest are pending.
    ids: Vec<u32>,
    context: usize,
    /// Decoded text of `ids[..context]`.
    prefix: String,
}

impl StreamDecoder<'_> {
    /// Add one id; returns new text when there is some that is complete.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        self.emit(text)
    }

    /// Text still held back at the end of the stream (an incomplete character decodes as U+FFFD).
    pub fn finish(&mut self) -> Result<Option<String>> {
        if self.ids.len() == self.context {
            return Ok(None);
        }
        let text = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        self.emit(text)
    }

    fn emit(&mut self, text: String) -> Result<Option<String>> {
        let Some(delta) = text.strip_prefix(self.prefix.as_str()) else {
            return Err(Error::tokenizer(
                &self.tokenizer.source,
                format!(
                    "streaming decode: decoding ids {:?} gave {text:?}, which does not extend {:?}",
                    self.ids, self.prefix
                ),
            ));
        };
        let delta = delta.to_string();
        // The ids just emitted become the context for the next ones.
        self.ids.drain(..self.context);
        self.context = self.ids.len();
        self.prefix = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        Ok((!delta.is_empty()).then_some(delta))
    }
}

/// The tokenizer a GGUF file describes: vocabulary, merges, added tokens, the family's
/// normalizer/pre-tokenizer/decoder, and the special ids it declares.
struct GgufVocab {
    /// The vocabulary as the file spells it.
    tokens: Vec<String>,
    /// The vocabulary as the BPE model spells it (byte-level tokens respelled into the alphabet).
    vocab_tokens: Vec<String>,
    merges: Vec<(String, String)>,
    /// Added tokens: id and whether it is special.
    added: Vec<(u32, bool)>,
    parts: Parts,
    post_processor: Json,
    is_llama: bool,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    eot_id: Option<u32>,
    eom_id: Option<u32>,
    pad_id: Option<u32>,
    unk_id: Option<u32>,
    add_bos: bool,
}

/// Typed access to GGUF metadata with errors that name the file and the key.
struct Meta<'a> {
    map: &'a BTreeMap<String, MetaValue>,
    path: &'a Path,
}

impl Meta<'_> {
    fn wrong_type(&self, key: &str, want: &str, got: &MetaValue) -> Error {
        Error::invalid_field(
            self.path,
            key,
            format!("expected {want}, found {}", kind(got)),
        )
    }

    fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(MetaValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => match int_of(v) {
                Some(i) => Ok(Some(i != 0)),
                None => Err(self.wrong_type(key, "a bool", v)),
            },
        }
    }

    fn array(&self, key: &str) -> Result<Option<&[MetaValue]>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(items)) => Ok(Some(items)),
            Some(v) => Err(self.wrong_type(key, "an array", v)),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                MetaValue::String(s) => Ok(s.clone()),
                other => Err(Error::invalid_field(
                    self.path,
                    key,
                    format!("element {i}: expected a string, found {}", kind(other)),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                int_of(v).ok_or_else(|| {
                    Error::invalid_field(
                        self.path,
                        key,
                        format!("element {i}: expected an integer, found {}", kind(v)),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                MetaValue::F32(x) => Ok(f64::from(*x)),
                MetaValue::F64(x) => Ok(*x),
                other => int_of(other).map(|x| x as f64).ok_or_else(|| {
                    Error::invalid_field(
                        self.path,
                        key,
                        format!("element {i}: expected a number, found {}", kind(other)),
                    )
                }),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A token id: an integer below `n_tokens`. llama.cpp writes -1 (as a signed value) for "none".
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        let Some(v) = self.map.get(key) else {
            return Ok(None);
        };
        let id = int_of(v).ok_or_else(|| self.wrong_type(key, "an integer", v))?;
        if id < 0 {
            return Ok(None);
        }
        if id as u64 >= n_tokens as u64 {
            return Err(Error::invalid_field(
                self.path,
                key,
                format!("token id {id} is outside the vocabulary of {n_tokens} tokens"),
            ));
        }
        Ok(Some(id as u32))
    }
}

fn int_of(v: &MetaValue) -> Option<i64> {
    Some(match *v {
        MetaValue::U8(x) => x.into(),
        MetaValue::I8(x) => x.into(),
        MetaValue::U16(x) => x.into(),
        MetaValue::I16(x) => x.into(),
        MetaValue::U32(x) => x.into(),
        MetaValue::I32(x) => x.into(),
        MetaValue::U64(x) => i64::try_from(x).ok()?,
        MetaValue::I64(x) => x,
        _ => return None,
    })
}

fn kind(v: &MetaValue) -> &'static str {
    match v {
        MetaValue::U8(_) => "u8",
        MetaValue::I8(_) => "i8",
        MetaValue::U16(_) => "u16",
        MetaValue::I16(_) => "i16",
        MetaValue::U32(_) => "u32",
        MetaValue::I32(_) => "i32",
        MetaValue::U64(_) => "u64",
        MetaValue::I64(_) => "i64",
        MetaValue::F32(_) => "f32",
        MetaValue::F64(_) => "f64",
        MetaValue::Bool(_) => "bool",
        MetaValue::String(_) => "string",
        MetaValue::Array(_) => "array",
    }
}

impl GgufVocab {
    /// Read the tokenizer from GGUF metadata, following transformers' GGUF conversion
    /// (`integrations/gguf/gguf_tokenizer_mapping.py`) except where the family's own tokenizer.json
    /// differs (documented per pre-tokenizer in [`byte_level_parts`]).
    fn read(metadata: &BTreeMap<String, MetaValue>, path: &Path) -> Result<GgufVocab> {
        let meta = Meta {
            map: metadata,
            path,
        };
        let model = meta
            .string("tokenizer.ggml.model")?
            .ok_or_else(|| Error::missing(path, "tokenizer.ggml.model"))?;
        if !KNOWN_GGUF_TOKENIZER_MODELS.contains(&model) {
            return Err(Error::invalid_field(
                path,
                "tokenizer.ggml.model",
                format!(
                    "unsupported tokenizer model '{model}'; supported: {}",
                    KNOWN_GGUF_TOKENIZER_MODELS.join(", ")
                ),
            ));
        }
        let tokens = meta
            .strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| Error::missing(path, "tokenizer.ggml.tokens"))?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(Error::invalid_field(
                path,
                "tokenizer.ggml.tokens",
                format!("{n} tokens"),
            ));
        }
        let token_types = match meta.ints("tokenizer.ggml.token_type")? {
            Some(t) if t.len() != n => {
                return Err(Error::invalid_field(
                    path,
                    "tokenizer.ggml.token_type",
                    format!("{} entries for {n} tokens", t.len()),
                ))
            }
            Some(t) => t,
            None => vec![1; n],
        };
        let merges = meta.strings("tokenizer.ggml.merges")?;
        let ids = |key: &str| meta.token_id(key, n);
        let is_llama = model == "llama";
        let by_name = |name: &str| -> Option<u32> {
            // transformers' LlamaTokenizer defaults, used only when the file names no id.
            is_llama
                .then(|| tokens.iter().position(|t| t == name).map(|i| i as u32))
                .flatten()
        };
        let bos_id = ids("tokenizer.ggml.bos_token_id")?.or_else(|| by_name("<s>"));
        let eos_id = ids("tokenizer.ggml.eos_token_id")?.or_else(|| by_name("</s>"));
        let unk_id = ids("tokenizer.ggml.unknown_token_id")?.or_else(|| by_name("<unk>"));
        let pad_id = ids("tokenizer.ggml.padding_token_id")?;
        let eot_id = ids("tokenizer.ggml.eot_token_id")?;
        let eom_id = ids("tokenizer.ggml.eom_token_id")?;
        let pre = meta.string("tokenizer.ggml.pre")?.unwrap_or("default");
        let add_bos_default = match model {
            // llama.cpp: SentencePiece vocabularies add bos, and so does the Llama 3 pre-tokenizer group.
            "llama" => true,
            _ => matches!(pre, "llama3" | "llama-v3" | "llama-bpe" | "falcon3"),
        };
        let add_bos = meta
            .bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(add_bos_default);
        let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

        let mut vocab_tokens = tokens.clone();
        let (merge_pairs, parts) = if is_llama {
            let merge_pairs = match merges {
                Some(m) => split_merges(&m, path)?,
                None => {
                    let scores = meta
                        .floats("tokenizer.ggml.scores")?
                        .ok_or_else(|| Error::missing(path, "tokenizer.ggml.scores"))?;
                    if scores.len() != n {
                        return Err(Error::invalid_field(
                            path,
                            "tokenizer.ggml.scores",
                            format!("{} scores for {n} tokens", scores.len()),
                        ));
                    }
                    merges_from_scores(&tokens, &scores)
                }
            };
            let add_space_prefix = meta
                .bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true);
            (merge_pairs, sentencepiece_parts(add_space_prefix))
        } else {
            let merges = merges.ok_or_else(|| Error::missing(path, "tokenizer.ggml.merges"))?;
            // A byte-level vocabulary spells every byte with one printable character; transformers
            // respells any token written with other characters (raw bytes) into that alphabet.
            let alphabet = byte_level_alphabet();
            for token in vocab_tokens.iter_mut() {
                if !token.chars().all(|c| alphabet.contains(&c)) {
                    *token = byte_level_spelling(token.as_bytes());
                }
            }
            (split_merges(&merges, path)?, byte_level_parts(pre))
        };

        // Vocabulary: a later duplicate wins, as in a Python dict.
        let mut in_vocab: HashMap<&str, u32> = HashMap::with_capacity(n);
        for (i, token) in vocab_tokens.iter().enumerate() {
            in_vocab.insert(token.as_str(), i as u32);
        }
        for (left, right) in &merge_pairs {
            for piece in [left, right] {
                if !in_vocab.contains_key(piece.as_str()) {
                    return Err(Error::invalid_field(
                        path,
                        "tokenizer.ggml.merges",
                        format!("merge '{left} {right}' uses '{piece}', which is not a token"),
                    ));
                }
            }
        }

        // Added tokens: control tokens are special, user-defined ones are matched whole but not
        // special; the named special tokens are special too. In a byte-level vocabulary a control
        // token spelled outside the byte alphabet is a llama.cpp mislabel and is skipped (transformers).
        let byte_alphabet = (!is_llama).then(byte_level_alphabet);
        let spelled = |t: &str| {
            byte_alphabet
                .as_ref()
                .is_none_or(|a| t.chars().all(|c| a.contains(&c)))
        };
        let mut added: Vec<(u32, bool)> = Vec::new();
        let mut seen = HashSet::new();
        for (i, (token, ty)) in tokens.iter().zip(&token_types).enumerate() {
            let id = i as u32;
            if *ty == TOKEN_TYPE_CONTROL && spelled(token) && seen.insert(id) {
                added.push((id, true));
            }
        }
        for (i, (token, ty)) in tokens.iter().zip(&token_types).enumerate() {
            let id = i as u32;
            if *ty == TOKEN_TYPE_USER_DEFINED
                && in_vocab.get(token.as_str()) == Some(&id)
                && seen.insert(id)
            {
                added.push((id, false));
            }
        }
        for id in [bos_id, eos_id, unk_id, pad_id].into_iter().flatten() {
            let token = &tokens[id as usize];
            if in_vocab.get(token.as_str()) == Some(&id) && seen.insert(id) {
                added.push((id, true));
            }
        }
        let named = |id: Option<u32>| id.map(|i| (vocab_tokens[i as usize].clone(), i));
        let post_processor = template_post_processor(
            named(bos_id).filter(|_| add_bos),
            named(eos_id).filter(|_| add_eos),
        );
        Ok(GgufVocab {
            tokens,
            vocab_tokens,
            merges: merge_pairs,
            added,
            parts,
            post_processor,
            is_llama,
            bos_id,
            eos_id,
            eot_id,
            eom_id,
            pad_id,
            unk_id,
            add_bos,
        })
    }

    /// Assemble the `tokenizers` tokenizer (the BPE model directly; the small parts from their
    /// tokenizer.json form).
    fn tokenizer(&self, path: &Path) -> Result<tokenizers::Tokenizer> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::tokenizer(
                path,
                format!("could not build the {what} from GGUF metadata: {e}"),
            )
        };
        let vocab: tokenizers::models::bpe::Vocab = self
            .vocab_tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut builder = tokenizers::models::bpe::BPE::builder()
            .vocab_and_merges(vocab, self.merges.clone())
            .fuse_unk(self.is_llama)
            .byte_fallback(self.is_llama)
            .ignore_merges(self.parts.ignore_merges);
        if let Some(unk) = self.unk_id.filter(|_| self.is_llama) {
            builder = builder.unk_token(self.vocab_tokens[unk as usize].clone());
        }
        let bpe = builder.build().map_err(|e| fail("BPE model", &e))?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        if !self.parts.normalizer.is_null() {
            let n: tokenizers::NormalizerWrapper =
                serde_json::from_value(self.parts.normalizer.clone())
                    .map_err(|e| fail("normalizer", &e))?;
            tok.with_normalizer(Some(n))
                .map_err(|e| fail("normalizer", &e))?;
        }
        let pre: tokenizers::PreTokenizerWrapper =
            serde_json::from_value(self.parts.pre_tokenizer.clone())
                .map_err(|e| fail("pre-tokenizer", &e))?;
        tok.with_pre_tokenizer(Some(pre));
        let decoder: tokenizers::DecoderWrapper =
            serde_json::from_value(self.parts.decoder.clone()).map_err(|e| fail("decoder", &e))?;
        tok.with_decoder(Some(decoder));
        let post: tokenizers::processors::PostProcessorWrapper =
            serde_json::from_value(self.post_processor.clone())
                .map_err(|e| fail("post-processor", &e))?;
        tok.with_post_processor(Some(post));
        let added = |special: bool| {
            self.added
                .iter()
                .filter(move |(_, s)| *s == special)
                .map(move |&(id, _)| {
                    tokenizers::AddedToken::from(self.vocab_tokens[id as usize].clone(), special)
                        .normalized(false)
                })
                .collect::<Vec<_>>()
        };
        tok.add_special_tokens(added(true))
            .map_err(|e| fail("added tokens", &e))?;
        tok.add_tokens(added(false))
            .map_err(|e| fail("added tokens", &e))?;
        Ok(tok)
    }
}

/// Normalizer, pre-tokenizer and decoder of one tokenizer family, as tokenizer.json values.
struct Parts {
    normalizer: Json,
    pre_tokenizer: Json,
    decoder: Json,
    ignore_merges: bool,
}

/// SentencePiece BPE as transformers' `LlamaTokenizer` builds it: `Metaspace` puts `▁` for spaces
/// and in front of the text, and the decoder undoes it. transformers always adds the prefix; hone
/// honours `tokenizer.ggml.add_space_prefix = false` (the model was trained without it).
fn sentencepiece_parts(add_space_prefix: bool) -> Parts {
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Parts {
        normalizer: Json::Null,
        pre_tokenizer: json!({
            "type": "Metaspace",
            "replacement": "\u{2581}",
            "prepend_scheme": if add_space_prefix { "first" } else { "never" },
            "split": false,
        }),
        decoder: json!({"type": "Sequence", "decoders": decoders}),
        ignore_merges: false,
    }
}

/// Byte-level BPE pre-tokenizer for a `tokenizer.ggml.pre` name, matching that family's own
/// tokenizer.json (which is also what llama.cpp implements for the name):
/// - "smollm", "starcoder", "refact": `Digits(individual)` then GPT-2's ByteLevel regex. transformers'
///   GGUF conversion does not know these names and uses plain GPT-2, which differs on a run of
///   spaces before a digit.
/// - "llama3"/"llama-v3"/"llama-bpe"/"falcon3": Llama 3's split regex, `ignore_merges` as in its
///   tokenizer.json.
/// - "qwen2"/"deepseek-r1-qwen": Qwen2's split regex and its NFC normalizer.
/// - anything else (including "default", "gpt-2" and unknown names): GPT-2's ByteLevel regex.
///   Falling back rather than failing matches transformers; an unknown family may then split a
///   few texts differently from its real tokenizer (see [`KNOWN_GGUF_PRE_TOKENIZERS`]).
fn byte_level_parts(pre: &str) -> Parts {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    let (normalizer, pre_tokenizer, ignore_merges) = match pre {
        "smollm" | "starcoder" | "refact" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]}),
            true,
        ),
        "qwen2" | "deepseek-r1-qwen" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]}),
            false,
        ),
        _ => (Json::Null, byte_level(true), false),
    };
    Parts {
        normalizer,
        pre_tokenizer,
        decoder: json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
        ignore_merges,
    }
}

/// A `TemplateProcessing` post-processor that adds `bos` before and `eos` after the text (as
/// transformers' `update_post_processor` writes it).
fn template_post_processor(bos: Option<(String, u32)>, eos: Option<(String, u32)>) -> Json {
    let special = |(token, _): &(String, u32), type_id: u32| json!({"SpecialToken": {"id": token, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut special_tokens = serde_json::Map::new();
    if let Some(b) = &bos {
        single.push(special(b, 0));
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let Some(e) = &eos {
        single.push(special(e, 0));
    }
    pair.extend(single.iter().cloned());
    if let Some(b) = &bos {
        pair.push(special(b, 1));
    }
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    if let Some(e) = &eos {
        pair.push(special(e, 1));
    }
    for (token, id) in bos.iter().chain(eos.iter()) {
        special_tokens.insert(
            token.clone(),
            json!({"id": token, "ids": [id], "tokens": [token]}),
        );
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens})
}

/// Split GGUF merges ("left right") at the first space after the first character (llama.cpp's
/// rule, which allows a token that starts with a space).
fn split_merges(merges: &[String], path: &Path) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let first_len = m.chars().next().map_or(0, char::len_utf8);
            match m[first_len..].find(' ') {
                Some(pos) => {
                    let at = first_len + pos;
                    Ok((m[..at].to_string(), m[at + 1..].to_string()))
                }
                None => Err(Error::invalid_field(
                    path,
                    "tokenizer.ggml.merges",
                    format!("merge {i} ({m:?}) has no space between its two tokens"),
                )),
            }
        })
        .collect()
}

/// BPE merges implied by a SentencePiece vocabulary and its scores, as transformers'
/// `generate_merges(vocab, vocab_scores)` derives them: every split of a token into two tokens
/// is a merge ranked by the whole token's score (higher first), then by the length of the left
/// and right parts (longer first); ties keep vocabulary order.
fn merges_from_scores(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    // Python dicts: the id of a token is its last index; a token's score is its last score, but
    // it is visited at its first position.
    let mut id: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut score: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, (t, &s)) in tokens.iter().zip(scores).enumerate() {
        if id.insert(t.as_str(), i).is_none() {
            order.push(t.as_str());
        }
        score.insert(t.as_str(), s);
    }
    struct Merge<'t> {
        left: &'t str,
        right: &'t str,
        score: f64,
        left_chars: usize,
        right_chars: usize,
    }
    let mut merges: Vec<Merge> = Vec::new();
    for piece in order {
        let start = merges.len();
        let total_chars = piece.chars().count();
        for (n_left, (at, _)) in piece.char_indices().enumerate().skip(1) {
            let (left, right) = piece.split_at(at);
            if id.contains_key(left) && id.contains_key(right) {
                merges.push(Merge {
                    left,
                    right,
                    score: score[piece],
                    left_chars: n_left,
                    right_chars: total_chars - n_left,
                });
            }
        }
        merges[start..].sort_by_key(|m| (id[m.left], id[m.right]));
    }
    // Stable sort with the comparison reversed = Python's `sorted(..., reverse=True)`.
    merges.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    merges
        .into_iter()
        .map(|m| (m.left.to_string(), m.right.to_string()))
        .collect()
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the other 68
/// bytes get the characters from U+0100 on, in byte order.
pub fn byte_level_char(byte: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        return char::from(byte);
    }
    let rank = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('\u{FFFD}')
}

/// `bytes` spelled in GPT-2's byte alphabet.
pub fn byte_level_spelling(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_level_char(b)).collect()
}

fn byte_level_alphabet() -> HashSet<char> {
    (0..=255u8).map(byte_level_char).collect()
}

#[cfg(test)]
mod tests;
