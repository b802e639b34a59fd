//! Access decisions with Cedar (<https://docs.cedarpolicy.com/>).
//!
//! Policies are the `*.cedar` files of the policy directory, validated
//! against `portcullis.cedarschema` in the same directory when it loads.
//! Each policy is named by its `@id("...")` annotation (else
//! `FILE.cedar#N`), and decisions cite those names.
//!
//! Entities: `User::"<subject>"` in `Group::"<name>"` for each group of the
//! principal, with the optional attribute `issuer` (who vouched: the OIDC
//! issuer URL or `ssh-ca:SHA256:...`; present when the caller uses
//! [`PolicyEngine::decide_as`] and the other `*_as*` methods);
//! `Container::"<name>"` with attribute `name`, the optional
//! attributes `owner` and `purpose` (given through
//! [`ContainerAttributes`]; absent otherwise), and one string tag per
//! label. Actions: `Action::"shell"`, `Action::"exec"` with context
//! `login` (string), `command` (string, `""` for a shell) and `grant` (the
//! principal's active grant for that login: `active`, `id`, `approver`,
//! `expires_at` in unix seconds); `Action::"request"`, `"approve"`,
//! `"activate"`, `"revoke"`, `"review"` (the access-request workflow) with
//! context `requester` (a `User`), `login`, `duration_seconds`, `reason`,
//! `break_glass` and `approvals` (long: approvals recorded so far;
//! `activate` is asked after each approval, counting it, and the request
//! becomes a grant only when it is permitted); `Action::"sftp"` (context as exec plus `access`,
//! `"read"`/`"write"`), `"port_forward"` (plus `host`, an `ipaddr`, and
//! `port`, long) and `"agent_forward"` (issue 5); `Action::"start"`,
//! `"stop"`, `"restart"`, `"snapshot"`, `"restore"` and `"inspect"` on a
//! container (issue 18, context in [`lifecycle`]); a workflow question about
//! a request for one of those carries its `action`.
//!
//! Deciding is pure: no I/O, everything comes in the request.

pub mod addr;
mod values;

pub use values::{ContainerAttributes, ContextValue};

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, RestrictedExpression,
};

/// The schema file's name inside the policy directory.
pub const SCHEMA_FILE: &str = "portcullis.cedarschema";

/// What the principal wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// An interactive login shell.
    Shell,
    /// A single command (`ssh target CMD`).
    Exec,
    /// Ask for a time-boxed grant (`ssh portcullis@gw request ...`).
    Request,
    /// Approve or deny someone's access request.
    Approve,
    /// Turn an approved access request into a grant: asked after each
    /// approval, with context `approvals` counting it; the request stays
    /// pending until this is permitted (e.g. "prod needs two approvals").
    Activate,
    /// End a grant before its expiry.
    Revoke,
    /// Mark a break-glass grant reviewed.
    Review,
    /// File transfer over the SFTP subsystem (`sftp`, `scp`); context
    /// `access` is `"read"` or `"write"`.
    Sftp,
    /// A forwarded TCP connection (`ssh -L`) opened from inside the
    /// container; context `host` (string) and `port` (long).
    PortForward,
    /// SSH agent forwarding (`ssh -A`).
    AgentForward,
    /// Follow a live session read-only (`sessions watch ID`); context
    /// `session_id` and `owner` (the session's principal).
    Watch,
    /// End a live session (`sessions kill ID`); context as [`Action::Watch`].
    Kill,
    /// See a session in the web console's lists and its page (metadata,
    /// commands, transfers, audit events); context as [`Action::Watch`].
    ViewSessions,
    /// Play or download a session's recording in the web console; context
    /// as [`Action::Watch`].
    ViewRecording,
    /// Read the audit log and its verification in the web console
    /// (resource `Console::"console"`, see [`PolicyEngine::decide_console`]).
    ViewAudit,
    /// Read access requests and grants in the web console (resource
    /// `Console::"console"`).
    ViewRequests,
    /// Read the container inventory in the web console (resource
    /// `Console::"console"`).
    ViewContainers,
    /// See someone else's access request or grant in `requests`,
    /// `request show` and `grants` (issue 14); workflow context. One's own
    /// are always shown; see [`visibility`].
    View,
    /// Add, list or remove locks (`ssh portcullis@gw locks ...`, issue
    /// 12); resource `Console::"console"`, empty context.
    Lock,
    /// Start a stopped container (`containers start`, issue 18); the
    /// lifecycle context of [`lifecycle::LifecycleRequest`].
    Start,
    /// Stop a container (`containers stop`); lifecycle context.
    Stop,
    /// Stop and start a container (`containers restart`); lifecycle context.
    Restart,
    /// Take a snapshot of a container (`containers snapshot`).
    Snapshot,
    /// Put a container back to one of its snapshots (`containers restore`).
    Restore,
    /// See a container in the broker's `containers list` and its
    /// snapshots (`containers snapshots`); lifecycle context.
    Inspect,
}

impl Action {
    /// The Cedar action id (`shell`, `exec`, `request`, `approve`,
    /// `activate`, `revoke`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Shell => "shell",
            Action::Exec => "exec",
            Action::Request => "request",
            Action::Approve => "approve",
            Action::Activate => "activate",
            Action::Revoke => "revoke",
            Action::Review => "review",
            Action::Sftp => "sftp",
            Action::PortForward => "port_forward",
            Action::AgentForward => "agent_forward",
            Action::Watch => "watch",
            Action::Kill => "kill",
            Action::ViewSessions => "view_sessions",
            Action::ViewRecording => "view_recording",
            Action::ViewAudit => "view_audit",
            Action::ViewRequests => "view_requests",
            Action::ViewContainers => "view_containers",
            Action::View => "view",
            Action::Lock => "lock",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Snapshot => "snapshot",
            Action::Restore => "restore",
            Action::Inspect => "inspect",
        }
    }
}

impl FromStr for Action {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Action, PolicyError> {
        match s {
            "shell" => Ok(Action::Shell),
            "exec" => Ok(Action::Exec),
            "request" => Ok(Action::Request),
            "approve" => Ok(Action::Approve),
            "activate" => Ok(Action::Activate),
            "revoke" => Ok(Action::Revoke),
            "review" => Ok(Action::Review),
            "sftp" => Ok(Action::Sftp),
            "port_forward" => Ok(Action::PortForward),
            "agent_forward" => Ok(Action::AgentForward),
            "watch" => Ok(Action::Watch),
            "kill" => Ok(Action::Kill),
            "view_sessions" => Ok(Action::ViewSessions),
            "view_recording" => Ok(Action::ViewRecording),
            "view_audit" => Ok(Action::ViewAudit),
            "view_requests" => Ok(Action::ViewRequests),
            "view_containers" => Ok(Action::ViewContainers),
            "view" => Ok(Action::View),
            "lock" => Ok(Action::Lock),
            "start" => Ok(Action::Start),
            "stop" => Ok(Action::Stop),
            "restart" => Ok(Action::Restart),
            "snapshot" => Ok(Action::Snapshot),
            "restore" => Ok(Action::Restore),
            "inspect" => Ok(Action::Inspect),
            other => Err(PolicyError::UnknownAction(other.to_string())),
        }
    }
}

/// An active grant of the principal for the asked-for `login@container`,
/// as `context.grant` of shell and exec decisions (`active` is false and
/// the strings empty when there is none).
#[derive(Debug, Clone, Copy)]
pub struct GrantContext<'a> {
    /// Grant id.
    pub id: &'a str,
    /// Who approved it.
    pub approver: &'a str,
    /// Its end, unix seconds.
    pub expires_at: i64,
}

/// A question about the access-request workflow: `request`, `approve`,
/// `activate`, `revoke` or `review` of a grant for `login@container`. The
/// request's attributes are the context: `requester` (a `User`), `login`,
/// `duration_seconds`, `reason`, `break_glass`, `approvals`.
#[derive(Debug, Clone)]
pub struct WorkflowRequest<'a> {
    /// Who acts (principal subject).
    pub principal: &'a str,
    /// Their groups.
    pub groups: &'a [String],
    /// [`Action::Request`], [`Action::Approve`], [`Action::Activate`],
    /// [`Action::Revoke`] or [`Action::Review`].
    pub action: Action,
    /// The container of the request.
    pub container: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Who asked for the grant.
    pub requester: &'a str,
    /// Login inside the container.
    pub login: &'a str,
    /// Length of the grant, seconds.
    pub duration_seconds: i64,
    /// The reason given.
    pub reason: &'a str,
    /// True for a break-glass request (the requester is in the configured
    /// break-glass group and grants it to themselves).
    pub break_glass: bool,
    /// Distinct approvals recorded so far: 0 for `request`; for `approve`
    /// those before this one; for `activate` those including the one just
    /// recorded.
    pub approvals: i64,
}

/// One question for the policy.
#[derive(Debug, Clone)]
pub struct AccessRequest<'a> {
    /// Principal subject.
    pub principal: &'a str,
    /// Principal's groups.
    pub groups: &'a [String],
    /// Target container name.
    pub container: &'a str,
    /// Target container labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Login inside the container.
    pub login: &'a str,
    /// Action.
    pub action: Action,
    /// Command for exec, `None` for a shell.
    pub command: Option<&'a str>,
    /// The principal's active grant for this login and container, if any.
    pub grant: Option<GrantContext<'a>>,
}

/// The container entity of one decision.
struct Resource<'a> {
    name: &'a str,
    labels: &'a BTreeMap<String, String>,
    attributes: ContainerAttributes<'a>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// True only when a `permit` applied and no `forbid` did.
    pub allowed: bool,
    /// Names of the policies that decided (empty on default deny).
    pub policies: Vec<String>,
    /// Evaluation errors; any error means deny of that policy.
    pub errors: Vec<String>,
}

/// A failed policy step.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The directory or a file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The schema is not valid Cedar schema.
    #[error("policy schema {path}: {message}")]
    Schema {
        /// The schema path.
        path: PathBuf,
        /// Cedar's message.
        message: String,
    },
    /// A policy file does not parse.
    #[error("policy file {path}: {message}")]
    Parse {
        /// The policy file.
        path: PathBuf,
        /// Cedar's message.
        message: String,
    },
    /// Policies do not validate against the schema.
    #[error("policies do not match the schema: {0}")]
    Invalid(String),
    /// No `*.cedar` file in the directory.
    #[error("no *.cedar policy in {0}")]
    Empty(PathBuf),
    /// An action name the policy does not know.
    #[error(
        "unknown action {0:?} (known: shell, exec, request, approve, activate, revoke, review, sftp, port_forward, agent_forward, watch, kill, view_sessions, view_recording, view_audit, view_requests, view_containers, view, lock, start, stop, restart, snapshot, restore, inspect)"
    )]
    UnknownAction(String),
    /// Entities or the request could not be built (bad name or label).
    #[error("cannot build the policy request: {0}")]
    Request(String),
}

/// Loaded, validated policies. Clones share them: a
/// [`PolicyEngine::reload`] reaches every clone.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    current: Arc<RwLock<Arc<set::Loaded>>>,
}

impl PolicyEngine {
    /// Loads every `*.cedar` file in `dir` (sorted by name) and the schema,
    /// and validates the policies strictly.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file and Cedar's message.
    pub fn load(dir: &Path) -> Result<PolicyEngine, PolicyError> {
        let loaded = set::load(dir)?;
        Ok(PolicyEngine {
            current: Arc::new(RwLock::new(Arc::new(loaded))),
        })
    }

    /// Loads `dir` again and, when it loads and validates, decides with it
    /// from the next decision on, for every clone of this engine (issue 12:
    /// `SIGHUP`, `portcullis policy reload`). Fails closed: a set that does
    /// not load or validate leaves the current one in place.
    ///
    /// # Errors
    /// As [`PolicyEngine::load`]; nothing changed then.
    pub fn reload(&self, dir: &Path) -> Result<(), PolicyError> {
        let loaded = Arc::new(set::load(dir)?);
        match self.current.write() {
            Ok(mut current) => *current = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        Ok(())
    }

    /// The policies and schema decisions use now.
    fn loaded(&self) -> Arc<set::Loaded> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Decides `request`. Anything that cannot be evaluated is a deny.
    ///
    /// # Errors
    /// [`PolicyError::Request`] when an entity or the context cannot be
    /// built (the caller must treat it as a deny).
    pub fn decide(&self, request: &AccessRequest<'_>) -> Result<Decision, PolicyError> {
        self.decide_with(request, &[])
    }

    /// [`PolicyEngine::decide`] with extra context entries (the schema of
    /// the action must declare them: `access` for `sftp`, `host` and
    /// `port` for `port_forward`).
    ///
    /// # Errors
    /// As [`PolicyEngine::decide`].
    pub fn decide_with(
        &self,
        request: &AccessRequest<'_>,
        extra: &[(&str, ContextValue)],
    ) -> Result<Decision, PolicyError> {
        self.decide_with_container(request, ContainerAttributes::default(), extra)
    }

    /// [`PolicyEngine::decide_with`] with the container's `owner` and
    /// `purpose` as entity attributes (e.g.
    /// `ContainerAttributes::from(&container)`).
    ///
    /// # Errors
    /// As [`PolicyEngine::decide`].
    pub fn decide_with_container(
        &self,
        request: &AccessRequest<'_>,
        attributes: ContainerAttributes<'_>,
        extra: &[(&str, ContextValue)],
    ) -> Result<Decision, PolicyError> {
        self.decide_for(None, request, attributes, extra)
    }

    /// [`PolicyEngine::decide_with`] with the principal's `issuer` as the
    /// `User` entity's `issuer` attribute (review finding M1), so a policy
    /// can tell sources apart: `principal has issuer && principal.issuer
    /// == "https://idp.example.com"`.
    ///
    /// # Errors
    /// As [`PolicyEngine::decide`].
    pub fn decide_as(
        &self,
        issuer: &str,
        request: &AccessRequest<'_>,
        extra: &[(&str, ContextValue)],
    ) -> Result<Decision, PolicyError> {
        self.decide_for(Some(issuer), request, ContainerAttributes::default(), extra)
    }

    /// [`PolicyEngine::decide_with_container`] with the principal's
    /// `issuer` (see [`PolicyEngine::decide_as`]): what the session core
    /// calls for every shell, exec, sftp and forward decision.
    ///
    /// # Errors
    /// As [`PolicyEngine::decide`].
    pub fn decide_as_with_container(
        &self,
        issuer: &str,
        request: &AccessRequest<'_>,
        attributes: ContainerAttributes<'_>,
        extra: &[(&str, ContextValue)],
    ) -> Result<Decision, PolicyError> {
        self.decide_for(Some(issuer), request, attributes, extra)
    }

    fn decide_for(
        &self,
        issuer: Option<&str>,
        request: &AccessRequest<'_>,
        attributes: ContainerAttributes<'_>,
        extra: &[(&str, ContextValue)],
    ) -> Result<Decision, PolicyError> {
        let grant = request.grant.unwrap_or(GrantContext {
            id: "",
            approver: "",
            expires_at: 0,
        });
        let grant = RestrictedExpression::new_record([
            (
                "active".to_string(),
                RestrictedExpression::new_bool(request.grant.is_some()),
            ),
            (
                "id".to_string(),
                RestrictedExpression::new_string(grant.id.to_string()),
            ),
            (
                "approver".to_string(),
                RestrictedExpression::new_string(grant.approver.to_string()),
            ),
            (
                "expires_at".to_string(),
                RestrictedExpression::new_long(grant.expires_at),
            ),
        ])
        .map_err(|e| PolicyError::Request(one_line(&e)))?;
        let context = [
            (
                "login".to_string(),
                RestrictedExpression::new_string(request.login.to_string()),
            ),
            (
                "command".to_string(),
                RestrictedExpression::new_string(request.command.unwrap_or("").to_string()),
            ),
            ("grant".to_string(), grant),
        ];
        let extra = extra.iter().map(|(k, v)| {
            let value = match v {
                ContextValue::Str(s) => RestrictedExpression::new_string(s.clone()),
                ContextValue::Long(n) => RestrictedExpression::new_long(*n),
                ContextValue::Ip(ip) => RestrictedExpression::new_ip(ip.to_string()),
            };
            ((*k).to_string(), value)
        });
        self.evaluate(
            (request.principal, issuer),
            request.groups,
            Resource {
                name: request.container,
                labels: request.labels,
                attributes,
            },
            request.action,
            context.into_iter().chain(extra),
        )
    }

    /// Decides a workflow step (request, approve, activate, revoke,
    /// review). Anything that
    /// cannot be evaluated is a deny.
    ///
    /// # Errors
    /// [`PolicyError::Request`] when an entity or the context cannot be
    /// built (the caller must treat it as a deny).
    pub fn decide_workflow(&self, request: &WorkflowRequest<'_>) -> Result<Decision, PolicyError> {
        self.decide_workflow_with_container(request, ContainerAttributes::default())
    }

    /// [`PolicyEngine::decide_workflow`] with the container's `owner` and
    /// `purpose` as entity attributes.
    ///
    /// # Errors
    /// As [`PolicyEngine::decide_workflow`].
    pub fn decide_workflow_with_container(
        &self,
        request: &WorkflowRequest<'_>,
        attributes: ContainerAttributes<'_>,
    ) -> Result<Decision, PolicyError> {
        self.decide_workflow_for(None, request, attributes, None)
    }

    /// [`PolicyEngine::decide_workflow`] with the principal's `issuer` on
    /// the `User` entity (see [`PolicyEngine::decide_as`]).
    ///
    /// # Errors
    /// As [`PolicyEngine::decide_workflow`].
    pub fn decide_workflow_as(
        &self,
        issuer: &str,
        request: &WorkflowRequest<'_>,
    ) -> Result<Decision, PolicyError> {
        self.decide_workflow_for(Some(issuer), request, ContainerAttributes::default(), None)
    }

    /// [`PolicyEngine::decide_workflow_with_container`] with the
    /// principal's `issuer` (see [`PolicyEngine::decide_as`]).
    ///
    /// # Errors
    /// As [`PolicyEngine::decide_workflow`].
    pub fn decide_workflow_as_with_container(
        &self,
        issuer: &str,
        request: &WorkflowRequest<'_>,
        attributes: ContainerAttributes<'_>,
    ) -> Result<Decision, PolicyError> {
        self.decide_workflow_for(Some(issuer), request, attributes, None)
    }

    fn decide_workflow_for(
        &self,
        issuer: Option<&str>,
        request: &WorkflowRequest<'_>,
        attributes: ContainerAttributes<'_>,
        action: Option<&str>,
    ) -> Result<Decision, PolicyError> {
        let asked = action.map(|a| {
            (
                "action".to_string(),
                RestrictedExpression::new_string(a.to_string()),
            )
        });
        let context = [
            (
                "requester".to_string(),
                RestrictedExpression::new_entity_uid(uid("User", request.requester)?),
            ),
            (
                "login".to_string(),
                RestrictedExpression::new_string(request.login.to_string()),
            ),
            (
                "duration_seconds".to_string(),
                RestrictedExpression::new_long(request.duration_seconds),
            ),
            (
                "reason".to_string(),
                RestrictedExpression::new_string(request.reason.to_string()),
            ),
            (
                "break_glass".to_string(),
                RestrictedExpression::new_bool(request.break_glass),
            ),
            (
                "approvals".to_string(),
                RestrictedExpression::new_long(request.approvals),
            ),
        ];
        self.evaluate(
            (request.principal, issuer),
            request.groups,
            Resource {
                name: request.container,
                labels: request.labels,
                attributes,
            },
            request.action,
            context.into_iter().chain(asked),
        )
    }

    fn evaluate(
        &self,
        (principal, issuer): (&str, Option<&str>),
        principal_groups: &[String],
        resource: Resource<'_>,
        action: Action,
        context: impl IntoIterator<Item = (String, RestrictedExpression)>,
    ) -> Result<Decision, PolicyError> {
        let Resource {
            name: container_name,
            labels,
            attributes,
        } = resource;
        let user = uid("User", principal)?;
        let container = uid("Container", container_name)?;
        let action = uid("Action", action.as_str())?;
        let mut groups = HashSet::new();
        let mut entities = Vec::new();
        for g in principal_groups {
            let group = uid("Group", g)?;
            entities.push(Entity::new_no_attrs(group.clone(), HashSet::new()));
            groups.insert(group);
        }
        let user_attrs = issuer.map(|i| {
            (
                "issuer".to_string(),
                RestrictedExpression::new_string(i.to_string()),
            )
        });
        entities.push(
            Entity::new(user.clone(), user_attrs.into_iter().collect(), groups)
                .map_err(|e| PolicyError::Request(one_line(&e)))?,
        );
        let tags = labels
            .iter()
            .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())));
        let attrs = [
            ("name", Some(container_name)),
            ("owner", attributes.owner),
            ("purpose", attributes.purpose),
        ]
        .into_iter()
        .filter_map(|(k, v)| {
            v.map(|v| {
                (
                    k.to_string(),
                    RestrictedExpression::new_string(v.to_string()),
                )
            })
        });
        entities.push(
            Entity::new_with_tags(container.clone(), attrs, [], tags)
                .map_err(|e| PolicyError::Request(one_line(&e)))?,
        );
        let loaded = self.loaded();
        let entities = Entities::from_entities(entities, Some(&loaded.schema))
            .map_err(|e| PolicyError::Request(one_line(&e)))?;
        let context =
            Context::from_pairs(context).map_err(|e| PolicyError::Request(one_line(&e)))?;
        let cedar_request =
            cedar_policy::Request::new(user, action, container, context, Some(&loaded.schema))
                .map_err(|e| PolicyError::Request(one_line(&e)))?;
        let response = Authorizer::new().is_authorized(&cedar_request, &loaded.policies, &entities);
        let diagnostics = response.diagnostics();
        Ok(Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policies: diagnostics.reason().map(ToString::to_string).collect(),
            errors: diagnostics.errors().map(|e| one_line(e)).collect(),
        })
    }
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let kind = EntityTypeName::from_str(kind).map_err(|e| PolicyError::Request(one_line(&e)))?;
    let id = EntityId::from_str(id).map_err(|e| PolicyError::Request(one_line(&e)))?;
    Ok(EntityUid::from_type_name_and_id(kind, id))
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

mod console;
pub mod lifecycle;
mod set;
pub mod visibility;

#[cfg(test)]
mod tests;
