//! The whole microblog as real processes: the five binaries `cargo build` makes, each with
//! its own fresh database on the test cluster, wired as in Kubernetes by the harness.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use harness::api::ApiClient;
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

impl Microblog {
    /// Every service once.
    pub async fn start() -> Self {
        Self::start_replicated(1).await
    }

    /// Every service as `replicas` instances on one database each, as Kubernetes runs
    /// a scaled Deployment; the others reach a service at its first instance.
    pub async fn start_replicated(replicas: usize) -> Self {
        testkit::init_test_logging();
        let mut databases = HashMap::new();
        for service in &SERVICES {
            databases.insert(service.name, TestDatabase::new(&Migrator::DEFAULT).await);
        }
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
        let stack = Stack::plan(&options, |service| databases[service.name].url.clone())
            .unwrap_or_else(|error| panic!("{error}"));
        let mut blog = Self {
            stack,
            databases,
            logs,
            api: ApiClient::new(),
        };
        blog.stack
            .start()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        blog
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

    /// SIGTERM, and the service must exit 0.
    pub async fn stop(&mut self, service: &str) {
        for instance in self.stack.instances_mut(service) {
            match instance.stop().await {
                Ok(Ended::Stopped(Some(status))) if status.success() => {}
                other => panic!("{service} did not exit 0 on SIGTERM: {other:?}"),
            }
        }
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

/// An HTTP client for requests the helpers above do not cover.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}
