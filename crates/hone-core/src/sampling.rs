//! Token sampling: greedy, temperature, top-k, top-p, repetition penalty, seeded RNG.
//! (Stub: owned by the CPU forward work item.)
