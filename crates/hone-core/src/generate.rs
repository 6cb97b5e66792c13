//! The generation loop over any engine (`CausalLm`): prefill, decode, stop on eos / stop
//! strings, streamed text. (Stub: owned by the CPU forward work item.)
