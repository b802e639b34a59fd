//! The auditor's report (issue 15 point 5) on the test's database (SQLite,
//! or PostgreSQL with `PORTCULLIS_TEST_DATABASE=postgres`): sessions,
//! grants, break-glass, kills and refusals written through the calls the
//! gateway makes; the HTML rendered by a real headless Chromium to PDF, PNG
//! and DOM and read back (`pdftotext`), the CSV read by the `csv` crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use portcullis::audit::report::{ReportFormat, ReportSpec, collect, render};
use portcullis::audit::{
    AuditEvent, AuditLog, AuditSigner, AuditSubject, Limits, TrustedKeys, VerifyOptions,
};
use portcullis::store::{NewAccessRequest, NewSession, SessionEnd, Store, now_ms};
use russh::keys::{Algorithm, PrivateKey};

const DAY: i64 = 86_400_000;

struct Fixture {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    store: Store,
    audit: AuditLog,
    url: String,
}

fn sql(url: &str, statement: &str) {
    let out = match url.strip_prefix("sqlite://") {
        Some(path) => Command::new("sqlite3").arg(path).arg(statement).output(),
        None => Command::new("psql")
            .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", statement])
            .output(),
    }
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn subject<'a>(session: Option<&'a str>, principal: &'a str) -> AuditSubject<'a> {
    AuditSubject {
        session_id: session,
        principal: Some(principal),
        client_addr: Some("198.51.100.4:40000"),
    }
}

impl Fixture {
    async fn start(
        &self,
        id: &str,
        who: &str,
        container: &str,
        login: &str,
        cmd: Option<&str>,
        output: &str,
    ) {
        self.start_granted(id, who, container, login, cmd, output, None)
            .await
    }

    /// [`Fixture::start`] of a session opened under `grant`.
    #[allow(clippy::too_many_arguments)]
    async fn start_granted(
        &self,
        id: &str,
        who: &str,
        container: &str,
        login: &str,
        cmd: Option<&str>,
        output: &str,
        grant: Option<&str>,
    ) {
        let path = self.dir.join(format!("{id}.cast"));
        std::fs::write(
            &path,
            format!(
                "{{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":1796111294}}\n[0.5,\"o\",{}]\n",
                serde_json::Value::String(output.into())
            ),
        )
        .unwrap();
        self.audit
            .record_session_start(
                &subject(Some(id), who),
                &AuditEvent::SessionStarted {
                    container: container.into(),
                    login: login.into(),
                    command: cmd.map(str::to_string),
                    pty: cmd.is_none(),
                },
                &NewSession {
                    id,
                    principal: who,
                    email: Some(&format!("{who}@example.com")),
                    container,
                    login,
                    command: cmd,
                    client_addr: Some("198.51.100.4:40000"),
                    recording_path: path.to_str().unwrap(),
                    grant_id: grant,
                },
            )
            .await
            .unwrap();
    }

    async fn end(&self, id: &str, who: &str) {
        let path = self.dir.join(format!("{id}.cast"));
        let d = portcullis::recording::digest_file(&path).unwrap();
        self.audit
            .record_session_end(
                &subject(Some(id), who),
                &AuditEvent::SessionEnded {
                    exit_status: Some(0),
                    exit_signal: None,
                    recording_bytes: d.bytes as i64,
                    recording_sha256: d.sha256.clone(),
                    output_bytes: None,
                },
                id,
                &SessionEnd {
                    status: "ended",
                    exit_status: Some(0),
                    exit_signal: None,
                    recording_bytes: d.bytes as i64,
                    recording_sha256: &d.sha256,
                },
            )
            .await
            .unwrap();
    }

    /// Request `id` by `who` for `login@container`, approved by
    /// `approver`.
    async fn grant(
        &self,
        id: &str,
        who: &str,
        (login, container): (&str, &str),
        reason: &str,
        approver: &str,
        break_glass: bool,
    ) {
        self.store
            .insert_access_request(&NewAccessRequest {
                id,
                requester: who,
                container,
                login,
                duration_seconds: 3600,
                reason,
                break_glass,
            })
            .await
            .unwrap();
        let now = now_ms();
        self.store
            .add_approval(id, approver, Some("ok"), now)
            .await
            .unwrap();
        assert!(
            self.store
                .approve_access_request(id, approver, Some("ok"), now)
                .await
                .unwrap()
        );
    }
}

/// Three sessions on two containers over two days, three grants (one used,
/// one break-glass reviewed), a kill, two refusals; signed.
async fn history() -> (Fixture, VerifyOptions) {
    let dir = tempfile::tempdir().unwrap();
    let url = match std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() {
        Ok("postgres") => common::postgres::server().new_database(),
        _ => format!("sqlite://{}/portcullis.db", dir.path().display()),
    };
    let store = Store::open(&url).await.unwrap();
    let f = Fixture {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        audit: AuditLog::new(store.clone()),
        store,
        url,
    };
    f.start(
        "s-web-1",
        "alice",
        "web1",
        "app",
        Some("uptime"),
        "up 3 days\r\n",
    )
    .await;
    f.end("s-web-1", "alice").await;
    f.grant(
        "g-used",
        "alice",
        ("root", "web1"),
        "OPS-7 disk full",
        "carol",
        false,
    )
    .await;
    f.start_granted(
        "s-web-2",
        "alice",
        "web1",
        "root",
        None,
        "~ # ls -l /etc\r\ntotal 0\r\n~ # df -h\r\n",
        Some("g-used"),
    )
    .await;
    f.end("s-web-2", "alice").await;
    f.grant(
        "g-unused",
        "bob",
        ("app", "db1"),
        "OPS-9 migration",
        "dave",
        false,
    )
    .await;
    f.grant(
        "g-glass",
        "bob",
        ("root", "db1"),
        "INC-4 outage",
        "bob",
        true,
    )
    .await;
    assert!(
        f.store
            .review_break_glass("g-glass", "erin", Some("justified"))
            .await
            .unwrap()
    );
    f.start("s-db-1", "bob", "db1", "app", Some("sh -c 'sleep 600'"), "")
        .await;
    f.audit
        .record(
            &subject(Some("s-db-1"), "bob"),
            &AuditEvent::FileTransferred {
                path: "/srv/dump.sql".into(),
                direction: "read".into(),
                bytes: 4096,
                sha256: "ab".repeat(32),
                sequential: true,
                closed: true,
            },
        )
        .await
        .unwrap();
    f.audit
        .record(
            &subject(Some("s-db-1"), "carol"),
            &AuditEvent::SessionKillRequested {
                reason: "change freeze".into(),
            },
        )
        .await
        .unwrap();
    assert!(
        f.store
            .request_kill("s-db-1", "change freeze")
            .await
            .unwrap()
    );
    f.audit
        .record(
            &subject(Some("s-db-1"), "bob"),
            &AuditEvent::SessionTerminated {
                reason: "change freeze".into(),
            },
        )
        .await
        .unwrap();
    f.end("s-db-1", "bob").await;
    f.audit
        .record(
            &subject(None, "mallory"),
            &AuditEvent::AccessDecided {
                action: "shell".into(),
                container: "db1".into(),
                login: "root".into(),
                allowed: false,
                reasons: vec![],
            },
        )
        .await
        .unwrap();
    f.audit
        .record(
            &AuditSubject {
                session_id: None,
                principal: None,
                client_addr: Some("203.0.113.9:1"),
            },
            &AuditEvent::AuthenticationFailed {
                method: "token".into(),
                target: "root@db1".into(),
                reason: "the token has expired".into(),
            },
        )
        .await
        .unwrap();
    // The first session was two days ago (its row; the chart counts rows).
    sql(
        &f.url,
        &format!(
            "UPDATE sessions SET started_at = started_at - {}, ended_at = ended_at - {} WHERE id = 's-web-1'",
            2 * DAY,
            2 * DAY
        ),
    );
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    AuditSigner::new(key.clone())
        .with_gateway("gw-report")
        .sign_head(&f.store)
        .await
        .unwrap();
    let mut trusted = TrustedKeys::default();
    trusted
        .add_line(&key.public_key().to_openssh().unwrap(), "test")
        .unwrap();
    let options = VerifyOptions {
        trusted,
        limits: Limits {
            sign_interval_ms: 60_000,
            slack_ms: 60_000,
        },
        now_ms: now_ms(),
        notes: Vec::new(),
    };
    (f, options)
}

fn spec() -> ReportSpec {
    let now = now_ms();
    ReportSpec {
        from_ms: (now - 3 * DAY).div_euclid(DAY) * DAY,
        to_ms: now + 1000,
        ticket_pattern: Some("[A-Z]+-[0-9]+".into()),
        gateway: "gw-report".into(),
    }
}

#[tokio::test]
async fn the_csv_and_json_forms_hold_every_fact() {
    let (f, options) = history().await;
    let report = collect(&f.store, &spec(), &options).await.unwrap();
    let t = &report.totals;
    assert_eq!(
        (
            t.sessions,
            t.containers,
            t.principals,
            t.files,
            t.refused,
            t.break_glass,
            t.unused_grants,
            t.kills
        ),
        (3, 2, 3, 1, 2, 1, 2, 1),
        "{t:?}"
    );
    assert_eq!(
        report.verification.verdict, "OK",
        "{:#?}",
        report.verification.lines
    );
    assert!(report.verification.period_signed);

    let text = render(&report, ReportFormat::Csv).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let of = |kind: &str| rows.iter().filter(|r| &r[0] == kind).collect::<Vec<_>>();
    assert_eq!(of("session").len(), 3);
    assert_eq!(of("refused").len(), 2);
    assert_eq!(of("unused_grant").len(), 2);
    assert_eq!(of("verification").len(), 1);
    assert_eq!(&of("verification")[0][col("status")], "OK");
    let shell = of("session")
        .into_iter()
        .find(|r| &r[col("session_id")] == "s-web-2")
        .unwrap();
    assert_eq!(&shell[col("typed_commands")], "ls -l /etc\ndf -h");
    assert_eq!(&shell[col("reason")], "OPS-7 disk full");
    assert_eq!(&shell[col("ticket")], "OPS-7");
    assert!(shell[col("approved_by")].starts_with("carol at "));
    let killed = of("session")
        .into_iter()
        .find(|r| &r[col("session_id")] == "s-db-1")
        .unwrap();
    assert_eq!(&killed[col("killed_by")], "carol");
    assert_eq!(&killed[col("kill_reason")], "change freeze");
    assert_eq!(&killed[col("files")], "read /srv/dump.sql (4096 bytes)");
    let refused: Vec<&str> = of("refused")
        .iter()
        .map(|r| r.get(col("reason")).unwrap())
        .collect();
    assert!(refused.contains(&"the token has expired"), "{refused:?}");

    let json: serde_json::Value =
        serde_json::from_str(&render(&report, ReportFormat::Json).unwrap()).unwrap();
    assert_eq!(json["schema"], "portcullis.audit-report.v1");
    assert_eq!(json["break_glass"][0]["reviewed_by"], "erin");
    assert_eq!(json["timeline"]["rows"][1]["container"], "web1");
    let md = render(&report, ReportFormat::Markdown).unwrap();
    assert!(md.contains("## Container db1"), "{md}");
    assert!(md.contains("| INC-4 outage |"));
}

/// Runs headless Chromium on `args` (as root: no sandbox) with a fresh
/// profile; returns stdout.
fn chromium(profile: &Path, args: &[String]) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-pdf-header-footer",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium (apt-get install chromium)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_html_report_prints_and_renders_in_chromium() {
    let (f, options) = history().await;
    let report = collect(&f.store, &spec(), &options).await.unwrap();
    let html = render(&report, ReportFormat::Html).unwrap();
    assert!(!html.contains("<script"), "no script");
    assert!(
        !html.contains("http://") || html.matches("http://").count() == 1,
        "only the SVG namespace"
    );
    let page = f.dir.join("report.html");
    std::fs::write(&page, &html).unwrap();
    let url = format!("file://{}", page.display());
    let profile = tempfile::tempdir().unwrap();

    // Print to PDF and read the text back.
    let pdf = f.dir.join("report.pdf");
    chromium(
        profile.path(),
        &[format!("--print-to-pdf={}", pdf.display()), url.clone()],
    );
    let pdftotext = |args: &[&str]| {
        let out = Command::new("pdftotext")
            .args(args)
            .arg(&pdf)
            .arg("-")
            .output()
            .expect("pdftotext (apt-get install poppler-utils)");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // In reading order (cell by cell), runs of white space made one space
    // (cells wrap).
    let text = pdftotext(&[])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let layout = pdftotext(&["-layout"]);
    for needle in [
        "Audit report",
        "Container db1 (1 sessions)",
        "Container web1 (2 sessions)",
        "alice",
        "mallory",
        "OPS-7 disk full",
        "ls -l /etc",
        "killed by carol",
        "INC-4 outage",
        "reviewed by erin",
        "/srv/dump.sql (4096 bytes)",
        "the token has expired",
        "OPS-9 migration",
    ] {
        assert!(text.contains(needle), "{needle:?} not in the PDF:\n{text}");
    }
    // The totals: the first line of numbers under their headers.
    let totals = layout
        .lines()
        .skip_while(|l| !l.contains("Sessions"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| !w.is_empty() && w.iter().all(|x| x.parse::<u32>().is_ok()))
        .unwrap_or_default();
    assert_eq!(totals, ["3", "2", "3", "1", "2", "1", "2", "1"], "{layout}");

    // The DOM: the verdict and one bar per container and day with sessions.
    let dom = chromium(profile.path(), &["--dump-dom".to_string(), url.clone()]);
    assert!(
        dom.contains("<span class=\"ok\" id=\"verdict\">OK</span>"),
        "{dom}"
    );
    assert_eq!(dom.matches("<rect class=\"bar\"").count(), 3, "{dom}");
    assert!(dom.contains("<title>web1, "), "{dom}");

    // A screenshot: a PNG of the window's size with something drawn.
    let png = f.dir.join("report.png");
    chromium(
        profile.path(),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,1600".to_string(),
            url,
        ],
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 1600));
    assert!(
        bytes.len() > 20_000,
        "an almost empty screenshot: {} bytes",
        bytes.len()
    );
}
