//! `portcullis sessions`: the reviewer's commands: list (with filters),
//! show, play, search, export, watch (read-only, live), and kill (admins).
//! Tables for people, `--json` for tools.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use tokio::io::AsyncWriteExt;

use super::{format_time, print_table};
use crate::audit::{AuditEvent, AuditLog, AuditSubject};
use crate::config::Config;
use crate::store::{SessionFilter, SessionRecord, Store, now_ms};

/// `portcullis sessions ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum SessionsCommand {
    /// List sessions, newest first.
    List {
        /// Only this principal (subject).
        #[arg(long)]
        principal: Option<String>,
        /// Only this container.
        #[arg(long)]
        container: Option<String>,
        /// Only this login.
        #[arg(long)]
        login: Option<String>,
        /// Only this status: running, ended, failed, interrupted.
        #[arg(long)]
        status: Option<String>,
        /// Started at or after: RFC 3339 (`2026-12-01T08:00:00Z`) or an age (`2h`).
        #[arg(long)]
        since: Option<String>,
        /// Started before: RFC 3339 or an age.
        #[arg(long)]
        until: Option<String>,
        /// Most sessions to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A session's metadata, commands, and audit events.
    Show {
        /// Session id.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Replay a session's recording in the terminal with its timing.
    Play {
        /// Session id.
        id: String,
        /// Playback speed factor (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause replayed, in seconds.
        #[arg(long)]
        idle_time_limit: Option<f64>,
        /// Start at this many seconds (a search hit's or a marker's
        /// offset): the output before it is shown at once.
        #[arg(long, value_name = "SECONDS")]
        at: Option<f64>,
        /// Write the recorded bytes as they are: by default OSC (clipboard
        /// OSC 52, titles), DCS and every sequence that makes a terminal
        /// answer are dropped, so a recording cannot act on the reviewer's
        /// terminal (see `portcullis::text::TerminalFilter`).
        #[arg(long)]
        raw: bool,
    },
    /// Sessions whose transcript text (escape sequences stripped) contains
    /// TEXT as a phrase, with the time offset of each hit.
    Search {
        /// The words to find.
        text: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Write a session's recording to stdout.
    Export {
        /// Session id.
        id: String,
        /// `cast` (asciicast v2, as recorded) or `txt` (text lines).
        #[arg(long, default_value = "cast")]
        format: String,
    },
    /// Follow a live session's output, read-only, until it ends.
    Watch {
        /// Session id.
        id: String,
        /// Who is watching, for the audit log (default: $SUDO_USER or $USER).
        #[arg(long)]
        reviewer: Option<String>,
        /// Write the recorded bytes as they are: by default OSC (clipboard
        /// OSC 52, titles), DCS and every sequence that makes a terminal
        /// answer are dropped, so a recording cannot act on the reviewer's
        /// terminal (see `portcullis::text::TerminalFilter`).
        #[arg(long)]
        raw: bool,
    },
    /// End a live session; its user is told the reason.
    Kill {
        /// Session id.
        id: String,
        /// Shown to the user and audited.
        #[arg(long)]
        reason: String,
        /// Who asks, for the audit log (default: $SUDO_USER or $USER).
        #[arg(long)]
        admin: Option<String>,
    },
}

pub(crate) async fn sessions(config: Config, command: SessionsCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.database_url()).await?;
    match command {
        SessionsCommand::List {
            principal,
            container,
            login,
            status,
            since,
            until,
            limit,
            json,
        } => {
            let filter = SessionFilter {
                principal,
                container,
                login,
                status,
                since_ms: since.as_deref().map(parse_time).transpose()?,
                until_ms: until.as_deref().map(parse_time).transpose()?,
                limit,
            };
            let sessions = store.find_sessions(&filter).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
            } else {
                print_sessions(&sessions);
            }
        }
        SessionsCommand::Show { id, json } => show(&config, &store, &id, json).await?,
        SessionsCommand::Play {
            id,
            speed,
            idle_time_limit,
            at,
            raw,
        } => {
            let (_, mut events) = open_recording(&config, &store, &id).await?.parse()?;
            if !raw {
                let mut filter = crate::text::TerminalFilter::new();
                for e in events.iter_mut().filter(|e| e.code == "o") {
                    e.data = filter.filter(&e.data);
                }
            }
            let mut out = tokio::io::stdout();
            let at = at.unwrap_or(0.0);
            crate::recording::play_from(&events, at, speed, idle_time_limit, &mut out).await?;
        }
        SessionsCommand::Search { text, json } => {
            let hits = store.search_transcripts(&text).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hits)?);
            } else {
                let rows: Vec<[String; 3]> = hits
                    .iter()
                    .map(|h| {
                        [
                            h.session_id.clone(),
                            format!("{:.3}s", h.offset_seconds),
                            h.text.clone(),
                        ]
                    })
                    .collect();
                print_table(&["SESSION", "OFFSET", "TEXT"], &rows);
                if let Some(hit) = hits.first() {
                    println!(
                        "\nreplay from a hit: portcullis sessions play {} --at {:.3}",
                        hit.session_id, hit.offset_seconds
                    );
                }
            }
            if hits.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        SessionsCommand::Export { id, format } => {
            let recording = open_recording(&config, &store, &id).await?;
            let mut out = tokio::io::stdout();
            match format.as_str() {
                "cast" => out.write_all(&recording.bytes).await?,
                "txt" => {
                    let (_, events) = recording.parse()?;
                    for (_, line) in crate::recording::transcript_lines(&events) {
                        out.write_all(line.as_bytes()).await?;
                        out.write_all(b"\n").await?;
                    }
                }
                other => bail!("unknown format {other:?} (cast or txt)"),
            }
            out.flush().await?;
        }
        SessionsCommand::Watch { id, reviewer, raw } => watch(&store, &id, reviewer, raw).await?,
        SessionsCommand::Kill { id, reason, admin } => {
            // Shown in the user's terminal (review L1).
            if let Err(e) = crate::text::check_visible(&reason) {
                bail!("the --reason may not hold a {e}");
            }
            let admin = admin.unwrap_or_else(operator);
            let session = store.session(&id).await?;
            if session.status != "running" {
                bail!("session {id} is not running (status {})", session.status);
            }
            let audit = AuditLog::new(store.clone());
            audit
                .record(
                    &AuditSubject {
                        session_id: Some(&id),
                        principal: Some(&admin),
                        client_addr: None,
                    },
                    &AuditEvent::SessionKillRequested {
                        reason: reason.clone(),
                    },
                )
                .await?;
            if !store.request_kill(&id, &reason).await? {
                bail!("session {id} ended before it could be killed");
            }
            // The serving gateway checks for kill requests every second.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if store.session(&id).await?.status != "running" {
                    println!("session {id} ended");
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!("session {id} is still running after 10 s: is its gateway up?");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The operator running the CLI, for audit events.
fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .map(|u| format!("host:{u}"))
        .unwrap_or_else(|_| "host:unknown".to_string())
}

/// RFC 3339 time or an age like `2h` (before now), as unix milliseconds.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(age) = humantime::parse_duration(text) {
        return Ok(now_ms() - age.as_millis() as i64);
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{text:?} is neither an RFC 3339 time nor an age like 2h"))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// A session's recording, from its local file or, once that is gone,
/// from object storage (checked against its manifest).
async fn open_recording(
    config: &Config,
    store: &Store,
    id: &str,
) -> anyhow::Result<crate::recording::OpenedRecording> {
    let session = store.session(id).await?;
    crate::recording::open(&config.recording, store, id, &session.recording_path)
        .await
        .with_context(|| format!("cannot open the recording of session {id}"))
}

async fn show(config: &Config, store: &Store, id: &str, json: bool) -> anyhow::Result<()> {
    let session = store.session(id).await?;
    let events = store.audit_events(Some(id)).await?;
    let recorded = match open_recording(config, store, id).await {
        Ok(recording) => recording.parse().ok().map(|(_, events)| events),
        Err(e) => {
            tracing::warn!(error = %e, "recording unavailable");
            None
        }
    };
    let recorded = recorded.unwrap_or_default();
    let commands: Vec<String> = match &session.command {
        Some(c) => vec![c.clone()],
        None => shell_commands(&crate::recording::transcript_lines(&recorded)),
    };
    let markers = crate::recording::markers(&recorded);
    // File transfers (SFTP, scp), container sftp-server streams and
    // forwarded connections, from the audit log.
    let transfers: Vec<serde_json::Value> = events
        .iter()
        .filter(|e| {
            e.kind == "file_transfer"
                || e.kind == "sftp_stream"
                || (e.kind == "forward" && e.outcome == "info")
        })
        .filter_map(|e| {
            let mut d: serde_json::Value = serde_json::from_str(&e.detail).ok()?;
            d["at"] = e.at.into();
            d["kind"] = e.kind.clone().into();
            Some(d)
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "session": session,
                "commands": commands,
                "markers": markers
                    .iter()
                    .map(|(at, label)| serde_json::json!({"offset_seconds": at, "label": label}))
                    .collect::<Vec<_>>(),
                "transfers": transfers,
                "approvals": [],
                "audit_events": events,
            }))?
        );
        return Ok(());
    }
    // Names, commands and paths come from people: printed display-safe.
    let mut out = String::new();
    macro_rules! say {
        ($($t:tt)*) => {{
            out.push_str(&format!($($t)*));
            out.push('\n');
        }};
    }
    let mut field = |k: &str, v: &str| say!("{k:<12} {v}");
    field("id", &session.id);
    field("principal", &session.principal);
    field("email", session.email.as_deref().unwrap_or("-"));
    field(
        "target",
        &format!("{}@{}", session.login, session.container),
    );
    field("client", session.client_addr.as_deref().unwrap_or("-"));
    field("started", &format_time(session.started_at));
    field(
        "ended",
        &session
            .ended_at
            .map(format_time)
            .unwrap_or_else(|| "-".into()),
    );
    field("status", &session.status);
    field(
        "exit",
        &match (&session.exit_status, &session.exit_signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("signal {s}"),
            _ => "-".into(),
        },
    );
    field("recording", &session.recording_path);
    field("sha256", session.recording_sha256.as_deref().unwrap_or("-"));
    say!("\ncommands:");
    for c in &commands {
        say!("  {c}");
    }
    if !markers.is_empty() {
        say!("\nmarkers (play --at SECONDS):");
        for (at, label) in &markers {
            say!("  {at:>10.3}s  {label}");
        }
    }
    if transfers.is_empty() {
        say!("\ntransfers: none");
    } else {
        say!("\ntransfers:");
        for t in &transfers {
            let text = |k: &str| t[k].as_str().unwrap_or("-").to_string();
            let num = |k: &str| t[k].as_i64().unwrap_or(0);
            if t["kind"] == "file_transfer" {
                say!(
                    "  {}  {:<5} {:>12} bytes  sha256 {}  {}",
                    format_time(num("at")),
                    text("direction"),
                    num("bytes"),
                    text("sha256"),
                    text("path")
                );
            } else if t["kind"] == "sftp_stream" {
                say!(
                    "  {}  sftp via {}  {} bytes in, {} bytes out, {} ms (files not digested)",
                    format_time(num("at")),
                    text("server"),
                    num("bytes_from_client"),
                    num("bytes_to_client"),
                    num("duration_ms")
                );
            } else {
                say!(
                    "  {}  forward {}  {} bytes out, {} bytes back, {} ms",
                    format_time(num("at")),
                    text("destination"),
                    num("bytes_to_destination"),
                    num("bytes_from_destination"),
                    num("duration_ms")
                );
            }
        }
    }
    say!("approvals: none (no grant was needed)");
    say!("\naudit events:");
    for e in &events {
        say!(
            "  {}  {}  {:<16} {:<8} {}",
            e.id,
            format_time(e.at),
            e.kind,
            e.outcome,
            e.detail
        );
    }
    print!("{}", crate::text::display_safe_lines(&out));
    Ok(())
}

/// Commands typed at a shell prompt, as the transcript shows them: lines
/// holding a prompt (`# ` or `$ ` after a path) followed by text. A
/// heuristic: the transcript is what the terminal showed, not what ran.
fn shell_commands(lines: &[(f64, String)]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|(_, line)| {
            let at = line.find("# ").or_else(|| line.find("$ "))?;
            let prompt = &line[..at];
            let command = line[at + 2..].trim();
            (prompt.len() <= 80 && !command.is_empty()).then(|| command.to_string())
        })
        .collect()
}

/// Follows session `id`'s recording to stdout until the session ends;
/// neutralised ([`crate::text::TerminalFilter`]) unless `raw`.
async fn watch(store: &Store, id: &str, reviewer: Option<String>, raw: bool) -> anyhow::Result<()> {
    let session = store.session(id).await?;
    let reviewer = reviewer.unwrap_or_else(operator);
    AuditLog::new(store.clone())
        .record(
            &AuditSubject {
                session_id: Some(id),
                principal: Some(&reviewer),
                client_addr: None,
            },
            &AuditEvent::SessionWatched {
                reviewer: reviewer.clone(),
            },
        )
        .await?;
    let path = Path::new(&session.recording_path);
    let mut follower = crate::recording::Follower::open(path)
        .await
        .with_context(|| format!("cannot watch session {id}"))?;
    let mut out = tokio::io::stdout();
    let mut filter = crate::text::TerminalFilter::new();
    loop {
        // Asked before reading: the recording is complete once the session
        // is no longer running, so the last read takes all of it.
        let running = store.session(id).await?.status == "running";
        let text = follower.next_output().await?;
        let text = if raw { text } else { filter.filter(&text) };
        if !text.is_empty() {
            out.write_all(text.as_bytes()).await?;
            out.flush().await?;
        }
        if !running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn print_sessions(sessions: &[SessionRecord]) {
    let rows: Vec<[String; 8]> = sessions
        .iter()
        .map(|s| {
            [
                s.id.clone(),
                format_time(s.started_at),
                s.principal.clone(),
                format!("{}@{}", s.login, s.container),
                s.command.clone().unwrap_or_else(|| "(shell)".into()),
                s.status.clone(),
                match (&s.exit_status, &s.exit_signal) {
                    (Some(c), _) => c.to_string(),
                    (None, Some(sig)) => sig.clone(),
                    _ => "-".into(),
                },
                s.client_addr.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "STARTED (UTC)",
            "PRINCIPAL",
            "TARGET",
            "COMMAND",
            "STATUS",
            "EXIT",
            "CLIENT",
        ],
        &rows,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_after_prompts() {
        let lines = vec![
            (0.1, "~ # ls -l /etc".to_string()),
            (0.2, "total 3".to_string()),
            (0.3, "app@web1:~$ make deploy".to_string()),
            (0.4, "~ # ".to_string()),
        ];
        assert_eq!(shell_commands(&lines), ["ls -l /etc", "make deploy"]);
    }

    #[test]
    fn times_parse_as_rfc3339_or_age() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z").ok(), Some(1000));
        let two_hours_ago = parse_time("2h").ok().unwrap_or_default();
        assert!((now_ms() - 7_200_000 - two_hours_ago).abs() < 5_000);
        assert!(parse_time("yesterday-ish").is_err());
    }
}
