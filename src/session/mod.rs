//! The life of one session, for every front end: ssh today (shell, exec,
//! sftp, scp, forwards), `portcullis attach` on the host, and tomorrow the
//! web console and the fleet relay. Front ends authenticate, build a
//! [`Caller`] and hand over byte I/O ([`io`]); everything from the
//! decision to the closed record happens here, and nowhere else writes a
//! session row, a session audit event or a recording.
//!
//! Read it top to bottom, in the order a session lives:
//!
//! 1. [`caller`]: who asks, from where, for which [`Destination`] (the
//!    SSH user name, parsed once when the caller authenticated).
//! 2. [`access`]: target → container → audited policy decision (with and
//!    without the caller's grant) → pinned init; or a [`Refusal`]
//!    ([`refusal`]), audited before it is sent.
//! 3. [`record`]: the recording, then the row and its `session_start`
//!    event in one transaction (or nothing); the recorder is reached only
//!    there.
//! 4. [`shell`], [`transfer`], [`forward`]: each kind of session from its
//!    start to its end: the process started by [`crate::attach`],
//!    registered [`live`], its bytes pumped (`pump`), then ended.
//! 5. [`io`]: the byte I/O the front end gives (input queues that credit
//!    the client's window as the process consumes, the [`io::Output`]
//!    trait).
//! 6. [`live`] and [`end`]: the sessions this gateway serves now, ended by
//!    id or by predicate, always with one typed [`EndReason`] that is
//!    audited and shown to the user; [`signal`] names exit signals.
//! 7. [`record`] again: the end, row and `session_end` event in one
//!    transaction.
//!
//! On a fleet edge, shells, commands and transfers (`remote.rs`) and
//! forwards (`remote_forward.rs`) take another path: the container's node
//! is found, the edge decides, the session is relayed to the node
//! ([`crate::fleet::edge_relay`]), and the node's own session core runs
//! steps 2 to 7 again under the same session id.
//!
//! It never speaks SSH and never imports a front end.

pub mod access;
pub mod caller;
pub mod end;
pub mod forward;
pub mod io;
pub mod live;
pub mod lock;
mod pump;
pub mod record;
pub mod refusal;
mod remote;
mod remote_forward;
pub mod shell;
pub mod signal;
pub mod target;
pub mod transfer;

pub use access::{Access, Ask};
pub use caller::{Caller, Destination};
pub use end::EndReason;
pub use live::{Ending, LiveSession, LiveSessions};
pub use refusal::Refusal;
pub use target::{Target, TargetError};
