//! The whole microblog as real processes: the five binaries `cargo build` makes, each with
//! its own fresh database on the test cluster, wired as in Kubernetes by the harness.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::api::ApiClient;
use harness::postgres::{Server, StopMode};
use harness::process::Ended;
use harness::stack::{binaries_of_this_build, Stack, StackOptions};
use harness::topology::SERVICES;
use serde_json::Value;
use sqlx::migrate::Migrator;
use testkit::TestDatabase;

pub use harness::api::LiveStream;

pub struct Microblog {
    stack: Stack,
    databases: HashMap<&'static str, TestDatabase>,
    logs: PathBuf,
    api: ApiClient,
}

/// A PostgreSQL server of one test's own, to stop, restart or start late: the shared
/// test cluster must never go away under other tests.
pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    server: Option<Server>,
}

/// Durability is pointless for a server deleted after the test; speed is not.
const PRIVATE_OPTIONS: &str = "-c fsync=off -c synchronous_commit=off -c max_connections=200";

impl PrivatePostgres {
    /// A port and a directory, and no server yet.
    pub fn reserve() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "microblog-systemtest-pg-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("server directory");
        Self {
            dir,
            port: harness::postgres::free_port().expect("a free port"),
            server: None,
        }
    }

    /// `postgres://…/<database>` on this server, whether it runs yet or not.
    pub fn url(&self, database: &str) -> String {
        format!("{}/{database}", harness::postgres::server_url(self.port))
    }

    /// Starts (or restarts) the server on its port, with one database per service.
    pub async fn start(&mut self) {
        let server = Server::start_on(&self.dir.join("data"), self.port, PRIVATE_OPTIONS)
            .await
            .unwrap_or_else(|error| panic!("start PostgreSQL: {error}"));
        for service in &SERVICES {
            server
                .database(service.database)
                .await
                .expect("create database");
        }
        self.server = Some(server);
    }

    /// Stops the server as a crash would (`immediate`: no checkpoint, what the WAL writer
    /// had not written yet is gone — asynchronous commits of the last moments included).
    pub async fn crash(&mut self) {
        if self.server.take().is_some() {
            harness::postgres::stop(&self.dir.join("data"), StopMode::Immediate)
                .expect("stop PostgreSQL");
        }
    }

    /// Stops the server cleanly (clients are disconnected).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("stop PostgreSQL");
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.server.is_some() {
            let _ = harness::postgres::stop(&self.dir.join("data"), StopMode::Immediate);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Microblog {
    /// Every service once.
    pub async fn start() -> Self {
        Self::start_replicated(1).await
    }

    /// Every service as `replicas` instances on one database each, as Kubernetes runs
    /// a scaled Deployment, each service behind a proxy that spreads requests across its
    /// ready instances as a Service does.
    pub async fn start_replicated(replicas: usize) -> Self {
        Self::start_with(replicas, &[]).await
    }

    /// As `start_replicated`, with `env` (`(service, name, value)`) on top of the wiring.
    pub async fn start_with(replicas: usize, env: &[(&'static str, &str, &str)]) -> Self {
        let mut databases = HashMap::new();
        for service in &SERVICES {
            databases.insert(service.name, TestDatabase::new(&Migrator::DEFAULT).await);
        }
        let urls: HashMap<&str, String> =
            databases.iter().map(|(k, v)| (*k, v.url.clone())).collect();
        let mut blog = Self::plan(replicas, env, |service| urls[service].clone());
        blog.databases = databases;
        blog.stack
            .start()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        blog
    }

    /// Every service as `replicas` instances with its database on `postgres` (which
    /// need not run yet), with `env` for all; nothing started.
    pub fn on_private_postgres(
        replicas: usize,
        postgres: &PrivatePostgres,
        env: &[(&'static str, &str, &str)],
    ) -> Self {
        Self::plan(replicas, env, |service| {
            let database = harness::topology::service(service).map_or("", |s| s.database);
            postgres.url(database)
        })
    }

    fn plan(
        replicas: usize,
        env: &[(&'static str, &str, &str)],
        database_url: impl Fn(&str) -> String,
    ) -> Self {
        testkit::init_test_logging();
        let logs =
            std::env::temp_dir().join(format!("microblog-systemtest-{}", std::process::id()));
        std::fs::create_dir_all(&logs).expect("log directory");
        let binaries = binaries_of_this_build().expect("the target directory");
        let mut options = StackOptions::whole(binaries, &logs).with_env(
            "event-bus",
            "EVENT_BUS_RETRY_MAX_MS",
            "300",
        );
        options.replicas = replicas;
        for (service, name, value) in env {
            options = options.with_env(service, name, *value);
        }
        let stack = Stack::plan(&options, |service| database_url(service.name))
            .unwrap_or_else(|error| panic!("{error}"));
        Self {
            stack,
            databases: HashMap::new(),
            logs,
            api: ApiClient::new(),
        }
    }

    /// Starts every instance, the bus first, and waits until all are ready.
    pub async fn start_all(&mut self) {
        self.stack
            .start()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }

    /// Starts every instance without waiting for any to be ready.
    pub fn launch_all(&mut self) {
        for service in &SERVICES {
            for instance in self.stack.instances_mut(service.name) {
                instance.start();
            }
        }
    }

    /// The harness's stack, to change what the next start of an instance gets.
    pub fn stack_mut(&mut self) -> &mut Stack {
        &mut self.stack
    }

    /// What instance `label` (`posts`, or `posts#2` with replicas) has logged so far.
    pub fn log_of(&self, label: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{label}.log"))).unwrap_or_default()
    }

    /// The logs of every instance of `service`, one after the other.
    pub fn logs_of_service(&self, service: &str) -> String {
        self.stack
            .instances(service)
            .map(|instance| self.log_of(&instance.process.program.label))
            .collect()
    }

    /// Each instance's process id (none for one that is not running).
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.stack.all().map(|i| i.process.pid()).collect()
    }

    /// No instance has exited.
    pub fn all_running(&self) -> bool {
        self.stack.all().all(|i| !i.process.has_ended())
    }

    /// Every instance's `/healthz` and `/readyz` status (0: no answer), by instance.
    pub async fn health(&self) -> Vec<(String, u16, u16)> {
        let mut all = Vec::new();
        for instance in self.stack.all() {
            let url = instance.url();
            let status = |path: &'static str| {
                let url = format!("{url}/{path}");
                async move { self.api.get(&url).await.map_or(0, |(status, _)| status) }
            };
            let (alive, ready) = (status("healthz").await, status("readyz").await);
            all.push((format!("{} {url}", instance.service.name), alive, ready));
        }
        all
    }

    /// Whether every instance answers `/readyz` with 200 and its Service has seen it
    /// (the Service probes on its own clock: until then it still answers 503).
    pub async fn all_ready(&self) -> bool {
        let answered = self
            .health()
            .await
            .iter()
            .all(|(_, _, ready)| *ready == 200);
        answered
            && SERVICES.iter().all(|service| {
                self.stack.endpoints(service.name).ready_count()
                    == self.stack.instances(service.name).count()
            })
    }

    /// The view as one query instance (`query`, its base URL) serves it.
    pub async fn view_of(&self, query: &str) -> Value {
        self.get_json(&format!("{query}/posts")).await
    }

    pub fn url(&self, service: &str) -> String {
        self.stack.url(service)
    }

    /// The base URL of each instance of `service`.
    pub fn instance_urls(&self, service: &str) -> Vec<String> {
        self.stack.instances(service).map(|i| i.url()).collect()
    }

    pub fn database(&self, service: &str) -> &TestDatabase {
        &self.databases[service]
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// SIGTERM to every instance, each of which must exit 0.
    pub async fn stop(&mut self, service: &str) {
        let count = self.stack.instances(service).count();
        for index in 0..count {
            self.stop_instance(service, index).await;
        }
    }

    /// Instance `index` out of rotation, then SIGTERM; it must exit 0.
    pub async fn stop_instance(&mut self, service: &str, index: usize) {
        match self.stack.stop_instance(service, index).await {
            Ok(Ended::Stopped(Some(status))) if status.success() => {}
            other => panic!(
                "{service}#{} did not exit 0 on SIGTERM: {other:?}",
                index + 1
            ),
        }
    }

    /// Starts instance `index` again, waits until it is ready and back in rotation.
    pub async fn start_instance(&mut self, service: &str, index: usize) {
        self.stack
            .start_instance(service, index)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }

    /// SIGKILL, as a crash.
    pub async fn kill(&mut self, service: &str) {
        for instance in self.stack.instances_mut(service) {
            instance.kill().await.expect("kill");
        }
    }

    pub async fn restart(&mut self, service: &str) {
        self.stack
            .start_service(service)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }

    /// Replaces a service's database with an empty one (as if its volume were lost),
    /// from the service's next start on.
    pub async fn wipe_database(&mut self, service: &'static str) {
        let empty = TestDatabase::new(&Migrator::DEFAULT).await;
        self.stack.set_env(service, "DATABASE_URL", &empty.url);
        self.databases.insert(service, empty);
    }

    /// A `pg_dump` of a service's database as it is now (plain SQL), as an operator's
    /// backup would be.
    pub fn dump_database(&self, service: &str) -> PathBuf {
        let dump = self
            .logs
            .join(format!("{service}-{:08x}.sql", fastrand::u32(..)));
        run_pg_tool(
            "pg_dump",
            &[
                "--no-owner",
                "--no-privileges",
                "--clean",
                "--if-exists",
                "--file",
                &dump.to_string_lossy(),
                &self.databases[service].url,
            ],
        );
        dump
    }

    /// Replaces a service's database with one restored from `dump` (as an operator does
    /// after losing the volume), from the service's next start on.
    pub async fn restore_database(&mut self, service: &'static str, dump: &Path) {
        let restored = TestDatabase::new(&Migrator::DEFAULT).await;
        run_pg_tool(
            "psql",
            &[
                "--quiet",
                "--set",
                "ON_ERROR_STOP=1",
                "--file",
                &dump.to_string_lossy(),
                &restored.url,
            ],
        );
        self.stack.set_env(service, "DATABASE_URL", &restored.url);
        self.databases.insert(service, restored);
    }

    /// `POST /posts/create` through the posts service; asserts 201 and returns the post.
    pub async fn create_post(&self, title: &str) -> Value {
        self.api
            .create_post(&self.url("posts"), title)
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Comments on a post; asserts 201 and returns the new comment from the answer.
    pub async fn create_comment(&self, post_id: &str, content: &str) -> Value {
        self.api
            .create_comment(&self.url("comments"), post_id, content)
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// GET a URL and read its JSON body, whatever the status.
    pub async fn get_json(&self, url: &str) -> Value {
        match self.api.get(url).await {
            Ok((_, body)) => body,
            Err(error) => panic!("{error}"),
        }
    }

    /// The query service's whole view.
    pub async fn view(&self) -> Value {
        self.get_json(&format!("{}/posts", self.url("query"))).await
    }

    /// A comment's status in the view, if the view has it yet.
    pub async fn comment_status(&self, post_id: &str, comment_id: &str) -> Option<String> {
        let url = format!("{}/posts/{post_id}", self.url("query"));
        let (_, post) = self.api.get(&url).await.ok()?;
        post["comments"]
            .as_array()?
            .iter()
            .find(|c| c["id"] == comment_id)?["status"]
            .as_str()
            .map(str::to_owned)
    }

    /// The query service's Server-Sent Events stream.
    pub async fn open_live_stream(&self) -> LiveStream {
        self.api
            .live_stream(&self.url("query"))
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }
}

impl Drop for Microblog {
    fn drop(&mut self) {
        // The processes end with the stack (SIGKILL); only the logs need a decision.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.logs);
        } else {
            eprintln!("service logs kept in {}", self.logs.display());
        }
    }
}

/// Runs a PostgreSQL client tool to completion; panics with its output if it fails.
fn run_pg_tool(name: &str, args: &[&str]) {
    let binary = harness::postgres::pg_binary(name).unwrap_or_else(|error| panic!("{error}"));
    let output = std::process::Command::new(&binary)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("run {}: {error}", binary.display()));
    assert!(
        output.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An HTTP client for requests the helpers above do not cover.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Posts created one after another until stopped, as a user keeps writing during an
/// outage or a rollout: each acknowledged post's id is kept.
pub struct ContinuousWriter {
    writing: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ContinuousWriter {
    /// Writes to `posts` (a base URL). A refused write fails the test unless
    /// `refusals_expected` (the database is meant to go away).
    pub fn start(posts: String, refusals_expected: bool) -> Self {
        let writing = Arc::new(AtomicBool::new(true));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let (flag, ids) = (writing.clone(), acknowledged.clone());
        let task = tokio::spawn(async move {
            let api = ApiClient::new();
            let mut n = 0;
            while flag.load(Ordering::Acquire) {
                match api
                    .create_post(&posts, &format!("written continuously {n}"))
                    .await
                {
                    Ok(post) => ids
                        .lock()
                        .expect("ids")
                        .push(post["id"].as_str().unwrap_or_default().to_owned()),
                    Err(error) if !refusals_expected => panic!("write {n} failed: {error}"),
                    Err(_) => {}
                }
                n += 1;
            }
        });
        Self {
            writing,
            acknowledged,
            task,
        }
    }

    /// How many writes were acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.lock().expect("ids").len()
    }

    /// Stops writing; the ids of every acknowledged post.
    pub async fn stop(self) -> Vec<String> {
        self.writing.store(false, Ordering::Release);
        self.task.await.expect("the writer failed");
        let ids = self.acknowledged.lock().expect("ids").clone();
        ids
    }
}
