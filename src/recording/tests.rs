//! Tests of the writer through the public API: what a recording holds,
//! byte for byte, after a session's calls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use super::*;

fn header() -> Header {
    Header {
        version: 2,
        width: 80,
        height: 24,
        timestamp: Some(1_700_000_000),
        command: None,
        title: None,
        env: None,
        portcullis: Some(SessionMetadata {
            session_id: "s".into(),
            principal: "alice".into(),
            container: "web1".into(),
            login: "root".into(),
            command: None,
        }),
    }
}

#[tokio::test]
async fn writes_parseable_asciicast_with_exact_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.cast");
    let mut rec = Recorder::create(&path, &header(), false, Duration::from_secs(1))
        .await
        .unwrap();
    rec.output(b"hello \xc3").await.unwrap();
    rec.output(b"\xa9\x1b[0m\r\n").await.unwrap();
    rec.input(b"secret").await.unwrap();
    rec.resize(100, 50).await.unwrap();
    let digest = rec.finish().await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(digest.output_bytes, 14);
    assert_eq!(
        Digest256 {
            output_bytes: 0,
            ..digest
        },
        digest_file(&path).unwrap()
    );
    let (h, events) = parse(&text).unwrap();
    assert_eq!(h, header());
    let codes: Vec<_> = events
        .iter()
        .map(|e| (e.code.as_str(), e.data.as_str()))
        .collect();
    // The two outputs came within COALESCE_SECONDS: one event.
    assert_eq!(codes, [("o", "hello é\u{1b}[0m\r\n"), ("r", "100x50")]);
    assert!(!text.contains("secret"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn output_nuls_are_left_out_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z.cast");
    let mut rec = Recorder::create(&path, &header(), true, Duration::from_secs(1))
        .await
        .unwrap();
    rec.output(&[0; 65536]).await.unwrap();
    rec.output(b"a\0b\0\0").await.unwrap();
    rec.input(b"\0q").await.unwrap();
    rec.output(b"\xc3").await.unwrap();
    let digest = rec.finish().await.unwrap();
    assert_eq!(digest.output_bytes, 65536 + 5 + 1);
    let (_, events) = read(&path).unwrap();
    let codes: Vec<_> = events
        .iter()
        .map(|e| (e.code.as_str(), e.data.as_str()))
        .collect();
    assert_eq!(codes, [("o", "ab"), ("i", "\0q"), ("o", "\u{FFFD}")]);
    let on_disk = digest_file(&path).unwrap();
    assert_eq!(
        (on_disk.bytes, on_disk.sha256),
        (digest.bytes, digest.sha256)
    );
}

#[tokio::test]
async fn a_burst_eight_times_the_pending_limit_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.cast");
    let mut rec = Recorder::create(&path, &header(), false, Duration::from_secs(60))
        .await
        .unwrap();
    // 8 MiB in 32 KiB reads: eight times the pending limit, so the
    // session waits for the writer (woken at WRITE_AT_BYTES, not by the
    // 60 s tick) several times over; every byte must come back, in order.
    let mut sent = String::new();
    for i in 0..256u32 {
        let chunk = format!("{i:05}\"").repeat(32 * 1024 / 6);
        rec.output(chunk.as_bytes()).await.unwrap();
        sent.push_str(&chunk);
    }
    let digest = rec.finish().await.unwrap();
    assert_eq!(digest.output_bytes, sent.len() as u64);
    let (_, events) = read(&path).unwrap();
    let got: String = events.iter().map(|e| e.data.as_str()).collect();
    assert!(
        got == sent,
        "{} of {} bytes came back",
        got.len(),
        sent.len()
    );
    assert_eq!(digest_file(&path).unwrap().sha256, digest.sha256);
}

#[tokio::test]
async fn input_recorded_only_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.cast");
    let mut rec = Recorder::create(&path, &header(), true, Duration::from_secs(1))
        .await
        .unwrap();
    rec.input(b"ls\r").await.unwrap();
    rec.finish().await.unwrap();
    let (_, events) = read(&path).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].code, "i");
    assert_eq!(events[0].data, "ls\r");
}

#[tokio::test]
async fn flushes_within_the_interval_without_finish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.cast");
    let mut rec = Recorder::create(&path, &header(), false, Duration::from_millis(50))
        .await
        .unwrap();
    rec.output(b"still here").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Not finished: the file must already hold the event.
    let (_, events) = read(&path).unwrap();
    assert_eq!(events[0].data, "still here");
    drop(rec);
}

/// The file's event lines after the header (which must be `header()`),
/// byte for byte except each time, written `T` (times are the clock's;
/// they must not go back).
fn event_lines(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let (first, events) = text.split_once('\n').unwrap();
    assert_eq!(first, serde_json::to_string(&header()).unwrap());
    let mut last = 0.0;
    let mut out = String::new();
    for line in events.lines() {
        let (time, rest) = line.strip_prefix('[').unwrap().split_once(',').unwrap();
        let time: f64 = time.parse().unwrap();
        assert!(time >= last, "{line}");
        last = time;
        out.push_str(&format!("[T,{rest}\n"));
    }
    out
}

/// Longer than the 10 ms in which output joins the event before it.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(15)).await;
}

#[tokio::test]
async fn markers_are_written_in_order_with_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.cast");
    let mut rec = Recorder::create(&path, &header(), false, Duration::from_secs(1))
        .await
        .unwrap();
    rec.marker(&Marker::Exec {
        command: "cat \"/etc/hosts\"",
    })
    .await
    .unwrap();
    rec.output(b"127.0.0.1 localhost\r\n").await.unwrap();
    pause().await;
    rec.output(b"::1 ").await.unwrap();
    // A marker closes the output event: output after it is a new one.
    rec.marker(&Marker::FileTransferred {
        path: "/tmp/x",
        direction: TransferDirection::Upload,
        bytes: 42,
    })
    .await
    .unwrap();
    rec.output(b"localhost\r\n").await.unwrap();
    pause().await;
    rec.resize(100, 50).await.unwrap();
    rec.marker(&Marker::Resized {
        cols: 100,
        rows: 50,
    })
    .await
    .unwrap();
    rec.marker(&Marker::Killed {
        reason: "incident \u{1b}[31m#42",
    })
    .await
    .unwrap();
    let digest = rec.finish().await.unwrap();
    assert_eq!(
        event_lines(&path),
        "[T,\"m\",\"exec: cat \\\"/etc/hosts\\\"\"]\n\
         [T,\"o\",\"127.0.0.1 localhost\\r\\n\"]\n\
         [T,\"o\",\"::1 \"]\n\
         [T,\"m\",\"upload: /tmp/x (42 bytes)\"]\n\
         [T,\"o\",\"localhost\\r\\n\"]\n\
         [T,\"r\",\"100x50\"]\n\
         [T,\"m\",\"resize: 100x50\"]\n\
         [T,\"m\",\"kill: incident \\u001b[31m#42\"]\n"
    );
    assert_eq!(digest_file(&path).unwrap().sha256, digest.sha256);
    let (_, events) = read(&path).unwrap();
    let labels: Vec<String> = markers(&events).into_iter().map(|(_, l)| l).collect();
    assert_eq!(
        labels,
        [
            "exec: cat \"/etc/hosts\"",
            "upload: /tmp/x (42 bytes)",
            "resize: 100x50",
            "kill: incident \u{1b}[31m#42",
        ]
    );
}

#[tokio::test]
async fn past_max_bytes_the_recorder_refuses_and_the_file_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.cast");
    let header_len = serde_json::to_vec(&header()).unwrap().len() as u64 + 1;
    let limits = RecorderLimits {
        max_bytes: header_len + 40,
        reserve_bytes: 0,
    };
    let mut rec = Recorder::create_limited(&path, &header(), false, Duration::from_secs(1), limits)
        .await
        .unwrap();
    rec.output(&[b'x'; 30]).await.unwrap();
    pause().await;
    let refused = rec.output(b"more").await.unwrap_err();
    assert!(
        matches!(refused, RecordingError::LimitReached { max_bytes } if max_bytes == header_len + 40),
        "{refused}"
    );
    assert_eq!(
        refused.user_message(),
        format!(
            "the session recording reached its limit of {} bytes",
            header_len + 40
        )
    );
    // Every later call is refused too; nothing more is written.
    assert!(matches!(
        rec.marker(&Marker::Note { text: "x" }).await,
        Err(RecordingError::LimitReached { .. })
    ));
    assert!(matches!(
        rec.resize(1, 1).await,
        Err(RecordingError::LimitReached { .. })
    ));
    // finish still closes the file and gives its digest.
    let digest = rec.finish().await.unwrap();
    let expected = format!(
        "[T,\"o\",\"{}\"]\n[T,\"m\",\"recording stopped: limit of {} bytes reached\"]\n",
        "x".repeat(30),
        header_len + 40
    );
    assert_eq!(event_lines(&path), expected);
    assert_eq!(digest.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(digest.output_bytes, 34);
}

#[tokio::test]
async fn an_input_tap_records_from_another_task_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.cast");
    let mut rec = Recorder::create(&path, &header(), true, Duration::from_secs(1))
        .await
        .unwrap();
    let tap = rec.input_tap();
    tokio::spawn(async move {
        tap.input(b"l\xc3").await.unwrap();
        tap.input(b"\xa9s\r").await.unwrap();
    })
    .await
    .unwrap();
    pause().await;
    rec.output(b"ok\r\n").await.unwrap();
    rec.finish().await.unwrap();
    assert_eq!(
        event_lines(&path),
        "[T,\"i\",\"lés\\r\"]\n[T,\"o\",\"ok\\r\\n\"]\n"
    );
    // Without input recording, a tap records nothing.
    let quiet = dir.path().join("q.cast");
    let rec = Recorder::create(&quiet, &header(), false, Duration::from_secs(1))
        .await
        .unwrap();
    rec.input_tap().input(b"secret").await.unwrap();
    rec.finish().await.unwrap();
    assert_eq!(event_lines(&quiet), "");
}

/// A tmpfs of `size` mounted on a fresh directory (as root), unmounted
/// when dropped: a real filesystem whose free space the test controls.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs (the tests run as root)");
        Tmpfs { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn the_writer_stops_before_eating_into_the_reserve() {
    let fs = Tmpfs::mount("4m");
    // Nothing may start when even the header would pass the reserve; no
    // file is left.
    let too_big = RecorderLimits {
        max_bytes: u64::MAX,
        reserve_bytes: 8 << 20,
    };
    let path = fs.path().join("a.cast");
    let refused =
        Recorder::create_limited(&path, &header(), false, Duration::from_secs(60), too_big)
            .await
            .err()
            .unwrap();
    assert!(
        matches!(refused, RecordingError::DiskReserve { reserve_bytes, .. } if reserve_bytes == 8 << 20)
    );
    assert!(!path.exists());
    // 2 MiB kept free of 4: the writer stops before the file reaches 2 MiB.
    let limits = RecorderLimits {
        max_bytes: u64::MAX,
        reserve_bytes: 2 << 20,
    };
    let path = fs.path().join("b.cast");
    let mut rec =
        Recorder::create_limited(&path, &header(), false, Duration::from_secs(60), limits)
            .await
            .unwrap();
    let chunk = vec![b'y'; 32 * 1024];
    let mut failure = None;
    for _ in 0..256 {
        if let Err(e) = rec.output(&chunk).await {
            failure = Some(e);
            break;
        }
    }
    let failure = failure.expect("the writer never stopped");
    assert!(
        matches!(failure, RecordingError::DiskReserve { reserve_bytes, free_bytes } if reserve_bytes == 2 << 20 && free_bytes >= 2 << 20),
        "{failure}"
    );
    assert_eq!(
        failure.user_message(),
        "the gateway is running out of space for session recordings"
    );
    let stat = nix::sys::statvfs::statvfs(fs.path()).unwrap();
    let free = stat.blocks_available() * stat.fragment_size();
    assert!(free >= 2 << 20, "only {free} bytes left free");
    // What reached the file is whole lines.
    assert!(read(&path).is_ok());
    assert!(matches!(
        rec.finish().await,
        Err(RecordingError::DiskReserve { .. })
    ));
}

#[tokio::test]
async fn new_sessions_are_refused_before_the_disk_of_the_database_or_recordings_fills() {
    let small = Tmpfs::mount("8m");
    let roomy = tempfile::tempdir().unwrap();
    let config = |state: &std::path::Path, recordings: &std::path::Path, min_free: u64| {
        let text = format!(
            "state_dir = \"{}\"\n[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"p\"\n\
             [recording]\ndir = \"{}\"\nmin_free_bytes = {min_free}\n",
            state.display(),
            recordings.display()
        );
        crate::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap()
    };
    // The SQLite database (in state_dir) on the small filesystem.
    let c = config(small.path(), roomy.path(), 16 << 20);
    let store = crate::store::Store::open(&c.database_url()).await.unwrap();
    let refused = Recordings::local(&c, store.clone())
        .may_start()
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StartRefused::LowDisk { path, free_bytes, min_free_bytes }
            if path == small.path() && *free_bytes < 8 << 20 && *min_free_bytes == 16 << 20),
        "{refused:?}"
    );
    assert_eq!(
        refused.to_string(),
        "the gateway is low on disk space; new sessions are refused until space is freed"
    );
    assert!(
        refused
            .detail()
            .ends_with("under recording.min_free_bytes (16 MiB)")
    );
    // The recordings on it, the database elsewhere: refused too.
    let c = config(roomy.path(), small.path(), 16 << 20);
    let store = crate::store::Store::open(&c.database_url()).await.unwrap();
    let refused = Recordings::local(&c, store.clone())
        .may_start()
        .await
        .unwrap_err();
    assert!(matches!(&refused, StartRefused::LowDisk { path, .. } if path == small.path()));
    // With room for the reserve, sessions may start.
    let c = config(small.path(), roomy.path(), 1 << 20);
    assert_eq!(Recordings::local(&c, store).may_start().await, Ok(()));
    // A directory whose space cannot be read: refused (fail closed).
    let c = config(roomy.path(), &roomy.path().join("missing"), 1 << 20);
    let store = crate::store::Store::open(&c.database_url()).await.unwrap();
    assert!(matches!(
        Recordings::local(&c, store).may_start().await,
        Err(StartRefused::Unknown(_))
    ));
}
