//! The process harness against real processes (the shell): a program that dies at
//! start-up is reported at once, one that ignores SIGTERM is killed after its grace
//! period, a supervised one that crashes is started again, and a stopped one starts anew.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::process::{Ended, HarnessError, Log, Process, Program};

/// `body` as an executable shell script, run with its log in a file of its own.
fn program(label: &str, body: &str, supervised: bool) -> (Process, PathBuf) {
    let dir = std::env::temp_dir().join(format!("harness-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join(format!("{label}.sh"));
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    let mut permissions = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).unwrap();
    let log = dir.join(format!("{label}.log"));
    let _ = std::fs::remove_file(&log);
    let program = Program {
        label: label.to_owned(),
        binary: script,
        args: Vec::new(),
        env: Vec::new(),
        log: Log::File(log.clone()),
        supervised,
    };
    (Process::new(program), log)
}

/// Waits until the script has said `running` (after installing its traps) `runs` times.
async fn running(log: &std::path::Path, runs: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let said = std::fs::read_to_string(log).unwrap_or_default();
        if said.lines().filter(|l| *l == "running").count() >= runs {
            return;
        }
        assert!(Instant::now() < deadline, "never running: {said:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port nothing listens on: readiness can never succeed there.
fn closed_port_url() -> String {
    let port = harness::postgres::free_port().unwrap();
    format!("http://127.0.0.1:{port}/readyz")
}

#[tokio::test]
async fn a_program_that_dies_at_start_up_is_reported_at_once_not_at_the_deadline() {
    let (mut process, log) = program("dies", "echo 'cannot start: no config' >&2; exit 3", false);
    process.start();
    let started = Instant::now();
    let error = process
        .wait_ready(&closed_port_url(), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "{error}");
    assert!(
        matches!(&error, HarnessError::EndedBeforeReady { ended, .. } if ended.contains("exit status: 3")),
        "{error}"
    );
    assert!(
        error.to_string().contains(&log.display().to_string()),
        "{error}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("cannot start: no config"), "{logged}");
}

#[tokio::test]
async fn a_program_that_ignores_sigterm_is_killed_after_its_grace_period() {
    let (mut process, log) = program(
        "stubborn",
        "trap '' TERM; echo running; while :; do sleep 0.05; done",
        false,
    );
    process.start();
    running(&log, 1).await;
    let stopping = Instant::now();
    let ended = process.stop(Duration::from_millis(300)).await.unwrap();
    assert!(stopping.elapsed() >= Duration::from_millis(300), "{ended}");
    match ended {
        Ended::Stopped(Some(status)) => {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "{status}");
        }
        other => panic!("{other}"),
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("did not stop within"), "{logged}");
}

#[tokio::test]
async fn a_program_that_exits_on_sigterm_stops_cleanly_and_starts_again() {
    let (mut process, log) = program(
        "polite",
        "trap 'exit 0' TERM; echo running; while :; do sleep 0.05; done",
        false,
    );
    for run in 1..=2 {
        process.start();
        running(&log, run).await;
        match process.stop(Duration::from_secs(10)).await.unwrap() {
            Ended::Stopped(Some(status)) => assert!(status.success(), "{status}"),
            other => panic!("{other}"),
        }
        assert!(process.has_ended());
    }
}

#[tokio::test]
async fn a_supervised_program_that_crashes_is_started_again() {
    let marker = std::env::temp_dir().join(format!("harness-runs-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let body = format!(
        "echo run >> {marker}; trap 'exit 0' TERM; sleep 0.1; exit 1",
        marker = marker.display()
    );
    let (mut process, log) = program("crashy", &body, true);
    process.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let runs = std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .lines()
            .count();
        if runs >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {runs} run(s)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!process.has_ended(), "a supervised program keeps running");
    process.stop(Duration::from_secs(5)).await.unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("CRASHED (exit status: 1)"), "{logged}");
    let _ = std::fs::remove_file(&marker);
}
