//! hone-cpu: the CPU engine. (Stub: owned by the CPU forward work item.)
