//! `sessions search` over 10,000 recorded sessions (issue 6 goal: under
//! 200 ms on SQLite).
//!
//! Run: `cargo bench --profile dev --bench search` (optionally
//! `-- SESSIONS LINES_PER_SESSION`). It fills a fresh SQLite database in a
//! temporary directory with SESSIONS sessions (default 10,000) of
//! LINES_PER_SESSION transcript lines each (default 40) through the same
//! `Store` API the gateway uses, then times 20 searches each for a phrase
//! found in one session, one found in every 100th session, and one found
//! nowhere, and prints median and worst in milliseconds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use portcullis::store::{NewSession, Store};

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sessions = args.first().copied().unwrap_or(10_000);
    let lines_per = args.get(1).copied().unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/bench.db", dir.path().display()))
        .await
        .unwrap();
    let fill = Instant::now();
    for i in 0..sessions {
        let id = format!("session-{i:05}");
        store
            .insert_session(&NewSession {
                id: &id,
                principal: "alice",
                email: None,
                container: "web1",
                login: "app",
                command: None,
                client_addr: None,
                recording_path: "/dev/null",
                grant_id: None,
            })
            .await
            .unwrap();
        let mut lines: Vec<(f64, String)> = (0..lines_per)
            .map(|j| {
                (
                    j as f64 * 0.5,
                    format!(
                        "~ $ ls -l /var/log/app-{j} total {i} drwxr-xr-x build output line {j}"
                    ),
                )
            })
            .collect();
        if i == sessions / 2 {
            lines.push((99.0, "~ # rm -rf /srv/unique-needle".into()));
        }
        if i % 100 == 0 {
            lines.push((42.0, "~ # systemctl restart payments".into()));
        }
        store.index_transcript(&id, &lines).await.unwrap();
    }
    println!(
        "filled {sessions} sessions x {lines_per} lines in {:.1} s",
        fill.elapsed().as_secs_f64()
    );
    println!("| query | hits | median ms | worst ms |");
    println!("| --- | --- | --- | --- |");
    for query in [
        "unique-needle",
        "systemctl restart payments",
        "never-printed-anywhere",
    ] {
        let mut times = Vec::new();
        let mut hits = 0;
        for _ in 0..20 {
            let t = Instant::now();
            hits = store.search_transcripts(query).await.unwrap().len();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "| `{query}` | {hits} | {:.2} | {:.2} |",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
}
