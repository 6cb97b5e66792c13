//! (Stub: owned by a work item in progress.)
