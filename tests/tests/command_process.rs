//! The `basalt` process itself: what ends it and what does not. A command holds sockets (the
//! SDK's connections; `basalt demo`'s link proxies and origin), and a peer closing one of them
//! must be an error it handles; only a closed stdout ends it as it ends other Unix tools.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NODE: &str = env!("CARGO_BIN_EXE_basalt-test-node");

/// The signals a process ignores, from its `/proc/PID/status`.
fn ignored_signals(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the status");
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .expect("a SigIgn line");
    u64::from_str_radix(mask.trim(), 16).expect("a hex mask")
}

/// `basalt demo rate-limiting` once died without a word when its link proxy cut a connection
/// under an SDK client: the command had SIGPIPE back at its default, and the client's next
/// write into the reset socket raised it. Every command, client commands included, must keep
/// it ignored so that a reset is an error the SDK retries.
#[test]
fn a_client_command_ignores_sigpipe_so_a_reset_socket_cannot_kill_it() {
    // A "node" that accepts and never answers: the command is then surely past its start-up
    // (its runtime runs and its SDK connects) and waits, while its signal mask is read.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = listener.local_addr().expect("address").to_string();
    let mut child = Command::new(NODE)
        .args(["kv", "get", "some-key", "--endpoints", &endpoint])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run basalt kv get");
    let (connection, _) = listener.accept().expect("the command connects");
    let ignored = ignored_signals(child.id());
    let _ = child.kill();
    let _ = child.wait();
    drop(connection);
    let sigpipe = 1u64 << (libc::SIGPIPE - 1);
    assert_ne!(ignored & sigpipe, 0, "SIGPIPE is not ignored: SigIgn {ignored:#x}");
}

/// `basalt ... | head`: once the reader is gone, the command ends by SIGPIPE as other tools do,
/// quietly, instead of a panic about a failed print.
#[test]
fn a_closed_stdout_ends_a_command_by_sigpipe_without_a_word() {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut child = Command::new(NODE)
        .args(["demo", "--list"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run basalt demo --list");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the command did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}, stderr: {stderr}");
    assert_eq!(stderr, "");
}

/// `basalt dev` stopped by SIGTERM right after it started its nodes (while it waits for a
/// leader) stops them: none is left running. Its signal handler once came to life only after
/// that wait, so an early signal ended it at once and orphaned its nodes, which then held their
/// ports (RESP's 6379) against the next cluster.
#[test]
fn basalt_dev_stopped_by_a_signal_at_once_leaves_no_node_running() {
    use std::io::{BufRead, BufReader};

    let home = tempfile::tempdir().expect("home");
    let (mut command, _ports) = basalt_testkit::dev_command(NODE, home.path());
    let mut dev = command.spawn().expect("basalt dev");
    let mut lines = BufReader::new(dev.stdout.take().expect("stdout")).lines();
    let mut pids = Vec::new();
    // The node line comes before the wait for a leader; signal as soon as it is out.
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(pid) = line
            .split("  pid ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        {
            pids.push(pid.parse::<i32>().expect("a pid"));
        }
        if !pids.is_empty() {
            break;
        }
    }
    assert_eq!(pids.len(), 1, "a node line");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(dev.id() as i32, libc::SIGTERM);
    }
    let status = dev.wait().expect("dev exits");
    let deadline = Instant::now() + Duration::from_secs(15);
    // SAFETY: kill(2) with signal 0 only asks whether the process exists.
    let alive = |pid: i32| unsafe { libc::kill(pid, 0) == 0 };
    while pids.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<i32> = pids.iter().copied().filter(|&pid| alive(pid)).collect();
    for &pid in &left {
        // SAFETY: cleaning up what the test found; the pid was a node of this test.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    assert!(
        left.is_empty(),
        "nodes left running after dev ended ({status:?}): {left:?}"
    );
    assert!(status.success(), "dev ended by {status:?}, not in order");
}
