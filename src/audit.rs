//! audit (stub)
