//! The one process harness: run a binary with its environment and its log (a file, or
//! prefixed lines on stdout like `skaffold dev`), wait for its `/readyz` with a
//! deadline, stop it with SIGTERM and a deadline then SIGKILL, start it again. A
//! supervised process that crashes is reported and restarted with a growing delay.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longer than any service's graceful shutdown (it drains, then flushes its outbox).
pub const STOP_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what} is not ready after {} s; {log}", .deadline.as_secs())]
    NotReady {
        what: String,
        deadline: Duration,
        log: String,
    },
    #[error("{what} ended before it was ready ({ended}); {log}")]
    EndedBeforeReady {
        what: String,
        ended: String,
        log: String,
    },
    #[error("{what} is not running")]
    NotRunning { what: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Writes a line to stdout and ignores a closed pipe: when `devstack | tee` gets Ctrl-C,
/// tee dies too, and whoever prints must still go on to stop everything in order.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Colours only for a person at a terminal; logs redirected to a file stay plain.
fn colored() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// The `[name] ` in front of each of a process's log lines.
#[derive(Debug, Clone)]
pub struct Prefix(String);

impl Prefix {
    pub fn new(name: &str, color: &str) -> Self {
        if colored() {
            Self(format!("\x1b[{color}m[{name}]\x1b[0m "))
        } else {
            Self(format!("[{name}] "))
        }
    }

    pub fn say(&self, line: &str) {
        say(&format!("{}{line}", self.0));
    }

    /// A line nobody should miss.
    pub fn shout(&self, line: &str) {
        if colored() {
            say(&format!("{}\x1b[1;41;97m {line} \x1b[0m", self.0));
        } else {
            say(&format!("{}!!! {line}", self.0));
        }
    }
}

/// Where a process's stdout and stderr go.
#[derive(Debug, Clone)]
pub enum Log {
    /// Appended to a file (tests and the load tool keep logs out of their own output).
    File(PathBuf),
    /// Each line on our stdout behind the prefix.
    Prefixed(Prefix),
}

/// What to run: a binary, its whole environment, its log.
#[derive(Debug, Clone)]
pub struct Program {
    pub label: String,
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: Log,
    /// Restart it when it exits without being asked to.
    pub supervised: bool,
}

impl Program {
    /// Sets `name` in its environment, replacing an earlier value.
    pub fn set_env(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.env.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = value,
            None => self.env.push((name.to_owned(), value)),
        }
    }

    /// What the harness itself has to say about the program goes where its log goes.
    fn notice(&self, loud: bool, line: &str) {
        match &self.log {
            Log::Prefixed(prefix) if loud => prefix.shout(line),
            Log::Prefixed(prefix) => prefix.say(line),
            Log::File(path) => {
                use std::io::Write;
                let file = std::fs::OpenOptions::new().append(true).open(path);
                if let Ok(mut file) = file {
                    let _ = writeln!(file, "harness: {line}");
                }
            }
        }
    }

    fn where_to_look(&self) -> String {
        match &self.log {
            Log::File(path) => format!("its log is {}", path.display()),
            Log::Prefixed(_) => "its log lines above say why".into(),
        }
    }
}

/// How a run of a program ended.
#[derive(Debug, Clone)]
pub enum Ended {
    /// Asked to stop; the status it stopped with (none if it was between restarts).
    Stopped(Option<ExitStatus>),
    /// Exited on its own (an unsupervised program).
    Exited(ExitStatus),
    /// Could not be started, or lost track of.
    Failed(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stopped(Some(status)) => write!(f, "stopped: {status}"),
            Self::Stopped(None) => write!(f, "stopped"),
            Self::Exited(status) => write!(f, "exited: {status}"),
            Self::Failed(why) => write!(f, "{why}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopRequest {
    /// SIGTERM, then SIGKILL after the grace period.
    Terminate(Duration),
    /// SIGKILL at once, as a crash.
    Kill,
}

/// One program, started and stopped as often as wanted. The child is owned by a monitor
/// task, so a crash is noticed (and a supervised program restarted) while nobody looks.
#[derive(Debug)]
pub struct Process {
    pub program: Program,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    stop: watch::Sender<Option<StopRequest>>,
    pid: Arc<AtomicU32>,
    monitor: JoinHandle<Ended>,
}

impl Process {
    pub fn new(program: Program) -> Self {
        Self {
            program,
            running: None,
        }
    }

    /// Starts it (again, if it ran before and ended).
    pub fn start(&mut self) {
        if self
            .running
            .as_ref()
            .is_some_and(|r| !r.monitor.is_finished())
        {
            return;
        }
        let (stop, requests) = watch::channel(None);
        let pid = Arc::new(AtomicU32::new(0));
        let monitor = tokio::spawn(monitor(self.program.clone(), requests, pid.clone()));
        self.running = Some(Running { stop, pid, monitor });
    }

    /// The process id of the current child, while one runs.
    pub fn pid(&self) -> Option<u32> {
        self.running
            .as_ref()
            .map(|r| r.pid.load(Ordering::Acquire))
            .filter(|pid| *pid != 0)
    }

    /// Whether its run ended (it was never started, stopped, or exited unsupervised).
    pub fn has_ended(&self) -> bool {
        self.running
            .as_ref()
            .is_none_or(|r| r.monitor.is_finished())
    }

    /// Polls `url` until it answers 2xx, failing after `deadline` or as soon as the
    /// run ends (a crash at start-up is reported at once, not after the deadline).
    pub async fn wait_ready(&mut self, url: &str, deadline: Duration) -> Result<(), HarnessError> {
        let what = self.program.label.clone();
        let started = Instant::now();
        let client = ready_client()?;
        loop {
            if self.has_ended() {
                let ended = match self.running.take() {
                    Some(running) => outcome(running.monitor).await.to_string(),
                    None => "never started".into(),
                };
                return Err(HarnessError::EndedBeforeReady {
                    what,
                    ended,
                    log: self.program.where_to_look(),
                });
            }
            if answers_ok(&client, url).await {
                return Ok(());
            }
            if started.elapsed() > deadline {
                return Err(HarnessError::NotReady {
                    what,
                    deadline,
                    log: self.program.where_to_look(),
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace`. Returns how its run
    /// ended (`Exited` if it had already exited on its own).
    pub async fn stop(&mut self, grace: Duration) -> Result<Ended, HarnessError> {
        self.request(StopRequest::Terminate(grace)).await
    }

    /// SIGKILL, as a crash would end it.
    pub async fn kill(&mut self) -> Result<Ended, HarnessError> {
        self.request(StopRequest::Kill).await
    }

    async fn request(&mut self, request: StopRequest) -> Result<Ended, HarnessError> {
        let running = self
            .running
            .take()
            .ok_or_else(|| HarnessError::NotRunning {
                what: self.program.label.clone(),
            })?;
        let _ = running.stop.send(Some(request));
        Ok(outcome(running.monitor).await)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The child is spawned with kill_on_drop: ending its monitor ends it too.
        if let Some(running) = self.running.take() {
            running.monitor.abort();
        }
    }
}

async fn outcome(monitor: JoinHandle<Ended>) -> Ended {
    monitor
        .await
        .unwrap_or_else(|error| Ended::Failed(format!("its monitor failed: {error}")))
}

const READY_POLL: Duration = Duration::from_millis(10);

fn ready_client() -> Result<reqwest::Client, HarnessError> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| HarnessError::Io(std::io::Error::other(e)))
}

async fn answers_ok(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Polls `url` until it answers 2xx, for at most `deadline`: for a process this harness
/// does not own.
pub async fn wait_until_ready(url: &str, deadline: Duration) -> Result<(), HarnessError> {
    let client = ready_client()?;
    let started = Instant::now();
    while !answers_ok(&client, url).await {
        if started.elapsed() > deadline {
            return Err(HarnessError::NotReady {
                what: url.to_owned(),
                deadline,
                log: "nothing answered".into(),
            });
        }
        tokio::time::sleep(READY_POLL).await;
    }
    Ok(())
}

async fn monitor(
    program: Program,
    mut requests: watch::Receiver<Option<StopRequest>>,
    pid: Arc<AtomicU32>,
) -> Ended {
    let mut restarts = 0u32;
    loop {
        let mut child = match spawn(&program) {
            Ok(child) => child,
            Err(error) => {
                let why = format!("could not start {}: {error}", program.binary.display());
                program.notice(true, &why);
                return Ended::Failed(why);
            }
        };
        pid.store(child.id().unwrap_or(0), Ordering::Release);
        let started = Instant::now();
        let status = tokio::select! {
            status = child.wait() => status,
            request = requested(&mut requests) => {
                let status = end(&program, &mut child, request).await;
                pid.store(0, Ordering::Release);
                return Ended::Stopped(status);
            }
        };
        pid.store(0, Ordering::Release);
        let status = match status {
            Ok(status) => status,
            Err(error) => return Ended::Failed(format!("lost track of it: {error}")),
        };
        if !program.supervised {
            return Ended::Exited(status);
        }
        // A service that ran a while before crashing gets a quick restart again.
        if started.elapsed() > Duration::from_secs(30) {
            restarts = 0;
        }
        restarts += 1;
        let delay = Duration::from_millis(500 * u64::from(restarts.min(10)));
        program.notice(
            true,
            &format!(
                "CRASHED ({status}) — restarting in {:.1} s (restart #{restarts})",
                delay.as_secs_f64()
            ),
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = requested(&mut requests) => return Ended::Stopped(None),
        }
    }
}

async fn requested(requests: &mut watch::Receiver<Option<StopRequest>>) -> StopRequest {
    match requests.wait_for(Option::is_some).await {
        Ok(request) => request.unwrap_or(StopRequest::Kill),
        // The owner is gone: nobody will ever stop it gracefully.
        Err(_) => StopRequest::Kill,
    }
}

fn spawn(program: &Program) -> std::io::Result<Child> {
    let mut command = Command::new(&program.binary);
    command
        .args(&program.args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(program.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        // Its own process group: a terminal's Ctrl-C reaches only us, and we stop our
        // children in order instead of all at once.
        .process_group(0)
        .kill_on_drop(true);
    match &program.log {
        Log::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            command.stdout(file.try_clone()?).stderr(file);
            command.spawn()
        }
        Log::Prefixed(prefix) => {
            if !colored() {
                command.env("NO_COLOR", "1");
            }
            let mut child = command
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if let Some(out) = child.stdout.take() {
                forward(out, prefix.clone());
            }
            if let Some(err) = child.stderr.take() {
                forward(err, prefix.clone());
            }
            Ok(child)
        }
    }
}

fn forward(stream: impl AsyncRead + Unpin + Send + 'static, prefix: Prefix) {
    tokio::spawn(async move {
        // Bytes, not text: one line that is not UTF-8 must not end the service's log.
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            prefix.say(text.trim_end_matches(['\n', '\r']));
            line.clear();
        }
    });
}

async fn end(program: &Program, child: &mut Child, request: StopRequest) -> Option<ExitStatus> {
    let grace = match request {
        StopRequest::Terminate(grace) => grace,
        StopRequest::Kill => {
            let _ = child.start_kill();
            return child.wait().await.ok();
        }
    };
    let terminated = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw)
        .map(|pid| rustix::process::kill_process(pid, rustix::process::Signal::TERM));
    if !matches!(terminated, Some(Ok(()))) {
        // Already exited (and reaped), or the signal failed: the wait below tells.
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => {
            if status.success() {
                program.notice(false, "stopped");
            } else {
                program.notice(true, &format!("stopped with {status}"));
            }
            Some(status)
        }
        _ => {
            program.notice(
                true,
                &format!("did not stop within {} s; killing it", grace.as_secs()),
            );
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}
