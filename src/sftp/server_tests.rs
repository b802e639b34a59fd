//! Unit tests of the in-container SFTP handler over an in-memory stream,
//! with russh-sftp's own client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

/// Runs the handler on one end of an in-memory stream and returns a
/// russh-sftp client on the other, plus the events file.
async fn serve(read_only: bool) -> (russh_sftp::client::SftpSession, tempfile::NamedTempFile) {
    let events = tempfile::NamedTempFile::new().unwrap();
    let sink = EventSink {
        out: events.reopen().unwrap(),
    };
    let (a, b) = tokio::io::duplex(1 << 20);
    let (done, _rx) = oneshot::channel();
    russh_sftp::server::run(a, SftpHandler::new(read_only, sink, done)).await;
    (
        russh_sftp::client::SftpSession::new(b).await.unwrap(),
        events,
    )
}

fn records(events: &tempfile::NamedTempFile) -> Vec<TransferRecord> {
    std::fs::read_to_string(events.path())
        .unwrap()
        .lines()
        .map(|l| TransferRecord::parse(l.as_bytes()).unwrap())
        .collect()
}

#[tokio::test]
async fn uploads_and_downloads_are_digested() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f").display().to_string();
    let (client, events) = serve(false).await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    {
        use tokio::io::AsyncWriteExt;
        let mut f = client.create(&path).await.unwrap();
        f.write_all(&data).await.unwrap();
        f.shutdown().await.unwrap();
    }
    assert_eq!(client.read(&path).await.unwrap(), data);
    let want = hex::encode(Sha256::digest(&data));
    let r = records(&events);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].direction, Direction::Write);
    assert_eq!(r[1].direction, Direction::Read);
    for rec in &r {
        assert_eq!(rec.sha256, want);
        assert_eq!(rec.bytes, data.len() as u64);
        assert!(rec.sequential && rec.closed);
    }
}

#[tokio::test]
async fn read_only_refuses_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("e");
    std::fs::write(&existing, b"keep").unwrap();
    let e = existing.display().to_string();
    let (client, _events) = serve(true).await;
    assert_eq!(client.read(&e).await.unwrap(), b"keep");
    let new = dir.path().join("n").display().to_string();
    assert!(client.write(&new, b"x").await.is_err());
    assert!(client.remove_file(&e).await.is_err());
    assert!(client.rename(&e, &new).await.is_err());
    assert!(
        client
            .create_dir(dir.path().join("d").display().to_string())
            .await
            .is_err()
    );
    assert!(client.symlink(&new, &e).await.is_err());
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep");
    assert!(!dir.path().join("n").exists() && !dir.path().join("d").exists());
}

#[test]
fn normalise_never_climbs_above_root() {
    assert_eq!(normalise("/../../etc/shadow"), "/etc/shadow");
    assert_eq!(normalise("/a/./b/../c"), "/a/c");
}

#[test]
fn stream_digest_tracks_order() {
    let mut s = Stream::new();
    s.add(0, b"ab");
    s.add(2, b"c");
    assert!(s.sequential);
    assert_eq!(
        hex::encode(s.hasher.clone().finalize()),
        hex::encode(Sha256::digest(b"abc"))
    );
    s.add(10, b"x");
    assert!(!s.sequential);
    assert_eq!(s.bytes, 4);
}
