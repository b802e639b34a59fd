//! The fleet (issue 16): edges where users connect, nodes on container
//! hosts, and what joins them. `docs/fleet.md` is the design.
//!
//! Owns: the edge CA and the certificates it signs ([`ca`]), joining and
//! leaving ([`join`]), the node → edge SSH tunnel ([`tunnel`]), the edge's
//! relay client to a node and its second witness of each session
//! ([`relay`]) and what the session core holds to use it ([`edge_relay`]),
//! where a container runs ([`locate`]), the node's inventory
//! push ([`heartbeat`]), the fan-out of kills, locks and revocations
//! through PostgreSQL LISTEN/NOTIFY ([`fanout`]) and the start of each role
//! ([`roles`]).
//!
//! It must never decide policy or attach to a container itself: the edge
//! relays what the session core decided, and the node's session core decides
//! again. It never trusts a CA read from the database.

pub mod ca;
pub mod edge_relay;
pub mod fanout;
pub mod heartbeat;
pub mod join;
pub mod locate;
pub mod relay;
pub mod roles;
pub mod tunnel;

pub use ca::{
    CaError, EdgeCa, MintedCertificate, NodeTrust, RelayAction, RelayGrant, RelayedIdentity,
    verify_host_certificate,
};

/// Which part a `portcullis serve` process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The all-in-one gateway on one host (default; unchanged by the fleet).
    All,
    /// A container host in a fleet: attach, recording; dials every edge.
    Node,
    /// An entry point of a fleet: authentication, policy, relay.
    Edge,
}

impl Role {
    /// `all`, `node` or `edge`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Node => "node",
            Role::Edge => "edge",
        }
    }
}
