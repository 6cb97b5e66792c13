//! Checkpoint tests.
