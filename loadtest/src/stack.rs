//! The world a measurement runs in: a private PostgreSQL cluster with production
//! durability (fsync and synchronous commit on), and the services as real release
//! processes started next to this binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::testing::cluster;
use sqlx::{Connection, PgConnection};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

pub struct Stack {
    dir: PathBuf,
    pg_port: u16,
    children: Vec<(String, Child)>,
}

impl Stack {
    pub fn start() -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(format!("microblog-loadtest-{}", std::process::id()));
        let pg_port = cluster::free_port()?;
        cluster::init_and_start(&dir.join("pg"), pg_port, "-c max_connections=200")?;
        Ok(Self {
            dir,
            pg_port,
            children: Vec::new(),
        })
    }

    pub async fn create_database(&self, name: &str) -> Result<String, Error> {
        let server = format!("postgres://postgres@127.0.0.1:{}", self.pg_port);
        let mut admin = PgConnection::connect(&format!("{server}/postgres")).await?;
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut admin)
            .await?;
        Ok(format!("{server}/{name}"))
    }

    /// Starts a release binary of this workspace with `env`, logging to a file.
    pub fn spawn(&mut self, binary: &str, env: &[(&str, String)]) -> Result<(), Error> {
        let path = sibling_binary(binary)?;
        let log = std::fs::File::create(self.dir.join(format!("{binary}.log")))?;
        let child = Command::new(path)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children.push((binary.to_owned(), child));
        Ok(())
    }

    pub fn pid(&self, binary: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == binary)
            .map(|(_, c)| c.id())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let _ = cluster::stop(&self.dir.join("pg"));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sibling_binary(name: &str) -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().unwrap_or(Path::new(".")).join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build it first with `cargo build --release --workspace`",
            path.display()
        )
        .into())
    }
}

pub async fn wait_ready(url: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if reqwest::get(url)
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{url} never became ready").into())
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
