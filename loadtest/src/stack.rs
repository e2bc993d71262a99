//! The world a measurement runs in: a private PostgreSQL cluster with production
//! durability (fsync and synchronous commit on), and the services as real release
//! processes started next to this binary by the harness.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use harness::api::ApiClient;
use harness::postgres::Server;
use harness::stack::{binaries_of_this_build, Stack, StackOptions};
use harness::topology::SERVICES;

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

    /// The private cluster's PostgreSQL, with production durability.
    pub fn postgres(&self) -> &Server {
        &self.postgres
    }

    /// The process ids of the cluster: the postmaster first, then its live children.
    pub fn postgres_pids(&self) -> Vec<u32> {
        let postmaster = std::fs::read_to_string(self.dir.join("pg").join("postmaster.pid"))
            .ok()
            .and_then(|pid| pid.lines().next().and_then(|l| l.trim().parse().ok()));
        let Some(postmaster) = postmaster else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        pids.extend(children_of(postmaster));
        pids
    }

    /// What `service`'s first instance has logged so far (JSON lines).
    pub fn log_of(&self, service: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{service}.log"))).unwrap_or_default()
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
    status_mib(pid, "VmRSS:")
}

/// The most a process has been resident at once, in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM:")
}

fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_fields(*pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(parent))
        .collect()
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 on: state, ppid, …).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// CPU seconds a process has used, its reaped children included (so a PostgreSQL
/// backend that exited still counts, in its postmaster).
pub fn cpu_seconds(pid: u32) -> f64 {
    // utime, stime, cutime, cstime: fields 14–17, here 11–14 counted from 0 at field 3.
    let ticks: f64 = stat_fields(pid)
        .map(|f| f[11..15].iter().filter_map(|t| t.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / CLOCK_TICKS_PER_SECOND
}

/// `getconf CLK_TCK` on Linux everywhere this runs.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// As `drive`, for `duration` instead of a count of jobs.
pub async fn drive_for<T, F, Fut>(
    concurrency: usize,
    duration: std::time::Duration,
    job: F,
) -> Result<Driven<T>, Error>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, Error>> + Send,
{
    let deadline = Instant::now() + duration;
    let job = std::sync::Arc::new(job);
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let job = job.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                let mut n = worker;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let result = job(n).await?;
                    done.push((result, started.elapsed().as_secs_f64() * 1000.0));
                    n += concurrency;
                }
                Ok::<_, Error>(done)
            })
        })
        .collect();
    let mut driven = Driven {
        results: Vec::new(),
        latencies_ms: Vec::new(),
    };
    for worker in workers {
        for (result, ms) in worker.await?? {
            driven.results.push(result);
            driven.latencies_ms.push(ms);
        }
    }
    Ok(driven)
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

/// The whole microblog, every service once, on a private durable cluster.
pub struct Microblog {
    pub world: World,
    pub urls: HashMap<&'static str, String>,
    pub api: ApiClient,
}

impl Microblog {
    pub async fn start() -> Result<Self, Error> {
        let names: Vec<&'static str> = SERVICES.iter().map(|s| s.name).collect();
        let mut world = World::new(&names, |options| options).await?;
        world.stack.start().await?;
        let urls = names.iter().map(|n| (*n, world.stack.url(n))).collect();
        Ok(Self {
            world,
            urls,
            api: ApiClient::new(),
        })
    }

    /// Each service's resident memory, now and at its peak, in MiB.
    pub fn memory(&self) -> String {
        SERVICES
            .iter()
            .map(|service| {
                let pid = self.world.pid(service.name);
                let (rss, peak) = (pid.and_then(rss_mib), pid.and_then(peak_rss_mib));
                format!(
                    "{} {:.1} (peak {:.1})",
                    service.name,
                    rss.unwrap_or(f64::NAN),
                    peak.unwrap_or(f64::NAN)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub async fn create_post(api: &ApiClient, posts: &str, title: &str) -> Result<String, Error> {
    let post = api.create_post(posts, title).await?;
    post["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "created post has no id".into())
}

pub async fn create_comment(
    api: &ApiClient,
    comments: &str,
    post_id: &str,
    content: &str,
) -> Result<String, Error> {
    let comment = api.create_comment(comments, post_id, content).await?;
    comment["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "the new comment has no id".into())
}

/// Prints a latency distribution: p50, p95 and p99.
pub fn report(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name:<44} n={:<6} p50 {:>7.2} ms   p95 {:>7.2} ms   p99 {:>7.2} ms",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 95.0),
        percentile(&ms, 99.0)
    );
}
