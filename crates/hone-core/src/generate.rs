//! The generation loop over any engine (`CausalLm`): prefill, decode, stop on eos / stop
//! strings / token budget / context limit, and stream the text as it becomes final.

use crate::error::{Error, Result};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;

/// A causal language model with its own cache: what the generation loop drives.
pub trait CausalLm {
    /// Number of logits per position.
    fn vocab_size(&self) -> usize;
    /// Feed `tokens` after those already cached and return the logits of the last one.
    fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Forget every cached token.
    fn reset(&mut self);
    /// Number of tokens cached (the position of the next token).
    fn position(&self) -> usize;
    /// Most tokens the model (and its cache) can hold.
    fn max_positions(&self) -> usize;
}

/// What `generate` should do.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// How tokens are picked.
    pub sampling: SamplingParams,
    /// Generation stops when the text contains one of these; the text ends before it.
    pub stop_strings: Vec<String>,
    /// Token ids that end generation (not part of the output).
    pub eos_ids: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            sampling: SamplingParams::greedy(),
            stop_strings: Vec::new(),
            eos_ids: Vec::new(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence token was sampled.
    Eos,
    /// The text reached a stop string.
    StopString,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The model's context is full.
    ContextFull,
    /// The streaming callback asked to stop.
    Callback,
}

/// The result of `generate`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOutput {
    /// Generated token ids (without the eos token that ended generation, if any).
    pub ids: Vec<u32>,
    /// Generated text, ending before the stop string when one was hit.
    pub text: String,
    /// Why generation ended.
    pub stop_reason: StopReason,
    /// Number of prompt tokens.
    pub prompt_tokens: usize,
    /// Seconds spent on the prompt (0 where the platform has no clock, e.g. wasm).
    pub prefill_secs: f64,
    /// Seconds spent generating after the prompt (0 where the platform has no clock).
    pub decode_secs: f64,
}

/// Generate text after `prompt_ids` with `tokenizer` decoding the output (special tokens
/// skipped). The model is reset first. `on_text` receives each newly final piece of text and
/// returns false to stop.
pub fn generate(
    lm: &mut dyn CausalLm,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<GenerateOutput> {
    let mut decode = |ids: &[u32]| tokenizer.decode(ids, true);
    generate_with_decoder(lm, &mut decode, prompt_ids, opts, on_text)
}

/// `generate` with any function that turns generated ids into text (the whole list each call).
pub fn generate_with_decoder(
    lm: &mut dyn CausalLm,
    decode: &mut dyn FnMut(&[u32]) -> Result<String>,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<GenerateOutput> {
    if prompt_ids.is_empty() {
        return Err(Error::Invalid("generate: the prompt has no tokens".into()));
    }
    if prompt_ids.len() > lm.max_positions() {
        return Err(Error::Invalid(format!(
            "generate: the prompt has {} tokens but the model holds at most {}",
            prompt_ids.len(),
            lm.max_positions()
        )));
    }
    if opts.stop_strings.iter().any(|s| s.is_empty()) {
        return Err(Error::Invalid("generate: empty stop string".into()));
    }
    let mut sampler = Sampler::new(opts.sampling.clone())?;
    let mut out = GenerateOutput {
        ids: Vec::new(),
        text: String::new(),
        stop_reason: StopReason::MaxTokens,
        prompt_tokens: prompt_ids.len(),
        prefill_secs: 0.0,
        decode_secs: 0.0,
    };
    if opts.max_new_tokens == 0 {
        return Ok(out);
    }

    lm.reset();
    let clock = Clock::start();
    let mut logits = lm.forward_last(prompt_ids)?;
    out.prefill_secs = clock.secs();
    let clock = Clock::start();

    let mut history = prompt_ids.to_vec();
    let mut stream = TextStream::new(&opts.stop_strings);
    let stop_reason = loop {
        if logits.len() != lm.vocab_size() {
            return Err(Error::Invalid(format!(
                "generate: the model returned {} logits for a vocabulary of {}",
                logits.len(),
                lm.vocab_size()
            )));
        }
        let token = sampler.sample(&logits, &history)?;
        if opts.eos_ids.contains(&token) {
            break StopReason::Eos;
        }
        out.ids.push(token);
        history.push(token);

        let text = decode(&out.ids)?;
        let (piece, stopped) = stream.update(&text);
        let keep_going = piece.is_empty() || on_text(piece);
        if stopped {
            break StopReason::StopString;
        }
        if !keep_going {
            break StopReason::Callback;
        }
        if out.ids.len() >= opts.max_new_tokens {
            break StopReason::MaxTokens;
        }
        if lm.position() >= lm.max_positions() {
            break StopReason::ContextFull;
        }
        logits = lm.forward_last(&[token])?;
    };
    out.decode_secs = clock.secs();

    if stop_reason != StopReason::StopString && stop_reason != StopReason::Callback {
        let rest = stream.finish();
        if !rest.is_empty() {
            on_text(rest);
        }
    }
    out.text = stream.into_text();
    out.stop_reason = stop_reason;
    Ok(out)
}

/// Turns the growing decoded text into final pieces: holds back text that may still become a
/// stop string or that ends in an incomplete UTF-8 sequence (U+FFFD), and cuts at stop strings.
struct TextStream<'a> {
    stop_strings: &'a [String],
    /// The latest decoded text (cut before the stop string once one is found).
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
}

impl<'a> TextStream<'a> {
    fn new(stop_strings: &'a [String]) -> Self {
        TextStream {
            stop_strings,
            text: String::new(),
            emitted: 0,
        }
    }

    /// Take the whole decoded text so far; return the newly final piece and whether a stop
    /// string was reached.
    fn update(&mut self, decoded: &str) -> (&str, bool) {
        // A decoder may rewrite earlier text (e.g. space clean-up); what was handed out stays
        // handed out, and the new text continues after the common prefix.
        if !decoded.starts_with(&self.text[..self.emitted]) {
            self.emitted = common_prefix_len(&self.text[..self.emitted], decoded);
        }
        self.text.clear();
        self.text.push_str(decoded);
        if let Some(cut) = self.first_stop(self.emitted) {
            self.text.truncate(cut);
            let start = self.emitted.min(cut);
            self.emitted = cut;
            return (&self.text[start..cut], true);
        }
        let safe = self.safe_end();
        let start = self.emitted;
        if safe <= start {
            return ("", false);
        }
        self.emitted = safe;
        (&self.text[start..safe], false)
    }

    /// Hand out everything still held back (generation ended without a stop string).
    fn finish(&mut self) -> &str {
        let start = self.emitted;
        self.emitted = self.text.len();
        &self.text[start..]
    }

    fn into_text(self) -> String {
        self.text
    }

    /// Byte offset of the earliest stop string that ends after `emitted` (a stop string that
    /// was already fully handed out cannot exist, since we hold back its prefixes).
    fn first_stop(&self, emitted: usize) -> Option<usize> {
        let longest = self.stop_strings.iter().map(|s| s.len()).max()?;
        let mut from = emitted.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stop_strings
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
    }

    /// End of the text that is final: before a trailing U+FFFD run and before any suffix that
    /// is a prefix of a stop string.
    fn safe_end(&self) -> usize {
        let mut end = self.text.trim_end_matches('\u{FFFD}').len();
        let t = &self.text[..end];
        // Only a tail shorter than the longest stop string can be a prefix of one.
        let longest = self.stop_strings.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut from = self.emitted.max(end.saturating_sub(longest)).min(end);
        while !t.is_char_boundary(from) {
            from += 1;
        }
        for (i, _) in t[from..].char_indices() {
            let i = from + i;
            let tail = &t[i..];
            if self.stop_strings.iter().any(|s| s.starts_with(tail)) {
                end = i;
                break;
            }
        }
        end
    }
}

fn common_prefix_len(a: &str, b: &str) -> usize {
    let mut n = 0;
    for ((i, ca), cb) in a.char_indices().zip(b.chars()) {
        if ca != cb {
            return i;
        }
        n = i + ca.len_utf8();
    }
    n
}

/// Wall-clock timing where the platform has a clock (`Instant` panics on wasm32-unknown-unknown).
struct Clock {
    #[cfg(not(target_arch = "wasm32"))]
    start: std::time::Instant,
}

impl Clock {
    fn start() -> Self {
        Clock {
            #[cfg(not(target_arch = "wasm32"))]
            start: std::time::Instant::now(),
        }
    }
    fn secs(&self) -> f64 {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.start.elapsed().as_secs_f64()
        }
        #[cfg(target_arch = "wasm32")]
        {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake model that emits a fixed script of tokens (its logits put all mass on the next
    /// scripted token), and checks that it is fed what it emitted.
    struct Script {
        script: Vec<u32>,
        vocab: usize,
        max: usize,
        fed: Vec<u32>,
        prompt_len: usize,
        resets: usize,
    }

    impl Script {
        fn new(script: &[u32], vocab: usize, max: usize) -> Self {
            Script {
                script: script.to_vec(),
                vocab,
                max,
                fed: Vec::new(),
                prompt_len: 0,
                resets: 0,
            }
        }
    }

    impl CausalLm for Script {
        fn vocab_size(&self) -> usize {
            self.vocab
        }
        fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
            if self.fed.len() + tokens.len() > self.max {
                return Err(Error::Invalid("over the context".into()));
            }
            if self.fed.is_empty() {
                self.prompt_len = tokens.len();
            } else {
                // Each decode step feeds exactly the token emitted last.
                let step = self.fed.len() - self.prompt_len;
                assert_eq!(tokens, &self.script[step..step + 1]);
            }
            self.fed.extend_from_slice(tokens);
            let step = self.fed.len() - self.prompt_len;
            let mut l = vec![0.0; self.vocab];
            l[self.script[step] as usize] = 10.0;
            Ok(l)
        }
        fn reset(&mut self) {
            self.fed.clear();
            self.resets += 1;
        }
        fn position(&self) -> usize {
            self.fed.len()
        }
        fn max_positions(&self) -> usize {
            self.max
        }
    }

    /// Token i decodes to PIECES[i]; ids 8 and 9 are the two halves of "é" (U+00E9).
    const PIECES: [&str; 8] = ["a", "b", "<", "/s", ">", " ", "x", "END"];
    fn decode(ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &i in ids {
            match i {
                8 => bytes.push(0xC3),
                9 => bytes.push(0xA9),
                _ => bytes.extend_from_slice(PIECES[i as usize].as_bytes()),
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn run(
        script: &[u32],
        max: usize,
        opts: &GenerateOptions,
    ) -> (GenerateOutput, Vec<String>, Script) {
        let mut lm = Script::new(script, 10, max);
        let mut pieces = Vec::new();
        let mut on_text = |s: &str| {
            pieces.push(s.to_string());
            true
        };
        let out = generate_with_decoder(&mut lm, &mut decode, &[0, 1], opts, &mut on_text).unwrap();
        (out, pieces, lm)
    }

    fn opts(max_new_tokens: usize, stops: &[&str], eos: &[u32]) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens,
            sampling: SamplingParams::greedy(),
            stop_strings: stops.iter().map(|s| s.to_string()).collect(),
            eos_ids: eos.to_vec(),
        }
    }

    #[test]
    fn stops_at_eos_without_emitting_it() {
        let (out, pieces, lm) = run(&[0, 1, 7, 0, 0], 100, &opts(10, &[], &[7]));
        assert_eq!(out.ids, vec![0, 1]);
        assert_eq!(out.text, "ab");
        assert_eq!(out.stop_reason, StopReason::Eos);
        assert_eq!(out.prompt_tokens, 2);
        assert_eq!(pieces.concat(), "ab");
        assert_eq!(lm.resets, 1);
    }

    #[test]
    fn stops_after_max_new_tokens() {
        let (out, pieces, lm) = run(&[0, 1, 0, 1, 0, 1], 100, &opts(3, &[], &[]));
        assert_eq!(out.ids, vec![0, 1, 0]);
        assert_eq!(out.stop_reason, StopReason::MaxTokens);
        assert_eq!(pieces, vec!["a", "b", "a"]);
        // Prompt (2) plus two decode steps: the last token is never fed.
        assert_eq!(lm.fed.len(), 4);
    }

    #[test]
    fn stops_when_the_context_is_full() {
        let (out, _, lm) = run(&[0, 1, 0, 1, 0, 1], 4, &opts(10, &[], &[]));
        assert_eq!(out.ids.len(), 3);
        assert_eq!(out.stop_reason, StopReason::ContextFull);
        assert_eq!(lm.fed.len(), 4);
    }

    #[test]
    fn stop_string_across_tokens_is_held_back_and_cut() {
        // "ab</s>x": "<" and "/s" must not be streamed before we know they form "</s>".
        let (out, pieces, _) = run(&[0, 1, 2, 3, 4, 6, 6], 100, &opts(10, &["</s>"], &[]));
        assert_eq!(out.text, "ab");
        assert_eq!(out.stop_reason, StopReason::StopString);
        assert_eq!(out.ids, vec![0, 1, 2, 3, 4]);
        assert_eq!(pieces.concat(), "ab");
    }

    #[test]
    fn a_false_start_of_a_stop_string_is_released() {
        // "a<b": "<" is held while it could start "</s>", then released with "b".
        let (out, pieces, _) = run(&[0, 2, 1, 0], 100, &opts(4, &["</s>"], &[]));
        assert_eq!(out.text, "a<ba");
        assert_eq!(pieces, vec!["a", "<b", "a"]);
        // Held text is flushed at the end: "a<" then max tokens.
        let (out, pieces, _) = run(&[0, 2, 1], 100, &opts(2, &["</s>"], &[]));
        assert_eq!(out.text, "a<");
        assert_eq!(pieces, vec!["a", "<"]);
    }

    #[test]
    fn incomplete_utf8_is_held_until_complete() {
        let (out, pieces, _) = run(&[0, 8, 9, 1, 1], 100, &opts(4, &[], &[]));
        assert_eq!(out.text, "aéb");
        assert_eq!(pieces, vec!["a", "é", "b"]);
    }

    #[test]
    fn the_callback_can_stop_generation() {
        let mut lm = Script::new(&[0, 1, 0, 1, 0], 10, 100);
        let mut n = 0;
        let mut on_text = |_: &str| {
            n += 1;
            n < 2
        };
        let out = generate_with_decoder(
            &mut lm,
            &mut decode,
            &[0],
            &opts(10, &[], &[]),
            &mut on_text,
        )
        .unwrap();
        assert_eq!(out.stop_reason, StopReason::Callback);
        assert_eq!(out.ids, vec![0, 1]);
    }

    #[test]
    fn bad_prompts_are_errors() {
        let mut lm = Script::new(&[0], 10, 4);
        let mut on_text = |_: &str| true;
        let o = opts(3, &[], &[]);
        assert!(generate_with_decoder(&mut lm, &mut decode, &[], &o, &mut on_text).is_err());
        assert!(generate_with_decoder(&mut lm, &mut decode, &[0; 5], &o, &mut on_text).is_err());
        let o = opts(3, &[""], &[]);
        assert!(generate_with_decoder(&mut lm, &mut decode, &[0], &o, &mut on_text).is_err());
    }
}
