//! `portcullis audit`: the audit log in order; `verify` (the chain, the
//! signed heads, coverage and every recording; against anchors with
//! `--anchor`; a bundle offline with `--bundle`); `bundle` (evidence for an
//! auditor, verifiable offline); `report` (the auditor's report); `key`
//! (this gateway's signing key, for the other gateways' `trusted_keys`).
//! Parses and prints only: every check lives in `crate::audit`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

use super::{format_time, print_table};
use crate::audit::bundle::{BundleSpec, verify_bundle, write_bundle};
use crate::audit::report::{ReportFormat, ReportSpec, collect, render};
use crate::audit::{VerifyOptions, verify_anchor, verify_with_recordings};
use crate::config::Config;
use crate::store::Store;

/// `portcullis audit ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Audit events in order.
    List {
        /// Only the events of this session.
        #[arg(long)]
        session: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Check the chain, the signed heads (trusted keys, each naming the one
    /// before, no gap longer than sign_interval + sign_slack) and every
    /// recording; with --anchor also that the database still holds every
    /// head and event the anchor holds; with --bundle a bundle, offline.
    /// Exit 1 and name what differs.
    Verify {
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// An anchor to compare with: a head directory, an export file or
        /// an object store URL (repeat for several).
        #[arg(long)]
        anchor: Vec<String>,
        /// Verify this bundle instead of the database (needs no database,
        /// no gateway and no config).
        #[arg(long, value_name = "FILE.tar")]
        bundle: Option<PathBuf>,
        /// Also trust this signing key: an OpenSSH public key line or a
        /// file holding one (repeat for several).
        #[arg(long = "trusted-key", value_name = "KEY")]
        trusted_keys: Vec<String>,
    },
    /// Pack the events, signed heads, keys and recordings of a period into
    /// a tar file with a signed manifest.
    Bundle {
        /// Start: RFC 3339, YYYY-MM-DD (UTC) or an age like 7d.
        #[arg(long)]
        from: String,
        /// End: RFC 3339, YYYY-MM-DD (the whole day, UTC) or an age.
        #[arg(long)]
        to: String,
        /// Only the sessions on this container.
        #[arg(long)]
        container: Option<String>,
        /// Only the sessions of this principal.
        #[arg(long)]
        principal: Option<String>,
        /// The tar file to create (never overwritten).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// The auditor's report of a period.
    Report {
        /// Start: RFC 3339, YYYY-MM-DD (UTC) or an age like 7d.
        #[arg(long)]
        from: String,
        /// End: RFC 3339, YYYY-MM-DD (the whole day, UTC) or an age.
        #[arg(long)]
        to: String,
        /// `html`, `md`, `csv` or `json`.
        #[arg(long, default_value = "html")]
        format: String,
        /// The file to write (`-`: stdout).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Print this gateway's signing key (an OpenSSH public key line) for
    /// the other gateways' `audit.trusted_keys`.
    Key,
}

/// `audit verify --bundle` runs without a database or a config (the
/// config's trusted keys are used when it loads); `None` for every other
/// command.
pub(crate) fn without_database(
    config_path: &Path,
    command: &AuditCommand,
) -> anyhow::Result<Option<ExitCode>> {
    let AuditCommand::Verify {
        json,
        bundle: Some(bundle),
        trusted_keys,
        anchor,
    } = command
    else {
        return Ok(None);
    };
    if !anchor.is_empty() {
        bail!("--anchor compares the database; use it without --bundle");
    }
    let mut options = match Config::load(config_path) {
        Ok(config) if !trusted_keys.is_empty() || !config.audit.trusted_keys.is_empty() => {
            VerifyOptions::from_config(&config)
        }
        _ => VerifyOptions {
            trusted: Default::default(),
            limits: crate::audit::Limits {
                sign_interval_ms: 60_000,
                slack_ms: 60_000,
            },
            now_ms: crate::store::now_ms(),
            notes: Vec::new(),
        },
    };
    add_trusted_keys(&mut options, trusted_keys)?;
    let report = verify_bundle(bundle, &options)?;
    if *json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for line in report.lines() {
            println!("{line}");
        }
    }
    Ok(Some(exit(report.ok())))
}

pub(crate) async fn audit(config: Config, command: AuditCommand) -> anyhow::Result<ExitCode> {
    if let AuditCommand::Key = command {
        let key =
            russh::keys::load_secret_key(config.host_key_path(), None).with_context(|| {
                format!(
                    "cannot read the host key {}",
                    config.host_key_path().display()
                )
            })?;
        println!(
            "{} {}",
            key.public_key().to_openssh()?.trim(),
            config.gateway_id()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open(&config.database_url()).await?;
    match command {
        AuditCommand::List { session, json } => {
            list(&store, session.as_deref(), json).await?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            json,
            anchor,
            trusted_keys,
            bundle: _,
        } => {
            let mut options = VerifyOptions::from_config(&config);
            add_trusted_keys(&mut options, &trusted_keys)?;
            let report = verify_with_recordings(&store, &options, &config.recording).await?;
            let mut ok = report.ok();
            let mut anchors = Vec::new();
            for location in &anchor {
                let a = verify_anchor(&store, location, &options.trusted).await?;
                ok &= a.ok();
                anchors.push(a);
            }
            if json {
                let mut value = serde_json::to_value(&report)?;
                value["anchors"] = serde_json::to_value(&anchors)?;
                value["ok"] = ok.into();
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let lines = report.lines();
                let (last, body) = lines.split_last().unzip();
                for line in body.unwrap_or_default() {
                    println!("{line}");
                }
                for a in &anchors {
                    for line in a.lines().iter().filter(|l| *l != "OK" && *l != "FAILED") {
                        println!("{line}");
                    }
                }
                if anchors.is_empty() {
                    println!("{}", last.map(String::as_str).unwrap_or("FAILED"));
                } else {
                    println!("{}", if ok { "OK" } else { "FAILED" });
                }
            }
            Ok(exit(ok))
        }
        AuditCommand::Bundle {
            from,
            to,
            container,
            principal,
            output,
        } => {
            let key =
                russh::keys::load_secret_key(config.host_key_path(), None).with_context(|| {
                    format!(
                        "cannot read the host key {} to sign the bundle's manifest",
                        config.host_key_path().display()
                    )
                })?;
            let spec = BundleSpec {
                from_ms: parse_date(&from, false)?,
                to_ms: parse_date(&to, true)?,
                container,
                principal,
            };
            let limits = VerifyOptions::from_config(&config).limits;
            let summary = write_bundle(
                &store,
                &spec,
                limits,
                Some(&key),
                &config.gateway_id(),
                &output,
            )
            .await?;
            println!(
                "wrote {}: {} events, {} signed heads, {} sessions, {} recordings",
                output.display(),
                summary.events,
                summary.heads,
                summary.sessions,
                summary.recordings
            );
            if !summary.covered {
                println!(
                    "note: the last events are not signed yet; a bundle made after the next \
                     signature (audit.sign_interval) covers them"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Report {
            from,
            to,
            format,
            output,
        } => {
            let Some(format) = ReportFormat::parse(&format) else {
                bail!("--format {format}: use html, md, csv or json");
            };
            let spec = ReportSpec {
                from_ms: parse_date(&from, false)?,
                to_ms: parse_date(&to, true)?,
                ticket_pattern: config.grants.reason_pattern.clone(),
                gateway: config.gateway_id(),
            };
            let options = VerifyOptions::from_config(&config);
            let report = collect(&store, &spec, &options).await?;
            let text = render(&report, format)?;
            if output == Path::new("-") {
                print!("{text}");
            } else {
                std::fs::write(&output, text)
                    .with_context(|| format!("cannot write {}", output.display()))?;
                println!(
                    "wrote {}: {} sessions, verification {}",
                    output.display(),
                    report.totals.sessions,
                    report.verification.verdict
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        // Answered above, before the database is opened.
        AuditCommand::Key => Ok(ExitCode::SUCCESS),
    }
}

async fn list(store: &Store, session: Option<&str>, json: bool) -> anyhow::Result<()> {
    let events = store.audit_events(session).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    let rows: Vec<[String; 6]> = events
        .iter()
        .map(|e| {
            [
                e.id.to_string(),
                format_time(e.at),
                e.kind.clone(),
                e.outcome.clone(),
                e.principal.clone().unwrap_or_default(),
                e.detail.clone(),
            ]
        })
        .collect();
    print_table(
        &["ID", "AT (UTC)", "KIND", "OUTCOME", "PRINCIPAL", "DETAIL"],
        &rows,
    );
    Ok(())
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Adds each `--trusted-key`: a key line, or a file holding one.
fn add_trusted_keys(options: &mut VerifyOptions, keys: &[String]) -> anyhow::Result<()> {
    for (i, k) in keys.iter().enumerate() {
        let line = if Path::new(k).is_file() {
            std::fs::read_to_string(k).with_context(|| format!("cannot read {k}"))?
        } else {
            k.clone()
        };
        options
            .trusted
            .add_line(&line, &format!("--trusted-key {}", i + 1))
            .map_err(|e| anyhow::anyhow!("--trusted-key {k:?}: {e}"))?;
    }
    Ok(())
}

/// RFC 3339, `YYYY-MM-DD` (UTC; the day's start, or its last millisecond
/// when `end_of_day`) or an age like `7d` (before now), as unix ms.
fn parse_date(text: &str, end_of_day: bool) -> anyhow::Result<i64> {
    if let Ok(age) = humantime::parse_duration(text) {
        return Ok(crate::store::now_ms() - age.as_millis() as i64);
    }
    let rfc = time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, &rfc) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let day = time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .with_context(|| {
        format!("{text:?} is neither an RFC 3339 time, a date (YYYY-MM-DD) nor an age like 7d")
    })?;
    let start = day.midnight().assume_utc().unix_timestamp() * 1000;
    Ok(if end_of_day {
        start + 86_400_000 - 1
    } else {
        start
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn dates_are_days_times_or_ages() {
        assert_eq!(parse_date("2026-12-01", false).unwrap(), 1_796_083_200_000);
        assert_eq!(
            parse_date("2026-12-01", true).unwrap(),
            1_796_083_200_000 + 86_400_000 - 1
        );
        assert_eq!(
            parse_date("2026-12-01T07:48:14.123Z", false).unwrap(),
            1_796_111_294_123
        );
        let age = parse_date("1h", false).unwrap();
        assert!((crate::store::now_ms() - age - 3_600_000).abs() < 60_000);
        assert!(parse_date("yesterday", false).is_err());
    }
}
