//! ssh (stub)
