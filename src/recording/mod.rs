//! recording (stub)
