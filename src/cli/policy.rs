//! `portcullis policy check`: one decision and the policies behind it, for
//! session actions (shell, exec, sftp, port_forward, agent_forward) and
//! workflow actions (request, approve, activate, revoke, review).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;

use super::PolicyCommand;
use crate::config::Config;
use crate::policy::{AccessRequest, Action, ContextValue, PolicyEngine, WorkflowRequest};

pub(crate) fn policy(config: Config, command: PolicyCommand) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Check {
        principal,
        groups,
        container,
        login,
        action,
        command,
        labels: label_args,
        access,
        host,
        port,
        requester,
        duration,
        reason,
        approvals,
        break_glass,
        json,
    } = command
    else {
        return reload(&config);
    };
    let engine = PolicyEngine::load(&config.policy.dir)?;
    let action: Action = action.parse()?;
    let mut labels: BTreeMap<String, String> = config
        .containers
        .get(&container)
        .map(|c| c.labels.clone())
        .unwrap_or_default();
    for l in &label_args {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--label {l:?}: expected KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let decision = match action {
        Action::Request
        | Action::Approve
        | Action::Activate
        | Action::Revoke
        | Action::Review
        | Action::View => {
            let seconds = humantime::parse_duration(&duration)
                .with_context(|| format!("--for {duration:?} is not a duration (e.g. 2h)"))?
                .as_secs();
            engine.decide_workflow(&WorkflowRequest {
                principal: &principal,
                groups: &groups,
                action,
                container: &container,
                labels: &labels,
                requester: requester.as_deref().unwrap_or(&principal),
                login: &login,
                duration_seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
                reason: &reason,
                break_glass,
                approvals,
            })?
        }
        _ => {
            let extra: Vec<(&str, ContextValue)> = match action {
                Action::Sftp => vec![("access", ContextValue::Str(access))],
                Action::PortForward => vec![
                    ("host", destination_ip(&host)?),
                    ("port", ContextValue::Long(i64::from(port))),
                ],
                _ => Vec::new(),
            };
            engine.decide_with(
                &AccessRequest {
                    principal: &principal,
                    groups: &groups,
                    container: &container,
                    labels: &labels,
                    login: &login,
                    action,
                    command: command.as_deref(),
                    grant: None,
                },
                &extra,
            )?
        }
    };
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

/// `--host` as the gateway gives it to the policy: the canonical address
/// ([`crate::policy::addr::canonical_destination`]) as a Cedar `ipaddr`.
fn destination_ip(host: &str) -> anyhow::Result<ContextValue> {
    let addr = crate::policy::addr::canonical_destination(host, 1)
        .with_context(|| format!("--host {host:?}"))?;
    Ok(ContextValue::Ip(addr.ip()))
}

/// `portcullis policy reload`: the policies must load and validate here
/// first; then SIGHUP to the serving gateway, which loads them again
/// itself (and audits it).
fn reload(config: &Config) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    PolicyEngine::load(&config.policy.dir)
        .context("the policies do not load; the gateway keeps the ones it has")?;
    let pid_file = config.state_dir.join(crate::app::PID_FILE);
    let text = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("no running gateway: cannot read {}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", pid_file.display()))?;
    anyhow::ensure!(pid > 1, "{} holds no gateway pid", pid_file.display());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .with_context(|| format!("cannot signal the gateway (pid {pid})"))?;
    println!(
        "policies in {} valid; gateway {pid} told to reload",
        config.policy.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
