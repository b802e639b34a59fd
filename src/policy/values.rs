//! The values a caller hands the policy beside the request: extra context
//! values ([`ContextValue`], e.g. a forward's `host` as a Cedar `ipaddr`)
//! and the container entity's optional attributes
//! ([`ContainerAttributes`]). Plain data: it never decides.

/// An extra context value for [`super::PolicyEngine::decide_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextValue {
    /// A Cedar string.
    Str(String),
    /// A Cedar long.
    Long(i64),
    /// A Cedar `ipaddr` extension value (`ip("10.1.2.3")`), so policies
    /// can use `isInRange`, `isLoopback` (forward destinations).
    Ip(std::net::IpAddr),
}

/// The container entity's optional attributes `owner` and `purpose`
/// (schema: `owner?: String, purpose?: String`), for
/// [`super::PolicyEngine::decide_with_container`] and
/// [`super::PolicyEngine::decide_workflow_with_container`] (and their `*_as_*`
/// forms, which add the principal's issuer); the other `decide*` methods
/// leave both absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerAttributes<'a> {
    /// Who answers for the container.
    pub owner: Option<&'a str>,
    /// What it is for.
    pub purpose: Option<&'a str>,
}

impl<'a> From<&'a crate::inventory::Container> for ContainerAttributes<'a> {
    fn from(c: &'a crate::inventory::Container) -> ContainerAttributes<'a> {
        ContainerAttributes {
            owner: c.owner.as_deref(),
            purpose: c.purpose.as_deref(),
        }
    }
}
