//! Unit tests of the in-container SFTP handler over an in-memory stream,
//! with russh-sftp's own client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use crate::sftp::normalise;
use russh_sftp::protocol::{Packet, StatusCode};

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

/// Runs the handler and returns russh-sftp's raw client (for extended
/// requests), plus the events file.
async fn serve_raw() -> (
    russh_sftp::client::RawSftpSession,
    tempfile::NamedTempFile,
    russh_sftp::protocol::Version,
) {
    let events = tempfile::NamedTempFile::new().unwrap();
    let sink = EventSink {
        out: events.reopen().unwrap(),
    };
    let (a, b) = tokio::io::duplex(1 << 20);
    let (done, _rx) = oneshot::channel();
    russh_sftp::server::run(a, SftpHandler::new(false, sink, done)).await;
    let raw = russh_sftp::client::RawSftpSession::new(b);
    let version = raw.init().await.unwrap();
    (raw, events, version)
}

fn sftp_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

fn status_code(p: &Packet) -> StatusCode {
    match p {
        Packet::Status(s) => s.status_code,
        other => panic!("not a status: {other:?}"),
    }
}

#[tokio::test]
async fn openssh_extensions_are_announced_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(d("a"), b"one").unwrap();
    std::fs::write(d("b"), b"two").unwrap();
    let (raw, _events, version) = serve_raw().await;
    for (name, v) in [
        ("posix-rename@openssh.com", "1"),
        ("statvfs@openssh.com", "2"),
        ("hardlink@openssh.com", "1"),
        ("fsync@openssh.com", "1"),
        ("limits@openssh.com", "1"),
        ("expand-path@openssh.com", "1"),
        ("copy-data", "1"),
    ] {
        assert_eq!(
            version.extensions.get(name).map(String::as_str),
            Some(v),
            "{name} not announced: {:?}",
            version.extensions
        );
    }
    // limits: large reads and writes.
    let limits = raw.limits().await.unwrap();
    assert_eq!(limits.max_read_len, u64::from(MAX_READ_BYTES));
    assert_eq!(limits.max_write_len, 256 * 1024);
    assert_eq!(limits.max_packet_len, u64::from(MAX_PACKET_BYTES));
    assert_eq!(limits.max_open_handles, 256);
    // statvfs: the kernel's numbers.
    let s = raw.statvfs(d("a")).await.unwrap();
    let want = nix::sys::statvfs::statvfs(dir.path()).unwrap();
    assert_eq!(s.blocks, want.blocks());
    assert_eq!(s.block_size, want.block_size());
    assert_eq!(s.name_max, want.name_max());
    // hardlink: a second name for the same inode.
    raw.hardlink(d("a"), d("h")).await.unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(d("h")).unwrap().ino(),
        std::fs::metadata(d("a")).unwrap().ino()
    );
    // posix-rename replaces the target (plain rename refuses).
    assert!(raw.rename(d("a"), d("b")).await.is_err());
    let mut data = sftp_string(&d("a"));
    data.extend(sftp_string(&d("b")));
    let p = raw
        .extended("posix-rename@openssh.com", data)
        .await
        .unwrap();
    assert_eq!(status_code(&p), StatusCode::Ok);
    assert_eq!(std::fs::read(d("b")).unwrap(), b"one");
    assert!(!dir.path().join("a").exists());
    // fsync on an open handle.
    let h = raw
        .open(d("b"), OpenFlags::READ, FileAttributes::empty())
        .await
        .unwrap()
        .handle;
    raw.fsync(h.clone()).await.unwrap();
    raw.close(h).await.unwrap();
    // expand-path: `~` is the home (the cwd the session started in).
    let home = std::env::current_dir().unwrap().display().to_string();
    let name = raw.expand_path("~").await.unwrap();
    assert_eq!(name.files[0].filename, home);
    let name = raw.expand_path("~/src").await.unwrap();
    assert_eq!(name.files[0].filename, format!("{home}/src"));
    // copy-data (OpenSSH 9's `sftp cp`): server-side, from handle to handle.
    let src = raw
        .open(d("b"), OpenFlags::READ, FileAttributes::empty())
        .await
        .unwrap()
        .handle;
    let dst = raw
        .open(
            d("c"),
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            FileAttributes::empty(),
        )
        .await
        .unwrap()
        .handle;
    let mut req = sftp_string(&src);
    req.extend(0u64.to_be_bytes());
    req.extend(0u64.to_be_bytes());
    req.extend(sftp_string(&dst));
    req.extend(0u64.to_be_bytes());
    let p = raw.extended("copy-data", req).await.unwrap();
    assert_eq!(status_code(&p), StatusCode::Ok);
    raw.close(src).await.unwrap();
    raw.close(dst).await.unwrap();
    assert_eq!(std::fs::read(d("c")).unwrap(), b"one");
    // Unknown extensions are unsupported.
    let p = raw.extended("nope@example.com", Vec::new()).await.unwrap();
    assert_eq!(status_code(&p), StatusCode::OpUnsupported);
}

#[tokio::test]
async fn setstat_applies_owner_and_group() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("owned");
    std::fs::write(&f, b"x").unwrap();
    let (client, _events) = serve(false).await;
    let attrs = FileAttributes {
        uid: Some(4321),
        gid: Some(4322),
        ..Default::default()
    };
    client
        .set_metadata(f.display().to_string(), attrs)
        .await
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&f).unwrap();
    assert_eq!((m.uid(), m.gid()), (4321, 4322));
}

#[tokio::test]
async fn realpath_refuses_a_missing_parent_and_allows_a_missing_name() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let (client, _events) = serve(false).await;
    let new = base.join("new-name").display().to_string();
    assert_eq!(client.canonicalize(&new).await.unwrap(), new);
    let orphan = base.join("no-such-dir/name").display().to_string();
    assert!(
        client.canonicalize(&orphan).await.is_err(),
        "realpath of a path whose parent is missing must fail"
    );
}

#[tokio::test]
async fn ranged_reads_and_out_of_order_writes_get_true_digests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f").display().to_string();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let (raw, events, _) = serve_raw().await;
    // A resumed download: from the middle to the end.
    let h = raw
        .open(&path, OpenFlags::READ, FileAttributes::empty())
        .await
        .unwrap()
        .handle;
    let got = raw.read(h.clone(), 40_000, 60_000).await.unwrap().data;
    assert_eq!(got, data[40_000..]);
    raw.close(h).await.unwrap();
    // An upload written back to front, through a write-only handle.
    let up = dir.path().join("up").display().to_string();
    let h = raw
        .open(
            &up,
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            FileAttributes::empty(),
        )
        .await
        .unwrap()
        .handle;
    raw.write(h.clone(), 50_000, data[50_000..].to_vec())
        .await
        .unwrap();
    raw.write(h.clone(), 0, data[..50_000].to_vec())
        .await
        .unwrap();
    raw.close(h).await.unwrap();
    assert_eq!(std::fs::read(&up).unwrap(), data);
    let empty = hex::encode(Sha256::digest(b""));
    let whole = hex::encode(Sha256::digest(&data));
    let r = records(&events);
    assert_eq!(r.len(), 2, "{r:?}");
    for rec in &r {
        assert_ne!(rec.sha256, empty, "{rec:?}");
        assert!(!rec.sequential, "{rec:?}");
        // Not sequential: the digest of the file as left.
        assert_eq!(rec.sha256, whole, "{rec:?}");
    }
    assert_eq!((r[0].direction, r[0].bytes), (Direction::Read, 60_000));
    assert_eq!((r[1].direction, r[1].bytes), (Direction::Write, 100_000));
}

#[tokio::test]
async fn transfers_name_the_file_a_symlink_leads_to() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::write(base.join("real"), b"secret").unwrap();
    std::os::unix::fs::symlink(base.join("real"), base.join("x")).unwrap();
    let (client, events) = serve(false).await;
    assert_eq!(
        client
            .read(base.join("x").display().to_string())
            .await
            .unwrap(),
        b"secret"
    );
    let r = records(&events);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].path, base.join("real").display().to_string());
}

#[tokio::test]
async fn directory_listings_show_types_and_link_counts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"abc").unwrap();
    std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
    nix::unistd::mkfifo(
        &dir.path().join("p"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let (raw, _events, _) = serve_raw().await;
    let h = raw
        .opendir(dir.path().display().to_string())
        .await
        .unwrap()
        .handle;
    let names = raw.readdir(h).await.unwrap().files;
    let line = |n: &str| {
        names
            .iter()
            .find(|f| f.filename == n)
            .unwrap_or_else(|| panic!("no {n} in {names:?}"))
            .longname
            .clone()
    };
    assert!(line("l").starts_with("lrwxrwxrwx    1 "), "{}", line("l"));
    assert!(line("p").starts_with("prw-------    1 "), "{}", line("p"));
    assert!(line("f").starts_with("-rw-r--r--    1 "), "{}", line("f"));
}
