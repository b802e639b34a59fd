//! `portcullis policy check`: one decision and the policies behind it.

use std::collections::BTreeMap;
use std::process::ExitCode;

use super::PolicyCommand;
use crate::config::Config;
use crate::policy::{AccessRequest, Action, PolicyEngine};

pub(crate) fn policy(config: Config, command: PolicyCommand) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Check {
        principal,
        groups,
        container,
        login,
        action,
        command,
        json,
    } = command;
    let engine = PolicyEngine::load(&config.policy.dir)?;
    let action: Action = action.parse()?;
    let labels: BTreeMap<String, String> = config
        .containers
        .get(&container)
        .map(|c| c.labels.clone())
        .unwrap_or_default();
    let decision = engine.decide(&AccessRequest {
        principal: &principal,
        groups: &groups,
        container: &container,
        labels: &labels,
        login: &login,
        action,
        command: command.as_deref(),
        grant: None,
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "decision": if decision.allowed { "allow" } else { "deny" },
                "policies": decision.policies,
                "errors": decision.errors,
            })
        );
    } else {
        println!(
            "{}: {} {} as {} on {}",
            if decision.allowed { "ALLOW" } else { "DENY" },
            principal,
            action.as_str(),
            login,
            container
        );
        if decision.policies.is_empty() {
            println!("decided by: no policy applied (default deny)");
        } else {
            println!("decided by: {}", decision.policies.join(", "));
        }
        for e in &decision.errors {
            println!("error: {e}");
        }
    }
    Ok(if decision.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
