//! The private PostgreSQL cluster under `.devstack/postgres`: created on first run, kept
//! between runs (the microblog's data lives there), wiped by `--fresh`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use harness::postgres::{self, Server};
use harness::process::say;

use crate::Error;

/// Starts the cluster in `dir/postgres` with one database per service.
pub async fn start(dir: &Path, fresh: bool, databases: &[&str]) -> Result<Server, Error> {
    postgres::pg_binary("initdb").map_err(|e| {
        format!("{e}\nThe local run needs PostgreSQL's server binaries (no server is used or changed): on Debian/Ubuntu `sudo apt-get install -y postgresql`, on macOS `brew install postgresql@15`.")
    })?;
    std::fs::create_dir_all(dir)?;
    if postgres::is_root() {
        // As root, PostgreSQL runs as the `postgres` user: it must be able to reach its
        // data directory inside ours.
        let mut permissions = std::fs::metadata(dir)?.permissions();
        if permissions.mode() & 0o005 != 0o005 {
            permissions.set_mode(permissions.mode() | 0o005);
            std::fs::set_permissions(dir, permissions)?;
        }
        reachable_by_postgres(dir)?;
    }
    let data = dir.join("postgres");
    if fresh && data.exists() {
        say(&format!("devstack: --fresh: deleting {}", data.display()));
        if data.join("postmaster.pid").exists() {
            // Left running by a run that was killed: stop it before deleting its files.
            let stale = data.clone();
            let _ = tokio::task::spawn_blocking(move || {
                postgres::stop(&stale, postgres::StopMode::Fast)
            })
            .await;
        }
        std::fs::remove_dir_all(&data)?;
    }
    if !postgres::is_initialized(&data) {
        say(&format!(
            "devstack: creating a PostgreSQL cluster in {}",
            data.display()
        ));
    }
    let server = Server::start(&data, "-c max_connections=100").await?;
    for database in databases {
        if let Err(error) = server.database(database).await {
            let _ = server.stop().await;
            return Err(error.into());
        }
    }
    Ok(server)
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
