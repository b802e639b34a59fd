//! identity (stub)
