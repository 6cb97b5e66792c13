//! Chat templates (Jinja, rendered with minijinja as transformers' apply_chat_template does).
//! (Stub: owned by the tokenizer work item.)
