//! The services as child processes: each log line prefixed with the service's name in
//! its own colour (like `skaffold dev`), a crash reported loudly and the service
//! restarted, and on stop SIGTERM, then a wait, so each one shuts down gracefully.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longer than any service's graceful shutdown (it drains, then flushes its outbox).
const STOP_GRACE: Duration = Duration::from_secs(20);

#[derive(Clone)]
pub struct Prefix(String);

/// Writes a line to stdout and ignores a closed pipe: when `devstack | tee` gets Ctrl-C,
/// tee dies too, and devstack must still go on to stop everything in order.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Colours only for a person at a terminal; logs redirected to a file stay plain.
fn colored() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

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

pub struct Program {
    pub prefix: Prefix,
    pub binary: PathBuf,
    pub env: Vec<(String, String)>,
}

/// Keeps `program` running until `stop` turns true, then stops it gracefully.
pub fn supervise(program: Program, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut restarts = 0u32;
        loop {
            let mut child = match start(&program) {
                Ok(child) => child,
                Err(error) => {
                    program.prefix.shout(&format!(
                        "could not start {}: {error}",
                        program.binary.display()
                    ));
                    return;
                }
            };
            let started = std::time::Instant::now();
            let status = tokio::select! {
                status = child.wait() => status,
                _ = stopped(&mut stop) => {
                    terminate(&program.prefix, &mut child).await;
                    return;
                }
            };
            if *stop.borrow() {
                return;
            }
            // A service that ran a while before crashing gets a quick restart again.
            if started.elapsed() > Duration::from_secs(30) {
                restarts = 0;
            }
            restarts += 1;
            let delay = Duration::from_millis(500 * u64::from(restarts.min(10)));
            program.prefix.shout(&format!(
                "CRASHED ({}) — restarting in {:.1} s (restart #{restarts})",
                describe(status),
                delay.as_secs_f64()
            ));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped(&mut stop) => return,
            }
        }
    })
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn start(program: &Program) -> std::io::Result<Child> {
    let mut child = Command::new(&program.binary)
        .envs(program.env.iter().map(|(k, v)| (k, v)))
        .envs((!colored()).then_some(("NO_COLOR", "1")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: the terminal's Ctrl-C reaches only devstack, which then
        // stops the services in order instead of all at once.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    if let Some(out) = child.stdout.take() {
        forward(out, program.prefix.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, program.prefix.clone());
    }
    Ok(child)
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

async fn terminate(prefix: &Prefix, child: &mut Child) {
    let Some(pid) = child.id() else { return };
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(Ok(status)) if status.success() => prefix.say("stopped"),
        Ok(Ok(status)) => prefix.shout(&format!("stopped with {}", describe(Ok(status)))),
        _ => {
            prefix.shout(&format!(
                "did not stop within {} s; killing it",
                STOP_GRACE.as_secs()
            ));
            let _ = child.kill().await;
        }
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => format!("lost track of it: {error}"),
    }
}
