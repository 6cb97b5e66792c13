//! Tiny random models written as GGUF (several quant types) and as HF folders, for tests
//! that need no download. (Stub: integration.)
