//! The world a measurement runs in: a private PostgreSQL cluster with production
//! durability (fsync and synchronous commit on), and the services as real release
//! processes started next to this binary by the harness.

use std::path::PathBuf;
use std::time::Instant;

use harness::postgres::Server;
use harness::stack::{binaries_of_this_build, Stack, StackOptions};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

pub struct World {
    dir: PathBuf,
    postgres: Server,
    pub stack: Stack,
}

impl World {
    /// A private cluster and a plan for `services` (each with its own database), as
    /// `configure` adjusts the harness's defaults; nothing runs yet but PostgreSQL.
    pub async fn new(
        services: &[&'static str],
        configure: impl FnOnce(StackOptions) -> StackOptions,
    ) -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(format!("microblog-loadtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let postgres = Server::start(&dir.join("pg"), "-c max_connections=200").await?;
        let options =
            configure(StackOptions::whole(binaries_of_this_build()?, &dir).only(services));
        let mut databases = Vec::new();
        for name in &options.services {
            let service = harness::topology::service(name).ok_or("not a service")?;
            databases.push((service.name, postgres.database(service.database).await?));
        }
        let stack = Stack::plan(&options, |service| {
            databases
                .iter()
                .find(|(name, _)| *name == service.name)
                .map(|(_, url)| url.clone())
                .unwrap_or_default()
        })?;
        Ok(Self {
            dir,
            postgres,
            stack,
        })
    }

    pub fn pid(&self, service: &str) -> Option<u32> {
        self.stack
            .instances(service)
            .next()
            .and_then(|i| i.process.pid())
    }

    /// Stops the services gracefully, then PostgreSQL, and removes what the run wrote
    /// (`LOADTEST_KEEP=1` keeps the logs).
    pub async fn finish(mut self) {
        self.stack.stop().await;
        let _ = self.postgres.stop().await;
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // After `finish`, or on the way out of a failed run: the services die with the
        // stack, and a server still running would keep the directory busy.
        let _ =
            harness::postgres::stop(&self.dir.join("pg"), harness::postgres::StopMode::Immediate);
        if std::env::var_os("LOADTEST_KEEP").is_some() {
            eprintln!("kept {} (LOADTEST_KEEP is set)", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
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
