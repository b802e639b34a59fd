//! Loading a policy directory: the schema, every `*.cedar` file (sorted
//! by name, each policy named by its `@id` or `FILE#N`), strict
//! validation. Reads files; decides nothing.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};

use super::{PolicyError, SCHEMA_FILE, one_line};

/// A validated policy set and the schema it was validated against.
#[derive(Debug)]
pub(super) struct Loaded {
    /// The policies.
    pub policies: PolicySet,
    /// The schema.
    pub schema: Schema,
}

/// Loads every `*.cedar` file in `dir` (sorted by name) and the schema,
/// and validates the policies strictly.
///
/// # Errors
/// [`PolicyError`] naming the file and Cedar's message.
pub(super) fn load(dir: &Path) -> Result<Loaded, PolicyError> {
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
    Ok(Loaded { policies, schema })
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

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    })
}
