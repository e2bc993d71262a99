//! The world a measurement runs in: a private PostgreSQL cluster with production
//! durability (fsync and synchronous commit on), and the services as real release
//! processes started next to this binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::cluster;

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
        Ok(harness::postgres::ensure_database(&server, name).await?)
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
        if std::env::var_os("LOADTEST_KEEP").is_some() {
            eprintln!("kept {} (LOADTEST_KEEP is set)", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
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

/// What `drive` gathered: each job's result in job order, and each job's latency.
pub struct Driven<T> {
    pub results: Vec<T>,
    pub latencies_ms: Vec<f64>,
}

/// Runs jobs `0..count` from `concurrency` workers, each taking the next job as soon as
/// its previous one finished (a closed loop, like the course's load tool).
pub async fn drive<T, F, Fut>(concurrency: usize, count: usize, job: F) -> Result<Driven<T>, Error>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, Error>> + Send,
{
    let job = std::sync::Arc::new(job);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (job, next) = (job.clone(), next.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= count {
                        return Ok::<_, Error>(done);
                    }
                    let started = Instant::now();
                    let result = job(n).await?;
                    done.push((n, result, started.elapsed().as_secs_f64() * 1000.0));
                }
            })
        })
        .collect();
    let mut done = Vec::with_capacity(count);
    for worker in workers {
        done.extend(worker.await??);
    }
    done.sort_by_key(|(n, _, _)| *n);
    let latencies_ms = done.iter().map(|(_, _, ms)| *ms).collect();
    Ok(Driven {
        results: done.into_iter().map(|(_, result, _)| result).collect(),
        latencies_ms,
    })
}
