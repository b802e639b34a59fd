//! The per-source limits of one SSH listener ([`crate::throttle`], review
//! finding M4) as the front door holds them: the source table the accept
//! loop admits connections through, and the device-authorization budget
//! the keyboard-interactive login spends. Built once per [`super::serve`];
//! it only counts, and never closes a socket or writes an audit event
//! itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::OwnedSemaphorePermit;

use crate::config::AuthConfig;
use crate::throttle::{DeviceAuthorizationBudget, SourceLimits, SourcePermit};

/// The limits shared by every connection of one listener.
#[derive(Debug, Clone)]
pub(super) struct FrontDoorLimits {
    /// Unauthenticated connections and penalties per source
    /// (`auth.max_unauthenticated_per_source`, `auth.penalty_*`).
    pub sources: SourceLimits,
    /// Device authorizations per connection and per source
    /// (`auth.device_authorizations_*`).
    pub devices: Arc<DeviceAuthorizationBudget>,
}

impl FrontDoorLimits {
    /// The limits of `[auth]`.
    pub(super) fn new(config: &AuthConfig) -> FrontDoorLimits {
        FrontDoorLimits {
            sources: SourceLimits::new(config),
            devices: Arc::new(DeviceAuthorizationBudget::new(config)),
        }
    }
}

/// What counts a connection as not yet authenticated: a slot of
/// `auth.max_unauthenticated` and one of its source's
/// `auth.max_unauthenticated_per_source`. Dropped at authentication or
/// when the connection ends.
#[derive(Debug)]
pub(super) struct Unauthenticated {
    /// The listener-wide slot.
    pub _slot: OwnedSemaphorePermit,
    /// The source's slot.
    pub _source: SourcePermit,
    /// Set by the first authentication request of any method (`none`
    /// included), shared with the accept loop's task.
    pub attempted: Attempted,
}

/// Whether a connection sent any authentication request (RFC 4252 §5):
/// one that ends without has its source penalised `auth.penalty_noauth`
/// (OpenSSH `PerSourcePenalties noauth`).
#[derive(Debug, Clone, Default)]
pub(super) struct Attempted(Arc<AtomicBool>);

impl Attempted {
    /// Records an authentication request.
    pub(super) fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// True once any authentication request came.
    pub(super) fn happened(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
