//! The database as Kubernetes treats it: restarted under running services, or not there
//! yet when they start (a fresh cluster still pulling `postgres`). No process may exit;
//! each is not ready while its database is away and ready again after.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::time::{Duration, Instant};

use systemtests::{ContinuousWriter, Microblog, PrivatePostgres};
use testkit::eventually;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_is_survived_without_a_process_restart() {
    let mut postgres = PrivatePostgres::reserve();
    postgres.start().await;
    let mut blog = Microblog::on_private_postgres(1, &postgres, &[]);
    blog.start_all().await;
    let pids = blog.pids();

    let writer = ContinuousWriter::start(blog.url("posts"), true);
    eventually(WAIT, "writes before the restart", || async {
        writer.acknowledged() >= 20
    })
    .await;

    postgres.stop().await;
    eventually(WAIT, "every instance alive but not ready", || async {
        blog.health()
            .await
            .iter()
            .all(|(_, alive, ready)| *alive == 200 && *ready == 503)
    })
    .await;
    postgres.start().await;
    let back = Instant::now();
    eventually(WAIT, "every instance ready again", || blog.all_ready()).await;
    eprintln!(
        "ready again {} ms after PostgreSQL came back",
        back.elapsed().as_millis()
    );
    let during = writer.acknowledged();
    eventually(WAIT, "writes after the restart", || async {
        writer.acknowledged() >= during + 20
    })
    .await;
    let acknowledged = writer.stop().await;

    assert!(blog.all_running(), "a process exited");
    assert_eq!(blog.pids(), pids, "a process was restarted");
    eventually(WAIT, "every acknowledged post in the view", || async {
        let view = blog.view().await;
        acknowledged.iter().all(|id| view.get(id).is_some())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_started_90_s_before_their_database_wait_for_it_and_are_ready_soon_after() {
    let mut postgres = PrivatePostgres::reserve();
    let mut blog = Microblog::on_private_postgres(1, &postgres, &[]);
    blog.launch_all();
    eventually(WAIT, "every instance alive", || async {
        blog.health()
            .await
            .iter()
            .all(|(_, alive, _)| *alive == 200)
    })
    .await;
    // The 90 s are the scenario (a node still pulling the image), not a wait for
    // something to happen: all the while, every process lives and says it is not ready.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(90) {
        for (what, alive, ready) in blog.health().await {
            assert_eq!((alive, ready), (200, 503), "{what} without its database");
        }
        assert!(
            blog.all_running(),
            "a process gave up waiting for its database"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    postgres.start().await;
    let up = Instant::now();
    eventually(Duration::from_secs(30), "every instance ready", || async {
        blog.health()
            .await
            .iter()
            .all(|(_, _, ready)| *ready == 200)
    })
    .await;
    eprintln!(
        "ready {} ms after the database came up",
        up.elapsed().as_millis()
    );
    assert!(blog.all_running());
    let post = blog.create_post("the database came").await;
    let id = post["id"].as_str().unwrap().to_owned();
    eventually(WAIT, "the post in the view", || async {
        blog.view().await.get(&id).is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_database_that_crashes_and_loses_its_last_asynchronous_commits_loses_no_event() {
    // Only query's database crashes: its consumer commits do not wait for the flush.
    let mut postgres = PrivatePostgres::reserve();
    postgres.start().await;
    let query_database = postgres.url(harness::topology::service("query").unwrap().database);
    let blog = Microblog::start_with(1, &[("query", "DATABASE_URL", &query_database)]).await;
    let writer = ContinuousWriter::start(blog.url("posts"), true);
    eventually(WAIT, "writes before the crash", || async {
        writer.acknowledged() >= 50
    })
    .await;
    postgres.crash().await;
    postgres.start().await;
    let during = writer.acknowledged();
    eventually(WAIT, "writes after the crash", || async {
        writer.acknowledged() >= during + 50
    })
    .await;
    let acknowledged = writer.stop().await;
    eventually(WAIT, "every acknowledged post in the view", || async {
        let view = blog.view().await;
        acknowledged.iter().all(|id| view.get(id).is_some())
    })
    .await;
    // Whether this run's crash lost commits (it may not have): said, not asserted.
    let refilled = blog.log_of("query").matches("filling a hole").count();
    eprintln!("query filled {refilled} hole(s) after the crash");
    let pool = sqlx::PgPool::connect(&query_database).await.unwrap();
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM posts")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (rows, distinct),
        (acknowledged.len() as i64, acknowledged.len() as i64)
    );
}
