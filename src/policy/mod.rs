//! Access decisions with Cedar (<https://docs.cedarpolicy.com/>).
//!
//! Policies are the `*.cedar` files of the policy directory, validated
//! against `portcullis.cedarschema` in the same directory when it loads.
//! Each policy is named by its `@id("...")` annotation (else
//! `FILE.cedar#N`), and decisions cite those names.
//!
//! Entities: `User::"<subject>"` in `Group::"<name>"` for each group of the
//! principal; `Container::"<name>"` with attribute `name` and one string tag
//! per label. Actions: `Action::"shell"`, `Action::"exec"`,
//! `Action::"sftp"`, `Action::"port_forward"`, `Action::"agent_forward"`.
//! Context: `login` (string) and `command` (string, `""` for a shell); for
//! `sftp` also `access` (`"read"`/`"write"`), for `port_forward` `host`
//! (string) and `port` (long).
//!
//! Deciding is pure: no I/O, everything comes in the request.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, RestrictedExpression, Schema, ValidationMode, Validator,
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
    /// File transfer over the SFTP subsystem (`sftp`, `scp`); context
    /// `access` is `"read"` or `"write"`.
    Sftp,
    /// A forwarded TCP connection (`ssh -L`) opened from inside the
    /// container; context `host` (string) and `port` (long).
    PortForward,
    /// SSH agent forwarding (`ssh -A`).
    AgentForward,
}

/// An extra context value for [`PolicyEngine::decide_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextValue {
    /// A Cedar string.
    Str(String),
    /// A Cedar long.
    Long(i64),
}

impl Action {
    /// The Cedar action id (`shell`, `exec`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Shell => "shell",
            Action::Exec => "exec",
            Action::Sftp => "sftp",
            Action::PortForward => "port_forward",
            Action::AgentForward => "agent_forward",
        }
    }
}

impl FromStr for Action {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Action, PolicyError> {
        match s {
            "shell" => Ok(Action::Shell),
            "exec" => Ok(Action::Exec),
            "sftp" => Ok(Action::Sftp),
            "port_forward" => Ok(Action::PortForward),
            "agent_forward" => Ok(Action::AgentForward),
            other => Err(PolicyError::UnknownAction(other.to_string())),
        }
    }
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
    #[error("unknown action {0:?} (known: shell, exec, sftp, port_forward, agent_forward)")]
    UnknownAction(String),
    /// Entities or the request could not be built (bad name or label).
    #[error("cannot build the policy request: {0}")]
    Request(String),
}

/// Loaded, validated policies; immutable once loaded.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    policies: PolicySet,
    schema: Schema,
}

impl PolicyEngine {
    /// Loads every `*.cedar` file in `dir` (sorted by name) and the schema,
    /// and validates the policies strictly.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file and Cedar's message.
    pub fn load(dir: &Path) -> Result<PolicyEngine, PolicyError> {
        let schema_path = dir.join(SCHEMA_FILE);
        let schema_text = read(&schema_path)?;
        let (schema, _warnings) =
            Schema::from_cedarschema_str(&schema_text).map_err(|e| PolicyError::Schema {
                path: schema_path.clone(),
                message: one_line(&e),
            })?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| PolicyError::Read {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "cedar"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(PolicyError::Empty(dir.to_path_buf()));
        }
        let mut sources = Vec::new();
        for path in files {
            sources.push((path.clone(), read(&path)?));
        }
        let policies = build_policy_set(&sources)?;
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            let messages: Vec<String> = result.validation_errors().map(|e| one_line(e)).collect();
            return Err(PolicyError::Invalid(messages.join("; ")));
        }
        Ok(PolicyEngine { policies, schema })
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
        let user = uid("User", request.principal)?;
        let container = uid("Container", request.container)?;
        let action = uid("Action", request.action.as_str())?;
        let mut groups = HashSet::new();
        let mut entities = Vec::new();
        for g in request.groups {
            let group = uid("Group", g)?;
            entities.push(Entity::new_no_attrs(group.clone(), HashSet::new()));
            groups.insert(group);
        }
        entities.push(Entity::new_no_attrs(user.clone(), groups));
        let tags = request
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())));
        entities.push(
            Entity::new_with_tags(
                container.clone(),
                [(
                    "name".to_string(),
                    RestrictedExpression::new_string(request.container.to_string()),
                )],
                [],
                tags,
            )
            .map_err(|e| PolicyError::Request(one_line(&e)))?,
        );
        let entities = Entities::from_entities(entities, Some(&self.schema))
            .map_err(|e| PolicyError::Request(one_line(&e)))?;
        let mut pairs = vec![
            (
                "login".to_string(),
                RestrictedExpression::new_string(request.login.to_string()),
            ),
            (
                "command".to_string(),
                RestrictedExpression::new_string(request.command.unwrap_or("").to_string()),
            ),
        ];
        for (k, v) in extra {
            let value = match v {
                ContextValue::Str(s) => RestrictedExpression::new_string(s.clone()),
                ContextValue::Long(n) => RestrictedExpression::new_long(*n),
            };
            pairs.push(((*k).to_string(), value));
        }
        let context = Context::from_pairs(pairs).map_err(|e| PolicyError::Request(one_line(&e)))?;
        let cedar_request =
            cedar_policy::Request::new(user, action, container, context, Some(&self.schema))
                .map_err(|e| PolicyError::Request(one_line(&e)))?;
        let response = Authorizer::new().is_authorized(&cedar_request, &self.policies, &entities);
        let diagnostics = response.diagnostics();
        Ok(Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policies: diagnostics.reason().map(ToString::to_string).collect(),
            errors: diagnostics.errors().map(|e| one_line(e)).collect(),
        })
    }
}

fn build_policy_set(sources: &[(PathBuf, String)]) -> Result<PolicySet, PolicyError> {
    let mut set = PolicySet::new();
    for (path, text) in sources {
        let parsed = PolicySet::from_str(text).map_err(|e| PolicyError::Parse {
            path: path.clone(),
            message: one_line(&e),
        })?;
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut policies: Vec<_> = parsed.policies().collect();
        // from_str numbers policies policy0, policy1, ... in file order.
        policies.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        for (index, policy) in policies.into_iter().enumerate() {
            let name = policy
                .annotation("id")
                .map(str::to_string)
                .unwrap_or_else(|| format!("{file}#{index}"));
            set.add(policy.new_id(PolicyId::new(name.clone())))
                .map_err(|e| PolicyError::Parse {
                    path: path.clone(),
                    message: format!("policy {name}: {}", one_line(&e)),
                })?;
        }
    }
    Ok(set)
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let kind = EntityTypeName::from_str(kind).map_err(|e| PolicyError::Request(one_line(&e)))?;
    let id = EntityId::from_str(id).map_err(|e| PolicyError::Request(one_line(&e)))?;
    Ok(EntityUid::from_type_name_and_id(kind, id))
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn shipped() -> PolicyEngine {
        PolicyEngine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap()
    }

    fn ask(groups: &[&str], env: &str, login: &str, action: Action) -> Decision {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let labels = BTreeMap::from([("env".to_string(), env.to_string())]);
        shipped()
            .decide(&AccessRequest {
                principal: "alice",
                groups: &groups,
                container: "web1",
                labels: &labels,
                login,
                action,
                command: None,
            })
            .unwrap()
    }

    #[test]
    fn developers_get_non_root_shells_on_dev() {
        let d = ask(&["developers"], "dev", "app", Action::Shell);
        assert!(d.allowed);
        assert_eq!(d.policies, ["developers-dev-non-root"]);
        assert!(!ask(&["developers"], "dev", "root", Action::Shell).allowed);
        assert!(!ask(&["developers"], "prod", "app", Action::Shell).allowed);
        assert!(ask(&["developers"], "dev", "app", Action::Exec).allowed);
    }

    fn ask_with(
        groups: &[&str],
        login: &str,
        action: Action,
        extra: &[(&str, ContextValue)],
    ) -> Decision {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let labels = BTreeMap::from([("env".to_string(), "dev".to_string())]);
        shipped()
            .decide_with(
                &AccessRequest {
                    principal: "alice",
                    groups: &groups,
                    container: "web1",
                    labels: &labels,
                    login,
                    action,
                    command: None,
                },
                extra,
            )
            .unwrap()
    }

    #[test]
    fn developers_may_sftp_on_dev_but_not_forward() {
        for access in ["read", "write"] {
            let extra = [("access", ContextValue::Str(access.into()))];
            let d = ask_with(&["developers"], "app", Action::Sftp, &extra);
            assert!(d.allowed, "{access}: {d:?}");
            assert_eq!(d.policies, ["developers-dev-sftp"]);
            assert!(!ask_with(&["developers"], "root", Action::Sftp, &extra).allowed);
            assert!(!ask_with(&[], "app", Action::Sftp, &extra).allowed);
        }
        let fwd = [
            ("host", ContextValue::Str("127.0.0.1".into())),
            ("port", ContextValue::Long(5432)),
        ];
        let d = ask_with(&["developers"], "app", Action::PortForward, &fwd);
        assert!(!d.allowed && d.errors.is_empty(), "{d:?}");
        assert!(ask_with(&["admins"], "app", Action::PortForward, &fwd).allowed);
        let d = ask_with(&["developers"], "app", Action::AgentForward, &[]);
        assert!(!d.allowed && d.errors.is_empty(), "{d:?}");
    }

    #[test]
    fn missing_context_is_a_deny_not_an_allow() {
        // sftp without `access` does not match the schema: an error, so deny.
        let r = shipped().decide_with(
            &AccessRequest {
                principal: "alice",
                groups: &["admins".to_string()],
                container: "web1",
                labels: &BTreeMap::new(),
                login: "app",
                action: Action::Sftp,
                command: None,
            },
            &[],
        );
        assert!(r.is_err() || !r.unwrap().allowed);
    }

    #[test]
    fn admins_may_do_anything() {
        let d = ask(&["admins"], "prod", "root", Action::Shell);
        assert!(d.allowed);
        assert_eq!(d.policies, ["admins-anything"]);
    }

    #[test]
    fn nobody_else_gets_in() {
        let d = ask(&[], "dev", "app", Action::Shell);
        assert!(!d.allowed);
        assert!(d.policies.is_empty());
        assert!(!ask(&["approvers"], "dev", "app", Action::Shell).allowed);
    }

    #[test]
    fn containers_without_labels_are_evaluated_without_errors() {
        let labels = BTreeMap::new();
        let d = shipped()
            .decide(&AccessRequest {
                principal: "alice",
                groups: &["developers".to_string()],
                container: "web1",
                labels: &labels,
                login: "app",
                action: Action::Shell,
                command: None,
            })
            .unwrap();
        assert!(!d.allowed);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
    }

    #[test]
    fn bad_policy_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let shipped_schema = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("policies")
            .join(SCHEMA_FILE);
        std::fs::copy(shipped_schema, dir.path().join(SCHEMA_FILE)).unwrap();
        std::fs::write(dir.path().join("bad.cedar"), "permit(principal, action, ").unwrap();
        let err = PolicyEngine::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bad.cedar"), "{err}");
        std::fs::write(
            dir.path().join("bad.cedar"),
            "permit(principal, action, resource) when { resource.colour == \"red\" };",
        )
        .unwrap();
        let err = PolicyEngine::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("schema"), "{err}");
    }
}
