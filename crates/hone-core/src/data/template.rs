//! From rows to examples: a text field, a `{field}` template, or a conversation rendered with
//! the model's chat template.
//!
//! An [`Example`] is a list of text [`Segment`]s, each marked as trained on or not. A template
//! example has two: the prompt (the template up to its last placeholder) and the completion
//! (the rest); a conversation has one trained segment per assistant turn. With
//! `completion_only`, tokenization gives -100 labels to the untrained segments.
//!
//! Spaces and tabs at the end of a template prompt move to the start of the completion:
//! `"{phrase} -> {tone}"` gives prompt `"great ->"` and completion `" positive"`. Byte-level BPE
//! tokenizers attach a space to the word after it, so this split is the one the tokenizer
//! itself would make, and a model asked to continue `"great ->"` generates `" positive"`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::data::read::{Dataset, Row};
use crate::error::{Error, Result};

/// A Python `str.format`-style template: `{field}` placeholders, `{{` and `}}` for braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

impl Template {
    /// Parse a template; format specs (`{x:>5}`), conversions (`{x!r}`), attribute or index
    /// access (`{x.y}`, `{x[0]}`) and positional fields (`{}`, `{0}`) are rejected.
    pub fn parse(src: &str) -> Result<Self> {
        let bad = |why: String| Error::Invalid(format!("template {src:?}: {why}"));
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = src.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => return Err(bad("single '}' (write '}}' for a literal brace)".into())),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            None => {
                                return Err(bad(
                                    "'{' without a closing '}' (write '{{' for a literal brace)"
                                        .into(),
                                ))
                            }
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                        }
                    }
                    if name.is_empty() || name.chars().all(|ch| ch.is_ascii_digit()) {
                        return Err(bad(format!(
                            "positional placeholder '{{{name}}}': name a field, e.g. {{text}}"
                        )));
                    }
                    if let Some(ch) = name.chars().find(|ch| "{:!.[]".contains(*ch)) {
                        return Err(bad(format!(
                            "placeholder '{{{name}}}' uses '{ch}': only plain {{field}} \
                             placeholders are supported"
                        )));
                    }
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Field(name));
                }
                _ => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template {
            source: src.to_string(),
            pieces,
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The field names the template uses, in order (repeats included).
    pub fn fields(&self) -> Vec<&str> {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Field(f) => Some(f.as_str()),
                Piece::Text(_) => None,
            })
            .collect()
    }

    /// Fill the placeholders from `row`; the error is the reason the row cannot be used.
    pub fn render(&self, row: &Row) -> std::result::Result<String, String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => out.push_str(&field_text(row, f)?),
            }
        }
        Ok(out)
    }

    /// The template split before its last placeholder: (prompt part, completion part).
    /// Without placeholders the prompt part is empty.
    pub fn split_at_last_field(&self) -> (Template, Template) {
        let at = self
            .pieces
            .iter()
            .rposition(|p| matches!(p, Piece::Field(_)))
            .unwrap_or(0);
        (
            Template::from_pieces(self.pieces[..at].to_vec()),
            Template::from_pieces(self.pieces[at..].to_vec()),
        )
    }

    /// A template of `pieces`, with the source text that parses back to them.
    fn from_pieces(pieces: Vec<Piece>) -> Template {
        let source = pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.replace('{', "{{").replace('}', "}}"),
                Piece::Field(f) => format!("{{{f}}}"),
            })
            .collect();
        Template { source, pieces }
    }

    /// This template without whitespace at its start (`start`) or end.
    fn trimmed(&self, start: bool) -> Template {
        let mut pieces = self.pieces.clone();
        let index = if start {
            0
        } else {
            pieces.len().saturating_sub(1)
        };
        if let Some(Piece::Text(t)) = pieces.get_mut(index) {
            *t = if start { t.trim_start() } else { t.trim_end() }.to_string();
            if t.is_empty() {
                pieces.remove(index);
            }
        }
        Template::from_pieces(pieces)
    }
}

/// The text of field `name` in `row`: strings as they are, numbers as JSON writes them,
/// booleans as Python's `True`/`False`, lists and objects as compact JSON; null is an error.
fn field_text(row: &Row, name: &str) -> std::result::Result<String, String> {
    match row.get(name) {
        None => Err(format!("no field '{name}'")),
        Some(Value::Null) => Err(format!("field '{name}' is null")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Bool(b)) => Ok(if *b { "True" } else { "False" }.to_string()),
        Some(v @ Value::Number(_)) => Ok(v.to_string()),
        Some(v) => Ok(v.to_string()),
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (any string the chat template accepts).
    pub role: String,
    /// The message text.
    pub content: String,
}

/// Turns messages into text with the model's chat template: `(messages,
/// add_generation_prompt) -> text`. The caller binds the template, bos and eos.
pub type ChatRenderer<'a> = &'a dyn Fn(&[Message], bool) -> Result<String>;

/// How rows become examples.
#[derive(Debug, Clone, PartialEq)]
pub enum ExampleFormat {
    /// One field holds the whole text (plain language modelling: no prompt).
    TextField(String),
    /// A `{field}` template; the prompt is the part before the last placeholder.
    Template(Template),
    /// A field holding a conversation `[{"role": .., "content": ..}, ..]`; `system`, when
    /// given, is prepended unless the conversation starts with a system message.
    ChatMessages {
        /// The conversation field, usually `messages`.
        field: String,
        /// Optional system message.
        system: Option<String>,
    },
    /// A conversation built from templates: optional system text, a user turn, an assistant turn.
    ChatTemplates {
        /// Optional system message (literal text).
        system: Option<String>,
        /// Template of the user message.
        user: Template,
        /// Template of the assistant message (what is trained on).
        assistant: Template,
    },
}

impl ExampleFormat {
    /// A chat format from one template: the user turn is the part before the last placeholder
    /// (trailing whitespace trimmed), the assistant turn the rest (leading whitespace trimmed).
    pub fn chat_from_template(template: &Template, system: Option<String>) -> Self {
        let (user, assistant) = template.split_at_last_field();
        let user = user.trimmed(false);
        let assistant = assistant.trimmed(true);
        ExampleFormat::ChatTemplates {
            system,
            user,
            assistant,
        }
    }

    fn needs_chat(&self) -> bool {
        matches!(
            self,
            ExampleFormat::ChatMessages { .. } | ExampleFormat::ChatTemplates { .. }
        )
    }
}

/// A piece of an example's text and whether the loss covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The text.
    pub text: String,
    /// Whether this text is trained on when `completion_only` is set.
    pub trained: bool,
}

/// One training example: text segments, some of them trained on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// 1-based line of the source row.
    pub line: usize,
    /// The text in order; empty segments are left out.
    pub segments: Vec<Segment>,
}

impl Example {
    /// An example of an untrained prompt (may be empty) followed by a trained completion.
    pub fn prompt_completion(line: usize, prompt: &str, completion: &str) -> Self {
        let mut segments = Vec::new();
        if !prompt.is_empty() {
            segments.push(Segment {
                text: prompt.to_string(),
                trained: false,
            });
        }
        if !completion.is_empty() {
            segments.push(Segment {
                text: completion.to_string(),
                trained: true,
            });
        }
        Example { line, segments }
    }

    /// All text before the last trained segment: what a model is given to generate from.
    pub fn prompt(&self) -> String {
        let end = self
            .segments
            .iter()
            .rposition(|s| s.trained)
            .unwrap_or(self.segments.len());
        self.segments[..end]
            .iter()
            .map(|s| s.text.as_str())
            .collect()
    }

    /// The last trained segment: the reference answer (empty if there is none).
    pub fn completion(&self) -> &str {
        self.segments
            .iter()
            .rev()
            .find(|s| s.trained)
            .map(|s| s.text.as_str())
            .unwrap_or("")
    }

    /// The whole text.
    pub fn text(&self) -> String {
        self.segments.iter().map(|s| s.text.as_str()).collect()
    }
}

/// A row left out because of `skip_bad_rows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// 1-based line of the row.
    pub line: usize,
    /// Why, e.g. "no field 'tone'".
    pub reason: String,
}

/// Examples built from a dataset, and the rows skipped on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Examples {
    /// The examples in row order.
    pub examples: Vec<Example>,
    /// Rows left out (only with `skip_bad_rows`).
    pub skipped: Vec<SkippedRow>,
}

impl Examples {
    /// One line such as "skipped 3 rows: 2 x no field 'tone' (first at line 7), 1 x ...";
    /// `None` when nothing was skipped.
    pub fn skipped_summary(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let mut by_reason: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for s in &self.skipped {
            let e = by_reason.entry(&s.reason).or_insert((0, s.line));
            e.0 += 1;
        }
        let parts: Vec<String> = by_reason
            .iter()
            .map(|(reason, (count, line))| format!("{count} x {reason} (first at line {line})"))
            .collect();
        Some(format!(
            "skipped {} row{}: {}",
            self.skipped.len(),
            if self.skipped.len() == 1 { "" } else { "s" },
            parts.join(", ")
        ))
    }
}

/// Why a row did not become an example.
enum RowError {
    /// Something wrong with this row's data (skippable).
    Bad(String),
    /// Something that would fail for every row (configuration).
    Fatal(Error),
}

impl From<String> for RowError {
    fn from(s: String) -> Self {
        RowError::Bad(s)
    }
}

/// Turn every row of `dataset` into an [`Example`]. A row that cannot be used (missing or null
/// field, malformed conversation, a chat template that rejects it) is an error naming the file,
/// line and field, or, with `skip_bad_rows`, is left out and listed in [`Examples::skipped`].
/// Chat formats need `chat`.
pub fn build_examples(
    dataset: &Dataset,
    format: &ExampleFormat,
    skip_bad_rows: bool,
    chat: Option<ChatRenderer>,
) -> Result<Examples> {
    if format.needs_chat() && chat.is_none() {
        return Err(Error::Invalid(
            "a chat dataset format needs the model's chat template".into(),
        ));
    }
    let mut out = Examples {
        examples: Vec::new(),
        skipped: Vec::new(),
    };
    for row in &dataset.rows {
        match example_from_row(row, format, chat) {
            Ok(ex) => out.examples.push(ex),
            Err(RowError::Bad(reason)) if skip_bad_rows => out.skipped.push(SkippedRow {
                line: row.line,
                reason,
            }),
            Err(RowError::Bad(reason)) => {
                let fields = if reason.starts_with("no field") {
                    format!(" (row has: {})", row.field_list())
                } else {
                    String::new()
                };
                return Err(Error::format(
                    &dataset.source,
                    format!("line {}: {reason}{fields}", row.line),
                ));
            }
            Err(RowError::Fatal(e)) => return Err(e),
        }
    }
    if out.examples.is_empty() {
        let why = out.skipped_summary().unwrap_or_default();
        return Err(Error::format(
            &dataset.source,
            format!("no usable rows; {why}"),
        ));
    }
    Ok(out)
}

fn example_from_row(
    row: &Row,
    format: &ExampleFormat,
    chat: Option<ChatRenderer>,
) -> std::result::Result<Example, RowError> {
    match format {
        ExampleFormat::TextField(field) => Ok(Example::prompt_completion(
            row.line,
            "",
            &field_text(row, field)?,
        )),
        ExampleFormat::Template(template) => {
            let (prompt_t, completion_t) = template.split_at_last_field();
            let prompt = prompt_t.render(row)?;
            let completion = completion_t.render(row)?;
            let kept = prompt.trim_end_matches([' ', '\t']);
            let completion = format!("{}{completion}", &prompt[kept.len()..]);
            Ok(Example::prompt_completion(row.line, kept, &completion))
        }
        ExampleFormat::ChatMessages { field, system } => {
            let mut messages = messages_from_value(row, field)?;
            if let Some(sys) = system {
                if messages.first().map(|m| m.role.as_str()) != Some("system") {
                    messages.insert(
                        0,
                        Message {
                            role: "system".into(),
                            content: sys.clone(),
                        },
                    );
                }
            }
            conversation_example(row.line, &messages, chat)
        }
        ExampleFormat::ChatTemplates {
            system,
            user,
            assistant,
        } => {
            let mut messages = Vec::new();
            if let Some(sys) = system {
                messages.push(Message {
                    role: "system".into(),
                    content: sys.clone(),
                });
            }
            messages.push(Message {
                role: "user".into(),
                content: user.render(row)?,
            });
            messages.push(Message {
                role: "assistant".into(),
                content: assistant.render(row)?,
            });
            conversation_example(row.line, &messages, chat)
        }
    }
}

fn messages_from_value(row: &Row, field: &str) -> std::result::Result<Vec<Message>, String> {
    let list = match row.get(field) {
        None => return Err(format!("no field '{field}'")),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(format!(
                "field '{field}' must be a list of {{\"role\", \"content\"}} objects"
            ))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let text = |key: &str| match m.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(format!(
                    "field '{field}': message {i}: '{key}' must be a string"
                )),
                None => Err(format!("field '{field}': message {i} has no '{key}'")),
            };
            Ok(Message {
                role: text("role")?,
                content: text("content")?,
            })
        })
        .collect()
}

/// Render a conversation and cut it into segments: every assistant turn (its content and the
/// template's end-of-turn text) is trained; everything else is not. Messages after the last
/// assistant turn are dropped.
fn conversation_example(
    line: usize,
    messages: &[Message],
    chat: Option<ChatRenderer>,
) -> std::result::Result<Example, RowError> {
    let render = chat.ok_or_else(|| {
        RowError::Fatal(Error::Invalid(
            "a chat dataset format needs the model's chat template".into(),
        ))
    })?;
    let last = messages
        .iter()
        .rposition(|m| m.role == "assistant")
        .ok_or_else(|| RowError::Bad("conversation has no assistant message".into()))?;
    let messages = &messages[..=last];
    let rendered = |msgs: &[Message], gen: bool| {
        render(msgs, gen).map_err(|e| RowError::Bad(format!("chat template: {e}")))
    };
    let full = rendered(messages, false)?;
    let mut segments = Vec::new();
    let mut covered = 0;
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = rendered(&messages[..i], true)?;
        let after = rendered(&messages[..=i], false)?;
        let consistent = full.starts_with(&before)
            && full.starts_with(&after)
            && before.len() >= covered
            && after.len() >= before.len();
        if !consistent {
            return Err(RowError::Fatal(Error::Invalid(format!(
                "line {line}: the chat template's rendering of the first {i} messages is not \
                 a prefix of the whole conversation's; cannot locate the assistant turns"
            ))));
        }
        segments.push(Segment {
            text: full[covered..before.len()].to_string(),
            trained: false,
        });
        segments.push(Segment {
            text: full[before.len()..after.len()].to_string(),
            trained: true,
        });
        covered = after.len();
    }
    segments.push(Segment {
        text: full[covered..].to_string(),
        trained: false,
    });
    segments.retain(|s| !s.text.is_empty());
    Ok(Example { line, segments })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::read::{parse_dataset, DataFormat};

    fn jsonl(text: &str) -> Dataset {
        parse_dataset(text.as_bytes(), "d.jsonl", DataFormat::Jsonl).unwrap()
    }

    /// A ChatML renderer written out by hand (the real one is minijinja over the model's
    /// template): what SmolLM2's template produces when a system message is given.
    fn chatml(messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut s = String::new();
        for m in messages {
            s.push_str(&format!(
                "<|im_start|>{}\n{}<|im_end|>\n",
                m.role, m.content
            ));
        }
        if add_generation_prompt {
            s.push_str("<|im_start|>assistant\n");
        }
        Ok(s)
    }

    #[test]
    fn template_parses_escapes_and_fields() {
        let t = Template::parse("{{literal}} {phrase} -> {tone}}}").unwrap();
        assert_eq!(t.fields(), vec!["phrase", "tone"]);
        let row = &jsonl("{\"phrase\": \"good\", \"tone\": \"positive\"}").rows[0];
        assert_eq!(t.render(row).unwrap(), "{literal} good -> positive}");
        let row = &jsonl("{\"phrase\": 3, \"tone\": true}").rows[0];
        assert_eq!(t.render(row).unwrap(), "{literal} 3 -> True}");
        let row = &jsonl("{\"phrase\": [1, \"a\"], \"tone\": 2.5}").rows[0];
        assert_eq!(t.render(row).unwrap(), "{literal} [1,\"a\"] -> 2.5}");
    }

    #[test]
    fn template_errors_quote_the_template() {
        for (src, what) in [
            ("{a", "without a closing"),
            ("a}", "single '}'"),
            ("{}", "positional"),
            ("{0}", "positional"),
            ("{a:>5}", "uses ':'"),
            ("{a!r}", "uses '!'"),
            ("{a.b}", "uses '.'"),
            ("{a[0]}", "uses '['"),
        ] {
            let err = Template::parse(src).unwrap_err().to_string();
            assert!(err.starts_with(&format!("template {src:?}: ")), "{err}");
            assert!(err.contains(what), "{src}: {err}");
        }
    }

    #[test]
    fn split_at_last_field_gives_prompt_and_completion_parts() {
        let t = Template::parse("Review: {phrase} {{x}} -> {tone}.\n").unwrap();
        let (p, c) = t.split_at_last_field();
        assert_eq!(p.source(), "Review: {phrase} {{x}} -> ");
        assert_eq!(c.source(), "{tone}.\n");
        let (p, c) = Template::parse("no fields").unwrap().split_at_last_field();
        assert_eq!((p.source(), c.source()), ("", "no fields"));
    }

    #[test]
    fn template_examples_move_trailing_space_into_the_completion() {
        let ds = jsonl("{\"phrase\": \"great film\", \"tone\": \"positive\"}\n");
        let format = ExampleFormat::Template(Template::parse("{phrase} -> {tone}").unwrap());
        let ex = &build_examples(&ds, &format, false, None).unwrap().examples[0];
        assert_eq!(ex.prompt(), "great film ->");
        assert_eq!(ex.completion(), " positive");
        assert_eq!(ex.text(), "great film -> positive");
        assert_eq!(ex.segments.len(), 2);
        assert!(!ex.segments[0].trained && ex.segments[1].trained);
    }

    #[test]
    fn text_field_examples_have_no_prompt() {
        let ds = parse_dataset(b"hello there\n", "t.txt", DataFormat::Text).unwrap();
        let format = ExampleFormat::TextField("text".into());
        let ex = &build_examples(&ds, &format, false, None).unwrap().examples[0];
        assert_eq!(ex.prompt(), "");
        assert_eq!(ex.completion(), "hello there");
        assert_eq!(ex.segments.len(), 1);
    }

    #[test]
    fn missing_field_names_file_line_and_field_or_is_skipped() {
        let ds = jsonl(
            "{\"phrase\": \"a\", \"tone\": \"x\"}\n{\"phrase\": \"b\", \"label\": \"y\"}\n\
             {\"phrase\": \"c\", \"tone\": null}\n{\"phrase\": \"d\"}\n",
        );
        let format = ExampleFormat::Template(Template::parse("{phrase} -> {tone}").unwrap());
        let err = build_examples(&ds, &format, false, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "d.jsonl: line 2: no field 'tone' (row has: phrase, label)"
        );
        let out = build_examples(&ds, &format, true, None).unwrap();
        assert_eq!(out.examples.len(), 1);
        assert_eq!(
            out.skipped,
            vec![
                SkippedRow {
                    line: 2,
                    reason: "no field 'tone'".into()
                },
                SkippedRow {
                    line: 3,
                    reason: "field 'tone' is null".into()
                },
                SkippedRow {
                    line: 4,
                    reason: "no field 'tone'".into()
                },
            ]
        );
        assert_eq!(
            out.skipped_summary().unwrap(),
            "skipped 3 rows: 1 x field 'tone' is null (first at line 3), \
             2 x no field 'tone' (first at line 2)"
        );
        let only_bad = jsonl("{\"phrase\": \"d\"}\n");
        let err = build_examples(&only_bad, &format, true, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("d.jsonl: no usable rows; skipped 1 row"),
            "{err}"
        );
    }

    #[test]
    fn chat_messages_mark_every_assistant_turn() {
        let ds = jsonl(
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, \
             {\"role\": \"assistant\", \"content\": \"hello\"}, \
             {\"role\": \"user\", \"content\": \"bye\"}, \
             {\"role\": \"assistant\", \"content\": \"ciao\"}, \
             {\"role\": \"user\", \"content\": \"dropped\"}]}\n",
        );
        let format = ExampleFormat::ChatMessages {
            field: "messages".into(),
            system: Some("Be brief.".into()),
        };
        let ex = &build_examples(&ds, &format, false, Some(&chatml))
            .unwrap()
            .examples[0];
        let parts: Vec<(&str, bool)> = ex
            .segments
            .iter()
            .map(|s| (s.text.as_str(), s.trained))
            .collect();
        assert_eq!(
            parts,
            vec![
                (
                    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n\
                     <|im_start|>assistant\n",
                    false
                ),
                ("hello<|im_end|>\n", true),
                (
                    "<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n",
                    false
                ),
                ("ciao<|im_end|>\n", true),
            ]
        );
        assert_eq!(ex.completion(), "ciao<|im_end|>\n");
        assert!(ex
            .prompt()
            .ends_with("bye<|im_end|>\n<|im_start|>assistant\n"));
    }

    #[test]
    fn chat_from_template_builds_user_and_assistant_turns() {
        let ds = jsonl("{\"phrase\": \"dull\", \"tone\": \"negative\"}\n");
        let t = Template::parse("Tone of: {phrase} -> {tone}").unwrap();
        let format = ExampleFormat::chat_from_template(&t, None);
        let ex = &build_examples(&ds, &format, false, Some(&chatml))
            .unwrap()
            .examples[0];
        assert_eq!(
            ex.prompt(),
            "<|im_start|>user\nTone of: dull -><|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(ex.completion(), "negative<|im_end|>\n");
    }

    #[test]
    fn chat_rows_with_bad_messages_are_bad_rows() {
        let ds = jsonl(
            "{\"messages\": \"hi\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n\
             {\"messages\": [{\"role\": \"user\"}]}\n{\"messages\": [{\"role\": \"assistant\", \"content\": 5}]}\n",
        );
        let format = ExampleFormat::ChatMessages {
            field: "messages".into(),
            system: None,
        };
        let out = build_examples(&ds, &format, true, Some(&chatml));
        let err = out.unwrap_err().to_string();
        assert!(err.contains("4 rows"), "{err}");
        let err = build_examples(&ds, &format, false, Some(&chatml))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("d.jsonl: line 1: field 'messages' must be a list"),
            "{err}"
        );
        assert!(build_examples(&ds, &format, false, None)
            .unwrap_err()
            .to_string()
            .contains("needs the model's chat template"));
    }

    #[test]
    fn chat_template_errors_are_per_row_and_prefix_breaks_are_fatal() {
        let ds = jsonl(
            "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n",
        );
        let format = ExampleFormat::ChatMessages {
            field: "messages".into(),
            system: None,
        };
        let refuse = |_: &[Message], _: bool| -> Result<String> {
            Err(Error::Template("roles must alternate".into()))
        };
        let err = build_examples(&ds, &format, false, Some(&refuse))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "d.jsonl: line 1: chat template: chat template: roles must alternate"
        );
        // A template that renders the generation prompt differently from a finished turn.
        let odd = |m: &[Message], gen: bool| -> Result<String> {
            Ok(format!("{}{}", m.len(), if gen { "GEN" } else { "" }))
        };
        let err = build_examples(&ds, &format, true, Some(&odd))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a prefix"), "{err}");
    }
}
