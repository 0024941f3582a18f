//! The systems of `basalt demo`, each run end to end in its short form, as a user runs it: the
//! command starts a temporary cluster of node processes, runs the system against it, checks the
//! system's invariant and exits 0 only if it held.

use std::process::{Command, Output};

use basalt_testkit::{run_cli, runtime, ClusterOptions, TestCluster};

const NODE: &str = env!("CARGO_BIN_EXE_basalt-test-node");

fn demo(args: &[&str]) -> Output {
    Command::new(NODE)
        .arg("demo")
        .args(args)
        .output()
        .expect("run basalt demo")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The line of the summary that starts with `what` (after its indentation).
fn figure<'a>(stdout: &'a str, what: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(what).map(str::trim))
}

#[test]
fn the_list_names_the_systems_and_an_unknown_name_is_refused() {
    let listed = demo(&["--list"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let names = String::from_utf8_lossy(&listed.stdout);
    for name in [
        "event-pipeline",
        "analytics",
        "circuit-breaker",
        "billing",
        "rewards",
        "notifications",
    ] {
        assert!(names.contains(name), "{}", text(&listed));
    }

    let unknown = demo(&["no-such-system", "--short"]);
    assert!(!unknown.status.success(), "{}", text(&unknown));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("no system named \"no-such-system\"") && stderr.contains("event-pipeline"),
        "{}",
        text(&unknown)
    );
}

#[test]
fn event_pipeline_processes_every_event_in_order_through_a_worker_kill() {
    let output = demo(&["event-pipeline", "--short"]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("invariant held"), "{all}");
    assert_eq!(figure(&stdout, "events processed"), Some("600 of 600"), "{all}");
    assert!(
        figure(&stdout, "worker killed").is_some_and(|w| w.starts_with("worker-1")),
        "{all}"
    );
    // The poison events went through the dead-letter topic and came back.
    let dead = figure(&stdout, "dead-lettered").and_then(|n| n.parse::<u64>().ok());
    let replayed = figure(&stdout, "replayed and processed").and_then(|n| n.parse::<u64>().ok());
    assert!(dead.is_some_and(|n| n > 0) && replayed >= dead, "{all}");
    // The temporary cluster is gone with its directory.
    assert!(
        stdout.contains("stopping the temporary cluster") && !stdout.contains("kept in"),
        "{all}"
    );
}

/// On a cluster it did not start (`--endpoints`), a demo runs once; a second run finds the first
/// one's topic and refuses to mix its events with them.
#[test]
fn on_given_endpoints_a_demo_runs_and_a_second_run_is_refused() {
    runtime().block_on(async {
        let cluster = TestCluster::start(NODE, ClusterOptions::default());
        let _client = cluster.client().await;
        let endpoints = cluster.endpoints();
        let first = run_cli(NODE, &endpoints, &["demo", "event-pipeline", "--short"], None).await;
        assert_eq!(first.code, Some(0), "{first:?}");
        assert!(first.stdout.contains("invariant held"), "{first:?}");
        assert!(!first.stdout.contains("temporary"), "{first:?}");
        let second = run_cli(NODE, &endpoints, &["demo", "event-pipeline", "--short"], None).await;
        assert_ne!(second.code, Some(0), "{second:?}");
        assert!(second.stderr.contains("topic orders.v1 already exists"), "{second:?}");
    });
}

#[test]
fn analytics_windows_equal_a_recomputation_from_the_stream_through_a_worker_kill() {
    let output = demo(&["analytics", "--short"]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("invariant held"), "{all}");
    assert_eq!(figure(&stdout, "views applied"), Some("1500"), "{all}");
    assert!(
        figure(&stdout, "worker killed").is_some_and(|w| w.starts_with("worker-1")),
        "{all}"
    );
    let late = figure(&stdout, "late views").and_then(|n| n.parse::<u64>().ok());
    assert!(late.is_some_and(|n| n > 0), "{all}");
}

#[test]
fn circuit_breaker_never_has_two_probes_and_opens_within_its_failures() {
    let output = demo(&["circuit-breaker", "--short"]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("invariant held"), "{all}");
    assert_eq!(figure(&stdout, "most probes in flight at once"), Some("1"), "{all}");
    // Both failing phases opened and closed the breaker; the hanging probe was abandoned.
    assert_eq!(stdout.matches("breaker open after").count(), 2, "{all}");
    assert_eq!(stdout.matches("breaker closed after").count(), 2, "{all}");
    assert!(
        figure(&stdout, "probes (abandoned at the lease deadline)").is_some_and(|p| p.ends_with("(1)")),
        "{all}"
    );
}

#[test]
fn billing_bills_each_tenant_once_per_period_for_what_was_metered() {
    let output = demo(&["billing", "--short"]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("invariant held"), "{all}");
    // 12 tenants x 2 periods, each billed once though three runs tried; plan limits refused some.
    assert_eq!(figure(&stdout, "invoices written"), Some("24"), "{all}");
    assert_eq!(
        figure(&stdout, "second invoices refused by idempotency key"),
        Some("48"),
        "{all}"
    );
    assert_eq!(figure(&stdout, "outbox messages relayed"), Some("24"), "{all}");
    assert!(
        figure(&stdout, "refused by plan limits").is_some_and(|r| !r.starts_with("0 calls")),
        "{all}"
    );
}

#[test]
fn rewards_issue_exactly_the_points_earned_within_the_daily_caps() {
    let output = demo(&["rewards", "--short"]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("invariant held"), "{all}");
    assert_eq!(figure(&stdout, "purchases"), Some("4000"), "{all}");
    // Some purchases met their day's cap: the linked pairs were refused whole.
    let refused = figure(&stdout, "accepted, refused at the cap")
        .and_then(|f| f.split(", ").nth(1))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(refused.is_some_and(|n| n > 0), "{all}");
}

#[test]
fn notifications_are_each_delivered_once_or_dead_lettered() {
    let output = demo(&["notifications", "--short"]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("invariant held"), "{all}");
    // The invalid phone numbers went to the dead-letter queue; the service's retries were
    // refused as duplicates; the rate limit suppressed some marketing.
    let ended = figure(&stdout, "delivered, dead-lettered").and_then(|f| {
        let (delivered, dead) = f.split_once(", ")?;
        Some((delivered.parse::<u64>().ok()?, dead.parse::<u64>().ok()?))
    });
    assert!(
        ended.is_some_and(|(delivered, dead)| delivered > 0 && dead > 0),
        "{all}"
    );
    assert!(
        figure(&stdout, "retried sends, enqueues refused as duplicates").is_some_and(|f| !f.ends_with(", 0")),
        "{all}"
    );
    assert!(
        figure(&stdout, "suppressed by the marketing rate limit").is_some_and(|f| f != "0"),
        "{all}"
    );
}

#[test]
fn orders_end_completed_or_compensated_through_a_kill_after_every_step() {
    let output = demo(&["orders", "--short"]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("invariant held"), "{all}");
    assert!(
        figure(&stdout, "workers killed").is_some_and(|k| k.starts_with("4 of 4 planned")),
        "{all}"
    );
    // Each killed worker's order was taken up again (more, if a saga outlived its visibility).
    let resumed = figure(&stdout, "orders resumed by another worker").and_then(|n| n.parse::<u64>().ok());
    assert!(resumed.is_some_and(|n| n >= 4), "{all}");
    // Both ways of ending other than completion happened: a declined payment, missing stock.
    for cancelled in [
        "cancelled: payment declined",
        "cancelled: out of stock (payment voided)",
    ] {
        assert!(figure(&stdout, cancelled).is_some_and(|n| n != "0"), "{all}");
    }
}

#[test]
fn feature_flag_changes_reach_every_watcher_in_three_regions() {
    let output = demo(&["feature-flags", "--short"]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("invariant held") && stdout.contains("3 temporary regions"),
        "{all}"
    );
    for region in ["us", "eu", "ap"] {
        // 60 changes reached each of the region's 3 watchers.
        let line = figure(&stdout, &format!("propagation to {region} caches"));
        assert!(line.is_some_and(|l| l.ends_with("(180 arrivals)")), "{all}");
    }
}

#[test]
fn a_multi_region_demo_refuses_plain_endpoints() {
    let output = demo(&["feature-flags", "--short", "--endpoints", "127.0.0.1:1"]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("runs in regions us, eu, ap"),
        "{}",
        text(&output)
    );
}

#[test]
fn rate_limits_hold_in_three_regions_and_each_policy_holds_while_cut_off() {
    let output = demo(&["rate-limiting", "--short"]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("invariant held"), "{all}");
    // Every policy answered during the cut: open admitted all, closed none.
    let cut = figure(&stdout, "during the cut, admitted of checks").unwrap_or_default();
    let counts: Vec<(u64, u64)> = cut
        .split("; ")
        .filter_map(|part| {
            let words: Vec<&str> = part.split(' ').collect();
            let n = words.len();
            Some((
                words.get(n.checked_sub(3)?)?.parse().ok()?,
                words.get(n - 1)?.parse().ok()?,
            ))
        })
        .collect();
    assert_eq!(counts.len(), 3, "{all}");
    assert!(counts.iter().all(|&(_, of)| of > 0), "{all}");
    assert_eq!(counts[0].0, counts[0].1, "fail open admits every check: {all}");
    assert_eq!(counts[1].0, 0, "fail closed admits none: {all}");
}

#[test]
fn cdn_never_serves_a_purged_object_once_the_purge_reached_the_node() {
    let output = demo(&["cdn", "--short"]);
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("invariant held"), "{all}");
    assert_eq!(figure(&stdout, "purges"), Some("6"), "{all}");
    for region in ["us", "eu", "ap"] {
        assert!(
            figure(&stdout, &format!("purge applied on {region} nodes")).is_some(),
            "{all}"
        );
    }
    // The edges served most requests from their stores.
    let ratio = figure(&stdout, "requests, hit ratio")
        .and_then(|f| f.split(", ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|r| r.parse::<f64>().ok());
    assert!(ratio.is_some_and(|r| r > 50.0), "{all}");
}

/// On a cluster it did not start (`basalt dev --regions us,eu,ap --origin ...`), the cdn serves
/// the origin the cluster file names and reads every node's edge the file lists.
#[test]
fn cdn_runs_on_a_basalt_dev_cluster_given_by_its_cluster_file() {
    use std::time::Duration;

    let home = tempfile::tempdir().expect("home");
    let origin = basalt_testkit::local_ports::reserve().expect("origin port");
    let (mut command, _ports) = basalt_testkit::dev_regions_command(NODE, home.path(), &["us", "eu", "ap"], 2);
    let mut dev = command
        .args(["--wan-latency", "5ms", "--wan-jitter", "1ms"])
        .args(["--origin", &format!("/=http://{}", origin.addr())])
        .spawn()
        .expect("basalt dev --regions");
    let line_rx = basalt_testkit::line_receiver(dev.stdout.take().expect("stdout"));
    let mut printed = Vec::new();
    let ready = loop {
        match line_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.trim_start().starts_with("ap leader:") => break true,
            Ok(line) => printed.push(line),
            Err(_) => break false,
        }
    };
    let cluster_file = home.path().join("dev").join("cluster.json");
    let output = ready.then(|| {
        Command::new(NODE)
            .args(["demo", "cdn", "--short", "--cluster-file"])
            .arg(&cluster_file)
            .output()
            .expect("run basalt demo")
    });
    // SAFETY: kill(2) on our own child; it stops its nodes on SIGTERM.
    unsafe {
        libc::kill(dev.id() as i32, libc::SIGTERM);
    }
    let _ = dev.wait();
    assert!(ready, "basalt dev --regions did not elect every leader: {printed:?}");
    let output = output.expect("ran");
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("invariant held") && !stdout.contains("temporary"),
        "{all}"
    );
    assert_eq!(figure(&stdout, "edges (regions x nodes)"), Some("6 (3 x 2)"), "{all}");
}

/// A cluster file of a cluster started without an origin is refused with what to start instead.
#[test]
fn cdn_refuses_a_cluster_without_an_origin() {
    let home = tempfile::tempdir().expect("home");
    let file = home.path().join("cluster.json");
    let region = |name: &str, port: u16| serde_json::json!({"name": name, "endpoints": [format!("127.0.0.1:{port}")], "edges": []});
    let record = serde_json::json!({
        "endpoints": ["127.0.0.1:1"],
        "regions": [region("us", 1), region("eu", 2), region("ap", 3)],
    });
    std::fs::write(&file, record.to_string()).expect("write the cluster file");
    let output = Command::new(NODE)
        .args(["demo", "cdn", "--short", "--cluster-file"])
        .arg(&file)
        .output()
        .expect("run basalt demo");
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("basalt dev --regions us,eu,ap --origin /=http://127.0.0.1:PORT"),
        "{}",
        text(&output)
    );
}
