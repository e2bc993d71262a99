//! A throwaway PostgreSQL cluster shared by every test process of one test run.
//!
//! nextest runs each test in its own process, so "once per run" needs coordination across
//! processes: the first test starts the cluster under `init.lock`; every test process
//! holds a shared lock on `users.lock` while it lives; a detached reaper stops the cluster
//! and deletes it once nobody has held `users.lock` for a few seconds. Nothing is left
//! behind, and no test depends on a server started by hand.

use std::fs::{self, File};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// Creates a cluster in `data` (which must not exist) and starts it on 127.0.0.1:`port`
/// with the extra server `options`; trust authentication for user `postgres`.
pub fn init_and_start(data: &Path, port: u16, options: &str) -> io::Result<()> {
    fs::create_dir_all(data)?;
    chown_to_postgres(data)?;
    run(pg_command("initdb")?.args([
        "-D",
        &path_str(data),
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--no-sync",
        "--no-instructions",
    ]))?;
    let options = format!(
        "-p {port} -k {data} -c listen_addresses=127.0.0.1 -c shared_buffers=128MB {options}",
        data = path_str(data)
    );
    run(pg_command("pg_ctl")?.args([
        "-D",
        &path_str(data),
        "-l",
        &path_str(&data.join("server.log")),
        "-w",
        "-t",
        "60",
        "-o",
        &options,
        "start",
    ]))
}

/// Stops the cluster in `data` at once (its contents are about to be deleted).
pub fn stop(data: &Path) -> io::Result<()> {
    run(pg_command("pg_ctl")?.args(["-D", &path_str(data), "-m", "immediate", "stop"]))
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

pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn run(command: &mut Command) -> io::Result<()> {
    let output = command.stdin(Stdio::null()).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A PostgreSQL binary: on PATH, or in Debian's versioned directory.
pub fn pg_binary(name: &str) -> io::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if let Some(found) = on_path {
        return Ok(found);
    }
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.into_iter().rev().find(|p| p.is_file()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("PostgreSQL's {name} was not found on PATH or in /usr/lib/postgresql/*/bin; install it with `apt-get install -y postgresql`"),
        )
    })
}

/// PostgreSQL refuses to run as root, so as root its tools run as the `postgres` user.
fn pg_command(name: &str) -> io::Result<Command> {
    let binary = pg_binary(name)?;
    Ok(if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(binary);
        command
    } else {
        Command::new(binary)
    })
}

fn pg_command_line(name: &str) -> io::Result<String> {
    let binary = path_str(&pg_binary(name)?);
    Ok(if is_root() {
        format!("runuser -u postgres -- {binary}")
    } else {
        binary
    })
}

fn chown_to_postgres(path: &Path) -> io::Result<()> {
    if !is_root() {
        return Ok(());
    }
    let id = |flag: &str| -> io::Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| io::Error::other("no `postgres` system user: install PostgreSQL with `apt-get install -y postgresql`"))
    };
    std::os::unix::fs::chown(path, Some(id("-u")?), Some(id("-g")?))
}
