//! A throwaway PostgreSQL cluster shared by every test process of one test run.
//!
//! nextest runs each test in its own process, so "once per run" needs coordination across
//! processes: the first test starts the cluster under `init.lock`; every test process
//! holds a shared lock on `users.lock` while it lives; a detached reaper stops the cluster
//! and deletes it once nobody has held `users.lock` for a few seconds. Nothing is left
//! behind, and no test depends on a server started by hand.

use std::fs::{self, File};
use std::io;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use harness::postgres::{free_port, init_and_start};
use harness::postgres::{pg_command_line, StopMode};
use std::sync::OnceLock;

static HELD: OnceLock<File> = OnceLock::new();

/// `postgres://postgres@127.0.0.1:<port>` of the run's shared cluster, starting it if needed.
pub fn shared_cluster_url() -> io::Result<String> {
    let base = std::env::temp_dir().join("microblog-test-pg");
    fs::create_dir_all(&base)?;
    fs::set_permissions(&base, fs::Permissions::from_mode(0o755))?;
    let init = open_lock(&base.join("init.lock"))?;
    init.lock()?;
    let port = match running_port(&base) {
        Some(port) => port,
        None => start(&base)?,
    };
    if !reaper_alive(&base) {
        spawn_reaper(&base)?;
    }
    let users = open_lock(&base.join("users.lock"))?;
    users.lock_shared()?;
    let _ = HELD.set(users);
    init.unlock()?;
    Ok(format!("postgres://postgres@127.0.0.1:{port}"))
}

fn open_lock(path: &Path) -> io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

fn running_port(base: &Path) -> Option<u16> {
    let port: u16 = fs::read_to_string(base.join("port"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    TcpStream::connect(("127.0.0.1", port)).ok().map(|_| port)
}

fn reaper_alive(base: &Path) -> bool {
    fs::read_to_string(base.join("reaper.pid"))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

fn start(base: &Path) -> io::Result<u16> {
    let data = base.join("data");
    if data.exists() {
        let _ = stop(&data);
        fs::remove_dir_all(&data)?;
    }
    let port = free_port()?;
    // Durability is pointless for a cluster deleted after the run; speed is not.
    init_and_start(
        &data,
        port,
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400",
    )?;
    fs::write(base.join("port"), port.to_string())?;
    Ok(port)
}

fn spawn_reaper(base: &Path) -> io::Result<()> {
    let pg_ctl = pg_command_line("pg_ctl")?;
    let script = format!(
        r#"echo $$ > reaper.pid
idle=0
while :; do
  sleep 0.5
  if flock -n users.lock true; then idle=$((idle+1)); else idle=0; fi
  if [ "$idle" -ge 10 ]; then
    if flock init.lock sh -c 'flock -n users.lock true && {{ {pg_ctl} -D data -m immediate stop >/dev/null 2>&1; rm -rf data port reaper.pid; }}'; then exit 0; fi
    idle=0
  fi
done"#
    );
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .current_dir(base)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // The reaper writes its pid itself; wait for it so a second process does not start another.
    for _ in 0..200 {
        if reaper_alive(base) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(io::Error::other("the test cluster's reaper did not start"))
}

/// Stops the cluster in `data` at once (its contents are about to be deleted).
pub fn stop(data: &Path) -> io::Result<()> {
    harness::postgres::stop(data, StopMode::Immediate)
}
