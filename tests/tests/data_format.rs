//! The data format of what a node persists (basalt-codec): a data directory written by a build of
//! another format is refused by name, and one written by a build of this format (checked in as a
//! fixture by `tests/fixtures/write-fixture.sh`) opens and answers exactly what was written.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use basalt_client::{FetchOptions, ReadConsistency, ReceiveOptions};
use basalt_testkit::local_ports;
use basalt_testkit::{runtime, ClusterOptions, TestCluster};

const NODE: &str = env!("CARGO_BIN_EXE_basalt-test-node");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
        .join("node-1")
}

/// Copies a fixture directory, so a test never changes the checked-in one.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the fixture") {
        let entry = entry.expect("fixture entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a fixture file");
        }
    }
}

fn files_of(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("file type").is_dir() {
            files.extend(files_of(&entry.path()));
        } else {
            files.push((entry.path(), std::fs::read(entry.path()).expect("read")));
        }
    }
    files.sort();
    files
}

/// Starts a node on `data` and waits for it to exit by itself; its stderr. Panics if it is still
/// running after 30 s or exits successfully.
fn start_expecting_refusal(data: &Path) -> String {
    let port = local_ports::reserve().expect("port");
    let http = local_ports::reserve().expect("port");
    let mut node = Command::new(NODE)
        .args(["start", "--id", "1", "--listen", &port.addr().to_string()])
        .args(["--http", &http.addr().to_string()])
        .arg("--data-dir")
        .arg(data)
        .args(["--peers", &format!("1={}", port.addr())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the node");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = node.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            panic!("a node on a data directory it cannot read did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut node.stderr.take().expect("stderr"), &mut stderr).expect("read stderr");
    assert!(!status.success(), "the node must refuse the directory: {stderr}");
    stderr
}

/// Directories written by builds of an earlier format (1: bincode, no stamp; 2: postcard with
/// flat ops, stamped `2`) make the node stop at start, naming both formats, before it opens or
/// changes anything in them.
#[test]
fn data_directories_of_earlier_formats_are_refused_by_name_and_left_untouched() {
    for (fixture_name, found) in [("data-format-1", 1), ("data-format-2", 2)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("node-1");
        copy_dir(&fixture(fixture_name), &data);
        let before = files_of(&data);
        let stderr = start_expecting_refusal(&data);
        assert!(
            stderr.contains(&format!("holds data format {found}, this build reads 3")),
            "{fixture_name}: the refusal names both formats: {stderr}"
        );
        let mut after = files_of(&data);
        // The node creates its lock file before the check; nothing else changes.
        after.retain(|(path, _)| path != &data.join("LOCK"));
        assert_eq!(before, after, "{fixture_name}: a refused directory is left as it was");
    }
}

/// Defence in depth: even under a forged stamp, a log of format 1 or 2 is refused when it is
/// opened, naming its file (format 1: the meta file, read first, or a segment, by its version 2;
/// format 2: a segment, by its version 3), and never misread.
#[test]
fn an_earlier_log_under_a_forged_stamp_is_refused_not_misread() {
    for (fixture_name, segment_version) in [("data-format-1", 2), ("data-format-2", 3)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("node-1");
        copy_dir(&fixture(fixture_name), &data);
        std::fs::write(data.join("FORMAT"), "basalt data format 3\n").expect("forge the stamp");
        let stderr = start_expecting_refusal(&data);
        assert!(
            stderr.contains("opening the raft log"),
            "{fixture_name}: the log refuses: {stderr}"
        );
        let by_version = format!("segment format version {segment_version}, this build reads version 4");
        assert!(
            (segment_version == 2 && stderr.contains("log.meta")) || stderr.contains(&by_version),
            "{fixture_name}: naming the file or the segment version: {stderr}"
        );
    }
}

/// The fixture of format 3 was written by `tests/fixtures/write-fixture.sh`: every record of it
/// reads back, and the node accepts new writes on top. A change of the encoding that forgets to
/// bump the data format fails here.
#[test]
fn a_data_directory_of_format_3_opens_and_answers_what_it_holds() {
    runtime().block_on(async {
        let mut cluster = TestCluster::plan(
            NODE,
            ClusterOptions {
                nodes: 1,
                ..Default::default()
            },
        );
        copy_dir(&fixture("data-format-3"), &cluster.specs[&1].data_dir);
        cluster.launch();
        let client = cluster.client().await;

        let kv = client.kv();
        let a = kv.get("fixture/a").await.expect("get a").expect("fixture/a is there");
        assert_eq!(a.value, b"alpha");
        let b = kv.get("fixture/b").await.expect("get b").expect("fixture/b is there");
        assert_eq!((b.value.as_slice(), b.version), (&b"beta-2"[..], 2));
        assert!(b.mod_revision > a.mod_revision);
        assert_eq!(kv.get("fixture/gone").await.expect("get gone"), None);
        assert_eq!(
            kv.scan("fixture/", 10).await.expect("scan"),
            vec![
                (b"fixture/a".to_vec(), b"alpha".to_vec()),
                (b"fixture/b".to_vec(), b"beta-2".to_vec())
            ]
        );

        assert_eq!(client.counter("fixture/hits").get().await.expect("counter"), 8);

        let accounts = client.ledger().lookup_accounts(&[1, 2]).await.expect("accounts");
        let posted: Vec<(u128, u128, u128)> = accounts
            .iter()
            .map(|a| (a.id, a.debits_posted, a.credits_posted))
            .collect();
        assert_eq!(posted, vec![(1, 42, 0), (2, 0, 42)]);
        assert!(accounts.iter().all(|a| a.ledger == 7 && a.code == 1));

        let jobs = client
            .queue("fixture-jobs")
            .receive(10, ReceiveOptions::default())
            .await
            .expect("receive");
        let payloads: Vec<&[u8]> = jobs.iter().map(|m| m.payload.as_slice()).collect();
        assert_eq!(payloads, vec![&b"job-1"[..], &b"job-2"[..]]);

        let fetched = client
            .streams()
            .fetch(
                "fixture-events",
                0,
                0,
                FetchOptions {
                    max_records: 10,
                    max_bytes: 1 << 20,
                    wait: Duration::ZERO,
                    consistency: ReadConsistency::Linearizable,
                },
            )
            .await
            .expect("fetch");
        let values: Vec<&[u8]> = fetched.records.iter().map(|r| r.value.as_slice()).collect();
        assert_eq!(values, vec![&b"event-1"[..], &b"event-2"[..]]);

        // The restored node goes on: a write on top of the fixture is applied and read back.
        kv.put("fixture/c", "gamma").await.expect("put on top");
        assert_eq!(kv.get("fixture/c").await.expect("get c").expect("c").value, b"gamma");
    });
}
