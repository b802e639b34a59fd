//! Gathering the report's facts from the store: events of the period,
//! session rows, access requests and approvals, transcripts, and the
//! verification of the chain. Reads only; never writes the database nor
//! changes a recording.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use super::{
    ApprovalEntry, AuditReport, ContainerSection, FileEntry, GrantSummary, Kill, PrincipalSummary,
    Refusal, ReportSpec, ReportVerification, SessionEntry, Timeline, TimelineRow, Totals,
};
use crate::audit::AuditError;
use crate::audit::verify::{VerifyOptions, verify};
use crate::store::{AccessRequestRecord, ApprovalRecord, AuditRow, SessionRecord, Store};

/// Most days the timeline shows.
const MAX_DAYS: i64 = 400;

const DAY_MS: i64 = 86_400_000;

/// Gathers the report for `spec`, verifying the chain with `options`.
///
/// # Errors
/// [`AuditError::Database`].
pub async fn collect(
    store: &Store,
    spec: &ReportSpec,
    options: &VerifyOptions,
) -> Result<AuditReport, AuditError> {
    let verification = verify(store, options).await?;
    let events = store.audit_events(None).await?;
    let in_period = |at: i64| at >= spec.from_ms && at <= spec.to_ms;
    let period: Vec<&AuditRow> = events.iter().filter(|e| in_period(e.at)).collect();
    let sessions: Vec<SessionRecord> = store
        .list_sessions(i64::MAX)
        .await?
        .into_iter()
        .filter(|s| s.started_at <= spec.to_ms && s.ended_at.unwrap_or(i64::MAX) >= spec.from_ms)
        .collect();
    let requests: Vec<AccessRequestRecord> = store
        .access_requests(None, None, i64::MAX)
        .await?
        .into_iter()
        .filter(|r| {
            in_period(r.created_at)
                || (r.starts_at.unwrap_or(i64::MAX) <= spec.to_ms
                    && r.expires_at.unwrap_or(i64::MIN) >= spec.from_ms)
        })
        .collect();
    let ids: Vec<String> = requests.iter().map(|r| r.id.clone()).collect();
    let approvals = store.approvals_of_many(&ids).await?;
    let mut grant_of_session: HashMap<String, String> = HashMap::new();
    let mut uses: HashMap<String, usize> = HashMap::new();
    for r in requests.iter().filter(|r| r.status == "approved") {
        let used = store.sessions_of_grant(&r.id).await?;
        uses.insert(r.id.clone(), used.len());
        for s in used {
            grant_of_session.insert(s, r.id.clone());
        }
    }
    let ticket = spec
        .ticket_pattern
        .as_deref()
        .and_then(|p| regex::Regex::new(p).ok());
    let now = crate::store::now_ms();
    let grants: HashMap<String, GrantSummary> = requests
        .iter()
        .map(|r| {
            let g = grant_summary(r, approvals.get(&r.id), ticket.as_ref(), now, &uses);
            (r.id.clone(), g)
        })
        .collect();

    let mut by_session: HashMap<&str, Vec<&AuditRow>> = HashMap::new();
    for e in &events {
        if let Some(s) = e.session_id.as_deref() {
            by_session.entry(s).or_default().push(e);
        }
    }
    let mut entries: Vec<SessionEntry> = sessions
        .iter()
        .map(|s| {
            let own = by_session
                .get(s.id.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let grant = grant_of_session
                .get(&s.id)
                .and_then(|g| grants.get(g))
                .cloned();
            session_entry(s, own, grant)
        })
        .collect();
    entries.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));

    let refused: Vec<Refusal> = period.iter().filter_map(|e| refusal(e)).collect();
    let kills: Vec<Kill> = entries.iter().filter_map(|e| e.killed.clone()).collect();
    let mut break_glass: Vec<GrantSummary> = requests
        .iter()
        .filter(|r| r.break_glass)
        .filter_map(|r| grants.get(&r.id).cloned())
        .collect();
    break_glass.sort_by(|a, b| a.requested.cmp(&b.requested));
    let mut unused_grants: Vec<GrantSummary> = requests
        .iter()
        .filter(|r| r.status == "approved" && uses.get(&r.id).copied().unwrap_or(0) == 0)
        .filter_map(|r| grants.get(&r.id).cloned())
        .collect();
    unused_grants.sort_by(|a, b| a.requested.cmp(&b.requested));

    let principals = principal_summaries(&entries, &refused, &requests);
    let mut containers: BTreeMap<String, Vec<SessionEntry>> = BTreeMap::new();
    for e in &entries {
        containers
            .entry(e.container.clone())
            .or_default()
            .push(e.clone());
    }
    let timeline = timeline(&entries, spec);
    let period_events = period.first().zip(period.last()).map(|(a, b)| (a.id, b.id));
    let period_signed = period_events.is_none_or(|(first, last)| {
        verification.signed_through_event.is_some_and(|s| s >= last)
            && verification
                .first_bad_event
                .as_ref()
                .is_none_or(|(bad, _)| *bad > last)
            && !verification
                .gaps
                .iter()
                .any(|g| g.last_event >= first && g.first_event <= last)
    });
    let totals = Totals {
        sessions: entries.len(),
        containers: containers.len(),
        principals: principals.len(),
        files: entries.iter().map(|e| e.files.len()).sum(),
        refused: refused.len(),
        break_glass: break_glass.len(),
        unused_grants: unused_grants.len(),
        kills: kills.len(),
    };
    Ok(AuditReport {
        schema: "portcullis.audit-report.v1".to_string(),
        generated: utc_text(now),
        gateway: spec.gateway.clone(),
        from: utc_text(spec.from_ms),
        to: utc_text(spec.to_ms),
        from_ms: spec.from_ms,
        to_ms: spec.to_ms,
        totals,
        verification: ReportVerification {
            verdict: if verification.ok() { "OK" } else { "FAILED" }.to_string(),
            ok: verification.ok(),
            events_in_period: period.len(),
            period_events,
            period_signed,
            lines: verification.lines(),
        },
        containers: containers
            .into_iter()
            .map(|(container, sessions)| ContainerSection {
                container,
                sessions,
            })
            .collect(),
        principals,
        refused,
        break_glass,
        unused_grants,
        kills,
        timeline,
    })
}

fn grant_summary(
    r: &AccessRequestRecord,
    approvals: Option<&Vec<ApprovalRecord>>,
    ticket: Option<&regex::Regex>,
    now: i64,
    uses: &HashMap<String, usize>,
) -> GrantSummary {
    let time = |t: Option<i64>| t.map(utc_text).unwrap_or_default();
    GrantSummary {
        id: r.id.clone(),
        requester: r.requester.clone(),
        container: r.container.clone(),
        login: r.login.clone(),
        reason: r.reason.clone(),
        ticket: ticket
            .and_then(|t| t.find(&r.reason))
            .map(|m| m.as_str().to_string()),
        requested: utc_text(r.created_at),
        approvals: approvals
            .map(|list| {
                list.iter()
                    .map(|a| ApprovalEntry {
                        approver: a.approver.clone(),
                        at: utc_text(a.approved_at),
                        comment: a.comment.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        starts: time(r.starts_at),
        expires: time(r.expires_at),
        break_glass: r.break_glass,
        reviewed_by: r.reviewed_by.clone(),
        reviewed: r.reviewed_at.map(utc_text),
        review_comment: r.review_comment.clone(),
        state: r.state_at(now).to_string(),
        sessions: uses.get(&r.id).copied().unwrap_or(0),
    }
}

fn session_entry(
    s: &SessionRecord,
    own: &[&AuditRow],
    grant: Option<GrantSummary>,
) -> SessionEntry {
    let detail =
        |e: &AuditRow| serde_json::from_str::<serde_json::Value>(&e.detail).unwrap_or_default();
    let mut files = Vec::new();
    let mut killed = None;
    for e in own {
        let d = detail(e);
        match e.kind.as_str() {
            "file_transfer" => files.push(FileEntry {
                path: d["path"].as_str().unwrap_or_default().to_string(),
                direction: d["direction"].as_str().unwrap_or_default().to_string(),
                bytes: d["bytes"].as_i64().unwrap_or(0),
                sha256: d["sha256"].as_str().unwrap_or_default().to_string(),
            }),
            "sftp_stream" => files.push(FileEntry {
                path: format!(
                    "(sftp stream served by {})",
                    d["server"].as_str().unwrap_or("?")
                ),
                direction: "stream".to_string(),
                bytes: d["bytes_from_client"].as_i64().unwrap_or(0)
                    + d["bytes_to_client"].as_i64().unwrap_or(0),
                sha256: String::new(),
            }),
            // The kill request comes before the termination it causes; a
            // watch has `reviewer`, a stopped container `container`.
            "session_control"
                if killed.is_none()
                    && s.kill_reason.is_some()
                    && d.get("reason").is_some()
                    && d.get("reviewer").is_none() =>
            {
                killed = Some(Kill {
                    session_id: s.id.clone(),
                    container: s.container.clone(),
                    principal: s.principal.clone(),
                    killed_by: e.principal.clone().unwrap_or_default(),
                    at: utc_text(e.at),
                    reason: d["reason"].as_str().unwrap_or_default().to_string(),
                });
            }
            _ => {}
        }
    }
    let typed_commands = match &s.command {
        Some(_) => Vec::new(),
        None => crate::recording::read(Path::new(&s.recording_path))
            .map(|(_, events)| prompt_commands(&crate::recording::transcript_lines(&events)))
            .unwrap_or_default(),
    };
    let duration_ms = s.ended_at.map(|e| e - s.started_at);
    SessionEntry {
        id: s.id.clone(),
        principal: s.principal.clone(),
        email: s.email.clone(),
        container: s.container.clone(),
        login: s.login.clone(),
        client_addr: s.client_addr.clone(),
        started_ms: s.started_at,
        started: utc_text(s.started_at),
        ended: s.ended_at.map(utc_text).unwrap_or_default(),
        duration_ms,
        duration: duration_ms
            .map(format_ms)
            .unwrap_or_else(|| "running".into()),
        status: s.status.clone(),
        exit: match (&s.exit_status, &s.exit_signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => String::new(),
        },
        command: s.command.clone(),
        typed_commands,
        files,
        grant,
        killed,
        recording_sha256: s.recording_sha256.clone(),
    }
}

/// Commands typed at a shell prompt, as the transcript shows them: lines
/// holding a prompt (`# ` or `$ ` after at most 80 characters) followed by
/// text. What the terminal showed, not what ran.
pub(super) fn prompt_commands(lines: &[(f64, String)]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|(_, line)| {
            let at = line.find("# ").or_else(|| line.find("$ "))?;
            let command = line.get(at + 2..)?.trim();
            (at <= 80 && !command.is_empty()).then(|| command.to_string())
        })
        .collect()
}

/// A refusal from a `decision` deny, an `authentication` failure, a
/// `target` failure or a refused workflow step.
fn refusal(e: &AuditRow) -> Option<Refusal> {
    let d: serde_json::Value = serde_json::from_str(&e.detail).ok()?;
    let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
    let (what, reason) = match (e.kind.as_str(), e.outcome.as_str()) {
        ("decision", "deny") => (
            format!("{} {}@{}", s("action"), s("login"), s("container")),
            d["reasons"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "no policy permits it".to_string()),
        ),
        ("authentication", "failure") => {
            (format!("{} as {}", s("method"), s("target")), s("reason"))
        }
        ("target", "failure") => (s("target"), s("reason")),
        ("access_request", "deny") => (
            format!("{} {}@{}", s("action"), s("login"), s("container")),
            s("reason"),
        ),
        _ => return None,
    };
    Some(Refusal {
        at: utc_text(e.at),
        principal: e.principal.clone().unwrap_or_default(),
        kind: e.kind.clone(),
        what,
        reason,
        client_addr: e.client_addr.clone().unwrap_or_default(),
    })
}

fn principal_summaries(
    entries: &[SessionEntry],
    refused: &[Refusal],
    requests: &[AccessRequestRecord],
) -> Vec<PrincipalSummary> {
    let mut names: BTreeSet<String> = entries.iter().map(|e| e.principal.clone()).collect();
    names.extend(
        refused
            .iter()
            .filter(|r| !r.principal.is_empty())
            .map(|r| r.principal.clone()),
    );
    names
        .into_iter()
        .map(|p| {
            let own: Vec<&SessionEntry> = entries.iter().filter(|e| e.principal == p).collect();
            let containers: BTreeSet<String> = own.iter().map(|e| e.container.clone()).collect();
            let total: i64 = own.iter().filter_map(|e| e.duration_ms).sum();
            let held: Vec<&AccessRequestRecord> = requests
                .iter()
                .filter(|r| r.requester == p && r.status == "approved")
                .collect();
            PrincipalSummary {
                sessions: own.len(),
                containers: containers.into_iter().collect(),
                total_duration: format_ms(total),
                refused: refused.iter().filter(|r| r.principal == p).count(),
                grants: held.len(),
                break_glass: held.iter().filter(|r| r.break_glass).count(),
                principal: p,
            }
        })
        .collect()
}

fn timeline(entries: &[SessionEntry], spec: &ReportSpec) -> Timeline {
    let first_day = spec.from_ms.div_euclid(DAY_MS);
    let last_day = spec.to_ms.div_euclid(DAY_MS);
    let shown_first = first_day.max(last_day - MAX_DAYS + 1);
    let days: Vec<i64> = (shown_first..=last_day).collect();
    let mut rows: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for e in entries {
        let day = e.started_ms.div_euclid(DAY_MS);
        let counts = rows
            .entry(e.container.clone())
            .or_insert_with(|| vec![0; days.len()]);
        if let Some(c) = usize::try_from(day - shown_first)
            .ok()
            .and_then(|i| counts.get_mut(i))
        {
            *c += 1;
        }
    }
    Timeline {
        days: days
            .iter()
            .map(|d| utc_text(d * DAY_MS).chars().take(10).collect())
            .collect(),
        rows: rows
            .into_iter()
            .map(|(container, counts)| TimelineRow { container, counts })
            .collect(),
        truncated: shown_first > first_day,
    }
}

/// `ms` (unix ms) as `YYYY-MM-DD HH:MM:SS` UTC, for people and print.
pub(super) fn utc_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// `ms` as humantime text with whole seconds (`1h 2m 3s`, `0s`).
pub(super) fn format_ms(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs((ms.max(0) / 1000) as u64))
        .to_string()
}
