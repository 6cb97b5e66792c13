//! safetensors read (memory-mapped, validated header) and write.
//! (Stub: owned by the HF-folder work item.)
