//! A PostgreSQL cluster run from the machine's own binaries: found on PATH or in
//! Debian's versioned directory, run as the `postgres` user when we are root (PostgreSQL
//! refuses root). The test kit, the load tool and the local runner all use it.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Creates a cluster in `data` (which must not exist) and starts it on 127.0.0.1:`port`
/// with the extra server `options`; trust authentication for user `postgres`.
pub fn init_and_start(data: &Path, port: u16, options: &str) -> io::Result<()> {
    init(data)?;
    start(data, port, options)
}

/// Creates a cluster in `data` (which must not exist): trust authentication for user
/// `postgres` on this machine only.
pub fn init(data: &Path) -> io::Result<()> {
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
    ]))
}

/// Whether `data` holds a cluster `init` created.
pub fn is_initialized(data: &Path) -> bool {
    data.join("PG_VERSION").is_file()
}

/// Starts the cluster in `data` on 127.0.0.1:`port` with extra server `options`, and
/// waits until it accepts connections.
pub fn start(data: &Path, port: u16, options: &str) -> io::Result<()> {
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

/// A cluster this process started, on a port of its own; `stop` stops it.
#[derive(Debug)]
pub struct Server {
    data: PathBuf,
    port: u16,
}

impl Server {
    /// Starts the cluster in `data` on a free port with extra server `options`, creating
    /// it first when `data` holds none. A server left running on `data` by a run that
    /// was killed is stopped first, so it restarts cleanly.
    pub async fn start(data: &Path, options: &str) -> io::Result<Self> {
        Self::start_on(data, free_port()?, options).await
    }

    /// As `start`, on `port` (a restarted server keeps its address).
    pub async fn start_on(data: &Path, port: u16, options: &str) -> io::Result<Self> {
        let (dir, options) = (data.to_owned(), options.to_owned());
        blocking(move || {
            if dir.join("postmaster.pid").exists() {
                let _ = stop(&dir, StopMode::Fast);
            }
            if !is_initialized(&dir) {
                init(&dir)?;
            }
            start(&dir, port, &options)
        })
        .await?;
        Ok(Self {
            data: data.to_owned(),
            port,
        })
    }

    /// `postgres://postgres@127.0.0.1:<port>`, without a database.
    pub fn url(&self) -> String {
        server_url(self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name`, created unless it exists.
    pub async fn database(&self, name: &str) -> Result<String, sqlx::Error> {
        ensure_database(&self.url(), name).await
    }

    /// Disconnects clients and shuts down cleanly.
    pub async fn stop(&self) -> io::Result<()> {
        let data = self.data.clone();
        blocking(move || stop(&data, StopMode::Fast)).await
    }
}

/// The URL of a server on this machine's `port`, without a database.
pub fn server_url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}")
}

/// `pg_ctl` and `initdb` block while they work; keep them off the async workers.
async fn blocking(run: impl FnOnce() -> io::Result<()> + Send + 'static) -> io::Result<()> {
    tokio::task::spawn_blocking(run)
        .await
        .map_err(io::Error::other)?
}

/// Creates database `name` on the server at `server_url` (`postgres://user@host:port`)
/// unless it exists, and returns the database's URL.
pub async fn ensure_database(server_url: &str, name: &str) -> Result<String, sqlx::Error> {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&format!("{server_url}/postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut admin)
            .await?;
    }
    admin.close().await?;
    Ok(format!("{server_url}/{name}"))
}

#[derive(Debug, Clone, Copy)]
pub enum StopMode {
    /// Disconnects clients and shuts down cleanly.
    Fast,
    /// Aborts at once; for clusters about to be deleted.
    Immediate,
}

pub fn stop(data: &Path, mode: StopMode) -> io::Result<()> {
    let mode = match mode {
        StopMode::Fast => "fast",
        StopMode::Immediate => "immediate",
    };
    run(pg_command("pg_ctl")?.args(["-D", &path_str(data), "-m", mode, "-w", "stop"]))
}

/// A port nothing listens on now, for a process about to bind it. Chosen at random below
/// the kernel's ephemeral range (32768 and up on Linux), never by binding port 0: a port
/// from that range can be taken as the local end of any outgoing connection — a test's
/// client, a pool's connection to PostgreSQL — in the moment before the process binds it.
pub fn free_port() -> io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    const FIRST: u16 = 15_000;
    const LAST: u16 = 32_000;
    for _ in 0..200 {
        // Each RandomState is seeded afresh: an empty hash of it is a random number.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = FIRST + (random % u64::from(LAST - FIRST)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
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

pub fn is_root() -> bool {
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
    // Newest first, by number: "15" is newer than "9.6".
    versions.sort_by_key(|path| major_version(path));
    versions.into_iter().rev().find(|p| p.is_file()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("PostgreSQL's {name} was not found on PATH or in /usr/lib/postgresql/*/bin; install it with `apt-get install -y postgresql`"),
        )
    })
}

/// `/usr/lib/postgresql/15/bin/initdb` → [15]; `…/9.6/bin/initdb` → [9, 6].
fn major_version(binary: &Path) -> Vec<u32> {
    binary
        .ancestors()
        .nth(2)
        .and_then(|dir| dir.file_name())
        .and_then(|name| name.to_str())
        .map(|name| name.split('.').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
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

pub fn pg_command_line(name: &str) -> io::Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_postgresql_wins_by_number() {
        let mut versions = ["9.6", "15", "13"]
            .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin/initdb")))
            .to_vec();
        versions.sort_by_key(|path| major_version(path));
        assert_eq!(
            versions.last(),
            Some(&PathBuf::from("/usr/lib/postgresql/15/bin/initdb"))
        );
    }
}
