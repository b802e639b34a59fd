//! attach (stub)
