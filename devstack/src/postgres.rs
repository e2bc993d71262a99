//! The private PostgreSQL cluster under `.devstack/postgres`: created on first run, kept
//! between runs (the microblog's data lives there), wiped by `--fresh`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use harness::postgres::{self as pg_cluster, StopMode};

use crate::supervisor::say;
use crate::Error;

pub struct Postgres {
    data: PathBuf,
    port: u16,
}

impl Postgres {
    pub async fn start(dir: &Path, fresh: bool, databases: &[&str]) -> Result<Self, Error> {
        pg_cluster::pg_binary("initdb").map_err(|e| {
            format!("{e}\nThe local run needs PostgreSQL's server binaries (no server is used or changed): on Debian/Ubuntu `sudo apt-get install -y postgresql`, on macOS `brew install postgresql@15`.")
        })?;
        std::fs::create_dir_all(dir)?;
        // As root, PostgreSQL runs as the `postgres` user: it must be able to reach its
        // data directory inside ours.
        let mut permissions = std::fs::metadata(dir)?.permissions();
        if pg_cluster::is_root() && permissions.mode() & 0o005 != 0o005 {
            permissions.set_mode(permissions.mode() | 0o005);
            std::fs::set_permissions(dir, permissions)?;
        }
        if pg_cluster::is_root() {
            reachable_by_postgres(dir)?;
        }
        let data = dir.join("postgres");
        if data.join("postmaster.pid").exists() {
            // Left running by a run that was killed: stop it so it restarts cleanly.
            let _ = blocking(&data, |d| pg_cluster::stop(d, StopMode::Fast)).await;
        }
        if fresh && data.exists() {
            say(&format!("devstack: --fresh: deleting {}", data.display()));
            std::fs::remove_dir_all(&data)?;
        }
        if !pg_cluster::is_initialized(&data) {
            say(&format!(
                "devstack: creating a PostgreSQL cluster in {}",
                data.display()
            ));
            blocking(&data, pg_cluster::init).await?;
        }
        let port = pg_cluster::free_port()?;
        blocking(&data, move |d| {
            pg_cluster::start(d, port, "-c max_connections=100")
        })
        .await?;
        let postgres = Self { data, port };
        if let Err(error) = postgres.create_databases(databases).await {
            let _ = postgres.stop().await;
            return Err(error);
        }
        Ok(postgres)
    }

    pub fn url(&self, database: &str) -> String {
        format!("{}/{database}", self.server_url())
    }

    fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    async fn create_databases(&self, databases: &[&str]) -> Result<(), Error> {
        let server = self.server_url();
        for database in databases {
            pg_cluster::ensure_database(&server, database).await?;
        }
        Ok(())
    }

    pub async fn stop(&self) -> Result<(), Error> {
        blocking(&self.data, |d| pg_cluster::stop(d, StopMode::Fast)).await
    }
}

/// `pg_ctl` and `initdb` block while they work; keep them off the async workers.
async fn blocking(
    data: &Path,
    run: impl FnOnce(&Path) -> std::io::Result<()> + Send + 'static,
) -> Result<(), Error> {
    let data = data.to_owned();
    tokio::task::spawn_blocking(move || run(&data)).await??;
    Ok(())
}

/// As root, PostgreSQL runs as the `postgres` user, which cannot enter a directory under,
/// say, /root (mode 700). Say so plainly instead of letting initdb fail obscurely.
fn reachable_by_postgres(dir: &Path) -> Result<(), Error> {
    let reachable = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if reachable {
        Ok(())
    } else {
        Err(format!(
            "PostgreSQL runs as the `postgres` user (we are root) and cannot reach {}: a parent directory is closed to other users. Use `--data /var/tmp/microblog`, or run as a normal user.",
            dir.display()
        )
        .into())
    }
}
