//! The life of one session, for every front end (ssh, `portcullis
//! attach`, later the web console and the fleet relay).
//!
//! - [`live`]: the sessions this gateway serves now, and ending them;
//! - [`end`]: why a session ends ([`EndReason`]).

pub mod end;
pub mod live;

pub use end::EndReason;
pub use live::{Ending, LiveSession, LiveSessions};
