//! Hugging Face model folders: config.json, (sharded) safetensors, tokenizer files,
//! generation_config.json. (Stub: owned by the HF-folder work item.)
