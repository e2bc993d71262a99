//! The shared crate's producer and consumer halves against a real bus: the outbox relay
//! publishes in order once the bus is up, and the consumer cursor applies each event
//! exactly once, in order, filling holes from the bus.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use contract::{Envelope, Event, PostCreated, Publication};
use service_kit::consumer::{Consumer, ConsumerRoutes, CursorStep, Reactions};
use service_kit::db::Database;
use service_kit::http::EventsAuth;
use service_kit::outbox::{self, OutboxRelay};
use service_kit::server::{Application, Readiness, ServerSettings};
use service_kit::shutdown::Shutdown;
use sqlx::{PgConnection, PgPool};
use testkit::bus::*;
use testkit::{eventually, RunningApp, TestDatabase};

const WAIT: Duration = Duration::from_secs(30);

/// A service database: the shared tables plus a table that records what was applied.
async fn service_db() -> TestDatabase {
    let db = TestDatabase::new(&service_kit::db::SHARED_MIGRATIONS).await;
    sqlx::query("CREATE TABLE applied (position BIGSERIAL PRIMARY KEY, seq BIGINT NOT NULL UNIQUE, title TEXT NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    db
}

#[derive(Clone)]
struct RecordPosts;

impl Reactions for RecordPosts {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: Event,
    ) -> Result<(), sqlx::Error> {
        if let Event::PostCreated(post) = event {
            sqlx::query("INSERT INTO applied (seq, title) VALUES ($1, $2)")
                .bind(envelope.seq)
                .bind(post.title)
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

/// As `RecordPosts`, but a delivery of the one event after the cursor is recorded by one
/// statement that also takes the cursor's step; counts the steps taken.
#[derive(Clone, Default)]
struct StepPosts {
    steps: Arc<AtomicUsize>,
}

impl StepPosts {
    async fn record(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: Event,
        step: Option<CursorStep>,
    ) -> Result<bool, sqlx::Error> {
        static STATEMENT: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH {}, applied AS (INSERT INTO applied (seq, title) SELECT $4, $5 FROM step)
                 SELECT EXISTS (SELECT FROM step)",
                CursorStep::CTES
            )
        });
        let Event::PostCreated(post) = event else {
            return Ok(false);
        };
        let row = CursorStep::bind(step, sqlx::query(&STATEMENT))
            .bind(envelope.seq)
            .bind(post.title)
            .fetch_one(conn)
            .await?;
        let stepped: bool = sqlx::Row::try_get(&row, 0)?;
        if stepped && step.is_some() {
            self.steps.fetch_add(1, Ordering::Relaxed);
        }
        Ok(stepped)
    }

    fn steps(&self) -> usize {
        self.steps.load(Ordering::Relaxed)
    }
}

impl Reactions for StepPosts {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: Event,
    ) -> Result<(), sqlx::Error> {
        self.record(conn, envelope, event, None).await.map(|_| ())
    }

    fn steps_cursor(&self) -> bool {
        true
    }

    async fn apply_stepping(
        &self,
        conn: &mut PgConnection,
        step: CursorStep,
        envelope: &Envelope,
        event: Event,
    ) -> Result<bool, sqlx::Error> {
        self.record(conn, envelope, event, Some(step)).await
    }
}

/// A bus (and its database) whose log holds `count` posts, and an empty service database.
async fn bus_with_posts(count: usize) -> (TestDatabase, RunningBus, TestDatabase) {
    let bus_db = test_db().await;
    let bus = start_bus(&bus_db, BusOptions::default()).await;
    bus.client()
        .publish(&(0..count).map(post).collect::<Vec<_>>())
        .await
        .unwrap();
    (bus_db, bus, service_db().await)
}

fn post(n: usize) -> Publication {
    Publication::new(
        &Event::PostCreated(PostCreated {
            id: format!("p{n}"),
            title: n.to_string(),
        }),
        "test",
        None,
    )
}

/// A post with a long title: a hundred of them make a delivery bigger than an API body.
fn long_post(n: usize) -> Publication {
    Publication::new(
        &Event::PostCreated(PostCreated {
            id: format!("p{n}"),
            title: format!("{n} {}", "long title ".repeat(100)),
        }),
        "test",
        None,
    )
}

async fn applied_seqs(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT seq FROM applied ORDER BY position")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_rows_written_while_the_bus_is_down_are_published_in_order_once_it_is_up() {
    let bus_db = test_db().await;
    let producer = service_db().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = service_kit::bus::BusClient::new(&format!("http://127.0.0.1:{port}"), None);
    let publications: Vec<_> = (0..120).map(post).collect();
    for publication in &publications {
        let mut tx = producer.pool.begin().await.unwrap();
        outbox::append(&mut tx, publication).await.unwrap();
        tx.commit().await.unwrap();
    }
    let relay = OutboxRelay::new(Database::migrated(producer.pool.clone()), client);
    let waker = relay.waker();
    let shutdown = Shutdown::new();
    let relay_task = relay.spawn(shutdown.signal());
    // The bus is down: the relay fails, keeps the rows, and retries.
    let no_bus = OutboxRelay::new(
        Database::migrated(producer.pool.clone()),
        service_kit::bus::BusClient::new(&format!("http://127.0.0.1:{port}"), None),
    );
    assert!(no_bus.publish_batch().await.is_err());
    assert_eq!(OutboxRelay::pending(&producer.pool).await.unwrap(), 120);

    let bus = start_bus(
        &bus_db,
        BusOptions {
            port,
            ..Default::default()
        },
    )
    .await;
    eventually(WAIT, "outbox drained", || async {
        OutboxRelay::pending(&producer.pool).await.unwrap() == 0
    })
    .await;
    let log = whole_log(&bus).await;
    let ids: Vec<String> = log
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = publications
        .iter()
        .map(|p| p.id.unwrap().to_string())
        .collect();
    assert_eq!(
        ids, expected,
        "published out of order, twice, or not at all"
    );
    assert_eq!(log[0]["source"], "test");

    // Later rows go out as soon as the relay is woken.
    let mut tx = producer.pool.begin().await.unwrap();
    outbox::append(&mut tx, &post(120)).await.unwrap();
    tx.commit().await.unwrap();
    waker.wake();
    eventually(WAIT, "the woken relay published", || async {
        bus.client().events_after(120, 10).await.unwrap().len() == 1
    })
    .await;

    shutdown.trigger();
    relay_task.await.unwrap();
    bus.stop().await;
}

/// More rows handed over at once than the relay keeps: the rest wait in the table, and go
/// out before a row handed after them. (A current-thread runtime: the relay runs only
/// when the test awaits, so the hands below are one burst it takes as one list.)
#[tokio::test]
async fn rows_left_to_the_table_go_out_before_rows_handed_after_them() {
    let bus_db = test_db().await;
    let producer = service_db().await;
    let bus = start_bus(&bus_db, BusOptions::default()).await;
    let relay = OutboxRelay::new(Database::migrated(producer.pool.clone()), bus.client());
    let waker = relay.waker();
    let shutdown = Shutdown::new();
    let relay_task = relay.spawn(shutdown.signal());
    let commit = |publications: Vec<Publication>| {
        let pool = producer.pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            for publication in &publications {
                outbox::append(&mut tx, publication).await.unwrap();
            }
            tx.commit().await.unwrap();
            publications
        }
    };
    let handed_once = |count: usize| {
        let pool = producer.pool.clone();
        let client = bus.client();
        async move {
            eventually(WAIT, "published, and the outbox empty", || async {
                OutboxRelay::pending(&pool).await.unwrap() == 0
                    && client.events_after(0, 5000).await.unwrap().len() == count
            })
            .await;
        }
    };
    // Caught up: the relay has found the table empty after its first handed row.
    let first = commit(vec![post(0)]).await;
    waker.hand(outbox::prepare(&first[0]).unwrap());
    handed_once(1).await;

    let burst = commit((1..=outbox::HANDED_LIMIT + 2).map(post).collect()).await;
    for publication in &burst {
        waker.hand(outbox::prepare(publication).unwrap());
    }
    // Committed and handed while the relay publishes the burst's first HANDED_LIMIT.
    let after = commit(vec![post(outbox::HANDED_LIMIT + 3)]).await;
    waker.hand(outbox::prepare(&after[0]).unwrap());
    handed_once(outbox::HANDED_LIMIT + 4).await;

    let ids: Vec<String> = whole_log(&bus)
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = first
        .iter()
        .chain(&burst)
        .chain(&after)
        .map(|p| p.id.unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), expected.len(), "published twice or not at all");
    let out_of_order = ids.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(
        out_of_order, None,
        "the log leaves commit order at this index"
    );
    shutdown.trigger();
    relay_task.await.unwrap();
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_batch_changes_nothing() {
    let (_bus_db, bus, consumer_db) = bus_with_posts(50).await;
    let consumer = Consumer::new(consumer_db.pool.clone(), bus.client(), RecordPosts);
    let batch = bus.client().events_after(0, 50).await.unwrap();
    let first = consumer.deliver(batch.clone()).await.unwrap();
    assert_eq!((first.applied, first.skipped, first.cursor), (50, 0, 50));
    let again = consumer.deliver(batch.clone()).await.unwrap();
    assert_eq!((again.applied, again.skipped, again.cursor), (0, 50, 50));
    // Partly old, partly new, in any order: only the new part applies.
    bus.client()
        .publish(&(50..60).map(post).collect::<Vec<_>>())
        .await
        .unwrap();
    let mut overlapping = bus.client().events_after(40, 20).await.unwrap();
    overlapping.reverse();
    let mixed = consumer.deliver(overlapping).await.unwrap();
    assert_eq!((mixed.applied, mixed.skipped, mixed.cursor), (10, 10, 60));
    assert_eq!(
        applied_seqs(&consumer_db.pool).await,
        (1..=60).collect::<Vec<_>>()
    );
    bus.stop().await;
}

/// Two replicas of a consumer on one database, each handed overlapping deliveries at the
/// same moment (as two bus replicas during a failover would): every event is applied
/// once, in order, and the cursor ends at the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_given_overlapping_deliveries_at_once_apply_each_event_once_in_order() {
    two_replicas_apply_overlapping_deliveries_once_in_order(RecordPosts).await;
    let stepping = StepPosts::default();
    two_replicas_apply_overlapping_deliveries_once_in_order(stepping.clone()).await;
    assert!(stepping.steps() > 0, "no one-event delivery took its step");
}

async fn two_replicas_apply_overlapping_deliveries_once_in_order<H: Reactions + Clone>(handler: H) {
    let (_bus_db, bus, consumer_db) = bus_with_posts(120).await;
    let log = bus.client().events_after(0, 120).await.unwrap();
    let replicas = [
        Consumer::new(consumer_db.pool.clone(), bus.client(), handler.clone()),
        Consumer::new(consumer_db.pool.clone(), bus.client(), handler),
    ];
    // Windows of 1 to 6 events, each overlapping the one before; some skip ahead (a hole
    // the other replica, or the bus, fills).
    let mut start = 0;
    while start < log.len() {
        let end = (start + 1 + start % 6).min(log.len());
        let one = log[start..end].to_vec();
        let other = log[start.saturating_sub(2)..(end + 1).min(log.len())].to_vec();
        let (a, b) = tokio::join!(replicas[0].deliver(one), replicas[1].deliver(other));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.applied + b.applied <= end + 1 - start);
        start = end;
    }
    assert_eq!(
        applied_seqs(&consumer_db.pool).await,
        (1..=120).collect::<Vec<_>>()
    );
    assert_eq!(replicas[0].cursor().await.unwrap(), 120);
    bus.stop().await;
}

/// A delivery of the one event after the cursor is applied by the statement that takes
/// the cursor's step; one the cursor is not right before — a redelivery, one past a
/// hole — changes nothing there and is delivered as any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_of_the_next_event_alone_is_applied_with_the_cursors_step_in_one_statement() {
    use service_kit::consumer::Covers;
    let (_bus_db, bus, consumer_db) = bus_with_posts(60).await;
    let log = bus.client().events_after(0, 60).await.unwrap();
    let handler = StepPosts::default();
    let consumer = Consumer::new(consumer_db.pool.clone(), bus.client(), handler.clone());
    for event in &log[..50] {
        let outcome = consumer.deliver(vec![event.clone()]).await.unwrap();
        assert_eq!((outcome.applied, outcome.cursor), (1, event.seq));
    }
    assert_eq!(handler.steps(), 50);
    // A redelivery: nothing is applied, the cursor stays.
    let again = consumer.deliver(vec![log[24].clone()]).await.unwrap();
    assert_eq!((again.applied, again.skipped, again.cursor), (0, 1, 50));
    // Past a hole (51): the hole is filled by the transaction's way.
    let past = consumer.deliver(vec![log[51].clone()]).await.unwrap();
    assert_eq!((past.applied, past.cursor), (2, 52));
    assert_eq!(handler.steps(), 50);
    // One event standing for a range that starts right after the cursor: one step
    // through the whole range.
    let covers = Covers {
        from: 53,
        through: 56,
        through_id: log[55].id,
    };
    let outcome = consumer
        .deliver_covering(vec![log[54].clone()], Some(covers))
        .await
        .unwrap();
    assert_eq!((outcome.applied, outcome.cursor), (1, 56));
    assert_eq!(handler.steps(), 51);
    let mut expected: Vec<i64> = (1..=52).collect();
    expected.push(55);
    assert_eq!(applied_seqs(&consumer_db.pool).await, expected);
    assert_eq!(consumer.cursor().await.unwrap(), 56);
    bus.stop().await;
}

/// `count` posts in the bus's log, published a thousand at a time.
async fn publish_posts(bus: &RunningBus, count: usize) {
    let all: Vec<_> = (0..count).map(post).collect();
    for chunk in all.chunks(1_000) {
        bus.client().publish(chunk).await.unwrap();
    }
}

/// A consumer on `db` that has applied the log's first `applied` events.
async fn consumer_having_applied(
    bus: &RunningBus,
    db: &TestDatabase,
    applied: u32,
) -> Consumer<RecordPosts> {
    let consumer = Consumer::new(db.pool.clone(), bus.client(), RecordPosts);
    consumer
        .deliver(bus.client().events_after(0, applied).await.unwrap())
        .await
        .unwrap();
    consumer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_that_skips_ahead_fills_the_hole_from_the_bus_and_applies_everything_once_in_order(
) {
    let bus_db = test_db().await;
    let bus = start_bus(&bus_db, BusOptions::default()).await;
    let consumer_db = service_db().await;
    publish_posts(&bus, 5050).await;
    let consumer = consumer_having_applied(&bus, &consumer_db, 100).await;
    assert_eq!(consumer.cursor().await.unwrap(), 100);
    // The consumer is at 100; the delivery starts at 5,000.
    let ahead = bus.client().events_after(4999, 51).await.unwrap();
    assert_eq!(ahead[0].seq, 5000);
    let outcome = consumer.deliver(ahead).await.unwrap();
    assert_eq!((outcome.applied, outcome.cursor), (4950, 5050));
    assert_eq!(
        applied_seqs(&consumer_db.pool).await,
        (1..=5050).collect::<Vec<_>>()
    );
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catch_up_over_several_pages_read_ahead_applies_every_event_once_in_order() {
    let bus_db = test_db().await;
    let bus = start_bus(&bus_db, BusOptions::default()).await;
    let consumer_db = service_db().await;
    // Two full pages and part of a third, after a few the consumer already has.
    publish_posts(&bus, 12_345).await;
    let consumer = consumer_having_applied(&bus, &consumer_db, 7).await;
    assert_eq!(consumer.catch_up().await.unwrap(), 12_345);
    assert_eq!(
        applied_seqs(&consumer_db.pool).await,
        (1..=12_345).collect::<Vec<_>>()
    );
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catch_up_under_steady_publishing_ends_at_the_head_it_began_with() {
    let bus_db = test_db().await;
    let bus = start_bus(&bus_db, BusOptions::default()).await;
    let consumer_db = service_db().await;
    let all: Vec<_> = (0..2000).map(post).collect();
    bus.client().publish(&all).await.unwrap();
    // Publishers that never pause: there is always something newer than the last page.
    let publishing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let (client, publishing) = (bus.client(), publishing.clone());
            tokio::spawn(async move {
                let mut n = 10_000 * (p + 1);
                while publishing.load(std::sync::atomic::Ordering::Relaxed) {
                    client.publish(&[post(n)]).await.unwrap();
                    n += 1;
                }
            })
        })
        .collect();
    eventually(WAIT, "publishing under way", || async {
        bus.client().events_after(2010, 1).await.unwrap().len() == 1
    })
    .await;
    // A live replica on the same database applies each event as it comes, as the bus's
    // deliveries would: the shared cursor is never far behind the head.
    let live = {
        let (live, client) = (
            Consumer::new(consumer_db.pool.clone(), bus.client(), RecordPosts),
            bus.client(),
        );
        let publishing = publishing.clone();
        tokio::spawn(async move {
            while publishing.load(std::sync::atomic::Ordering::Relaxed) {
                let cursor = live.cursor().await.unwrap();
                let page = client.events_after(cursor, 100).await.unwrap();
                live.deliver(page).await.unwrap();
            }
        })
    };
    let consumer = Consumer::new(consumer_db.pool.clone(), bus.client(), RecordPosts);
    let head_before = bus.client().page_after(0, 1).await.unwrap().head.unwrap();
    let caught_up = tokio::time::timeout(WAIT, consumer.catch_up())
        .await
        .expect("catch-up chased the publishers instead of ending")
        .unwrap();
    publishing.store(false, std::sync::atomic::Ordering::Relaxed);
    for publisher in publishers {
        publisher.await.unwrap();
    }
    live.await.unwrap();
    assert!(
        caught_up >= head_before,
        "caught up to {caught_up}, before the head {head_before} it began with"
    );
    let seqs = applied_seqs(&consumer_db.pool).await;
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hole_the_bus_cannot_fill_is_refused_and_the_cursor_stays() {
    let bus_db = test_db().await;
    let bus = start_bus(&bus_db, BusOptions::default()).await;
    let consumer_db = service_db().await;
    bus.client().publish(&[post(0)]).await.unwrap();
    let consumer = Consumer::new(consumer_db.pool.clone(), bus.client(), RecordPosts);
    // An event from some other log, far ahead of anything this bus has.
    let mut stray = bus.client().events_after(0, 1).await.unwrap();
    stray[0].seq = 10;
    assert!(consumer.deliver(stray).await.is_err());
    assert_eq!(consumer.cursor().await.unwrap(), 0);
    assert!(
        applied_seqs(&consumer_db.pool).await.is_empty(),
        "a refused delivery applied something"
    );
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_service_catches_up_before_ready_then_takes_deliveries_from_the_bus() {
    let bus_db = test_db().await;
    let consumer_db = service_db().await;
    let seed_bus = start_bus(&bus_db, BusOptions::default()).await;
    for chunk in (0..2500).map(post).collect::<Vec<_>>().chunks(500) {
        seed_bus.client().publish(chunk).await.unwrap();
    }
    let port = seed_bus.port;
    let readiness = Readiness::pending(Database::migrated(consumer_db.pool.clone()));
    let consumer = Arc::new(Consumer::new(
        consumer_db.pool.clone(),
        seed_bus.client(),
        RecordPosts,
    ));
    let shutdown = Shutdown::new();
    let catch_up = service_kit::consumer::spawn_catch_up(
        consumer.clone(),
        readiness.clone(),
        shutdown.signal(),
    );
    let routes = ConsumerRoutes::new(consumer.clone(), EventsAuth::Open);
    let app = Application::start(
        ServerSettings::on_port(0),
        readiness.clone(),
        move |cfg: &mut actix_web::web::ServiceConfig| routes.register(cfg),
        shutdown,
        vec![catch_up],
    )
    .unwrap();
    let app = RunningApp::serve(app).await;
    let consumer_url = format!("{}/events", app.url);
    app.wait_ready(WAIT).await;
    assert_eq!(
        consumer.cursor().await.unwrap(),
        2500,
        "ready before catching up"
    );

    // Restarted with the consumer as a subscriber, the bus delivers to it over HTTP: already-applied events are skipped by seq.
    seed_bus.stop().await;
    let bus = start_bus(
        &bus_db,
        BusOptions {
            port,
            subscribers: vec![("consumer", consumer_url)],
            ..Default::default()
        },
    )
    .await;
    // One commit, so one delivery batch: over the 64 KiB an API request may carry.
    bus.client()
        .publish(&(2500..2600).map(long_post).collect::<Vec<_>>())
        .await
        .unwrap();
    eventually(WAIT, "deliveries applied", || async {
        consumer.cursor().await.unwrap() == 2600
    })
    .await;
    assert_eq!(
        applied_seqs(&consumer_db.pool).await,
        (1..=2600).collect::<Vec<_>>()
    );
    app.stop().await;
    bus.stop().await;
}

/// Remembers each post once by its id, whichever seq brings it: idempotent by natural
/// key, as the services' reactions are.
struct RememberPosts;

impl Reactions for RememberPosts {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        _envelope: &Envelope,
        event: Event,
    ) -> Result<(), sqlx::Error> {
        if let Event::PostCreated(post) = event {
            sqlx::query("INSERT INTO applied (seq, title) VALUES (0, $1) ON CONFLICT DO NOTHING")
                .bind(post.id)
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

async fn remembered(pool: &PgPool) -> usize {
    sqlx::query_scalar::<_, i64>("SELECT count(DISTINCT title) FROM applied")
        .fetch_one(pool)
        .await
        .unwrap() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rewound_log_is_refused_at_delivery_and_catch_up_until_a_resync_applies_what_it_lacks() {
    let consumer_db = service_db().await;
    sqlx::query("ALTER TABLE applied DROP CONSTRAINT applied_seq_key, ADD UNIQUE (title)")
        .execute(&consumer_db.pool)
        .await
        .unwrap();
    let original_db = test_db().await;
    let original = start_bus(&original_db, BusOptions::default()).await;
    original
        .client()
        .publish(&(0..20).map(post).collect::<Vec<_>>())
        .await
        .unwrap();
    let consumer = Consumer::new(consumer_db.pool.clone(), original.client(), RememberPosts);
    assert_eq!(consumer.catch_up().await.unwrap(), 20);
    original.stop().await;

    // Another log behind the consumer: its events at seqs 1..15 are not the ones applied.
    let other_db = test_db().await;
    let other = start_bus(&other_db, BusOptions::default()).await;
    other
        .client()
        .publish(&(100..115).map(post).collect::<Vec<_>>())
        .await
        .unwrap();
    let consumer = Consumer::new(consumer_db.pool.clone(), other.client(), RememberPosts);
    let redelivered = other.client().events_after(0, 15).await.unwrap();
    let refused = consumer.deliver(redelivered).await.unwrap_err();
    assert!(
        refused.to_string().contains("ends before seq 20"),
        "{refused}"
    );
    let divergence = service_kit::consumer::divergence(&consumer_db.pool)
        .await
        .unwrap();
    assert!(divergence.is_some_and(|d| d.contains("ends before seq 20")));
    // Sticky: a catch-up, or any later delivery, is refused too, and nothing applies.
    assert!(matches!(
        consumer.catch_up().await,
        Err(service_kit::consumer::ConsumerError::Diverged(_))
    ));
    assert_eq!(
        (
            consumer.cursor().await.unwrap(),
            remembered(&consumer_db.pool).await
        ),
        (20, 20)
    );

    // The other log grows past the cursor: at seq 20 it has another event.
    other
        .client()
        .publish(&(115..125).map(post).collect::<Vec<_>>())
        .await
        .unwrap();
    sqlx::query("UPDATE consumer_cursor SET diverged = NULL")
        .execute(&consumer_db.pool)
        .await
        .unwrap();
    let refused = consumer
        .deliver(other.client().events_after(17, 8).await.unwrap())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("at seq 20 is"), "{refused}");
    assert!(matches!(
        consumer.catch_up().await,
        Err(service_kit::consumer::ConsumerError::Diverged(_))
    ));

    // Resynced: the whole other log is read; what was applied stays, once.
    assert_eq!(consumer.resync().await.unwrap(), 25);
    assert_eq!(remembered(&consumer_db.pool).await, 45);
    assert!(service_kit::consumer::divergence(&consumer_db.pool)
        .await
        .unwrap()
        .is_none());
    // And from then on it is the log: a redelivery is a redelivery, new events apply.
    let again = consumer
        .deliver(other.client().events_after(20, 5).await.unwrap())
        .await
        .unwrap();
    assert_eq!((again.applied, again.skipped), (0, 5));
    other.client().publish(&[post(200)]).await.unwrap();
    assert_eq!(consumer.catch_up().await.unwrap(), 26);
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bus_restarted_on_its_own_log_is_trusted() {
    let bus_db = test_db().await;
    let consumer_db = service_db().await;
    let bus = start_bus(&bus_db, BusOptions::default()).await;
    bus.client()
        .publish(&(0..30).map(post).collect::<Vec<_>>())
        .await
        .unwrap();
    let consumer = Consumer::new(consumer_db.pool.clone(), bus.client(), RecordPosts);
    assert_eq!(consumer.catch_up().await.unwrap(), 30);
    // Redeliveries below the cursor (the bus lost its acknowledgement): checked, accepted.
    let old = bus.client().events_after(5, 10).await.unwrap();
    let outcome = consumer.deliver(old).await.unwrap();
    assert_eq!(
        (outcome.applied, outcome.skipped, outcome.cursor),
        (0, 10, 30)
    );
    assert_eq!(consumer.catch_up().await.unwrap(), 30);
    assert!(service_kit::consumer::divergence(&consumer_db.pool)
        .await
        .unwrap()
        .is_none());
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_covering_a_range_moves_the_cursor_through_it_and_fills_only_a_hole_before_it() {
    a_covering_delivery_moves_the_cursor_through_it(RecordPosts).await;
    // None of its deliveries is one event right after the cursor: each takes the
    // transaction's way, whatever the reactions offer.
    a_covering_delivery_moves_the_cursor_through_it(StepPosts::default()).await;
}

async fn a_covering_delivery_moves_the_cursor_through_it(handler: impl Reactions) {
    use service_kit::consumer::Covers;
    let (_bus_db, bus, consumer_db) = bus_with_posts(30).await;
    let log = bus.client().events_after(0, 30).await.unwrap();
    let consumer = Consumer::new(consumer_db.pool.clone(), bus.client(), handler);
    // 1..=10 with only 3 and 7 in the body: the others are types it does not take.
    let body = vec![log[2].clone(), log[6].clone()];
    let covers = |from: i64, through: i64| Covers {
        from,
        through,
        through_id: log[through as usize - 1].id,
    };
    let outcome = consumer
        .deliver_covering(body, Some(covers(1, 10)))
        .await
        .unwrap();
    assert_eq!((outcome.applied, outcome.cursor), (2, 10));
    assert_eq!(applied_seqs(&consumer_db.pool).await, [3, 7]);
    // A range that starts past the cursor: the hole (11..=19) is read from the bus and
    // applied whole, the range itself only as delivered.
    let outcome = consumer
        .deliver_covering(vec![log[24].clone()], Some(covers(20, 30)))
        .await
        .unwrap();
    assert_eq!(outcome.cursor, 30);
    assert_eq!(
        applied_seqs(&consumer_db.pool).await,
        [3, 7, 11, 12, 13, 14, 15, 16, 17, 18, 19, 25]
    );
    // The same range again is a redelivery: checked against the bus, nothing applied.
    let again = consumer
        .deliver_covering(vec![log[24].clone()], Some(covers(20, 30)))
        .await
        .unwrap();
    assert_eq!((again.applied, again.cursor), (0, 30));
    // A range whose last event is not the one applied at our cursor: a rewound log.
    let stray = Covers {
        through_id: uuid::Uuid::now_v7(),
        ..covers(21, 30)
    };
    assert!(matches!(
        consumer.deliver_covering(Vec::new(), Some(stray)).await,
        Err(service_kit::consumer::ConsumerError::Diverged(_))
    ));
    bus.stop().await;
}

/// Publishes an echo of each post it applies, as moderation publishes a decision for
/// each comment; on a post titled "poison" it fails after appending the echo.
struct EchoPosts;

impl Reactions for EchoPosts {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: Event,
    ) -> Result<(), sqlx::Error> {
        if let Event::PostCreated(post) = event {
            let echo = Event::PostCreated(PostCreated {
                id: format!("echo-{}", post.id),
                title: post.title.clone(),
            });
            outbox::append(&mut *conn, &Publication::caused_by(&echo, "echo", envelope)).await?;
            if post.title == "poison" {
                sqlx::query("SELECT 1 / 0").execute(&mut *conn).await?;
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_reactions_append_is_handed_to_the_relay_only_when_their_transaction_commits() {
    let bus_db = test_db().await;
    let bus = start_bus(&bus_db, BusOptions::default()).await;
    let consumer_db = service_db().await;
    let relay = OutboxRelay::new(Database::migrated(consumer_db.pool.clone()), bus.client());
    let consumer =
        Consumer::new(consumer_db.pool.clone(), bus.client(), EchoPosts).waking(relay.waker());
    let shutdown = Shutdown::new();
    let relay_task = relay.spawn(shutdown.signal());
    let titled = |n: usize, title: &str| {
        Publication::new(
            &Event::PostCreated(PostCreated {
                id: format!("p{n}"),
                title: title.into(),
            }),
            "test",
            None,
        )
    };
    bus.client()
        .publish(&[titled(0, "fine"), titled(1, "poison"), titled(2, "fine")])
        .await
        .unwrap();
    let batch = bus.client().events_after(0, 3).await.unwrap();
    // Refused until the poison is parked; each refusal rolled back the echoes appended.
    let mut attempts = 0;
    while consumer.deliver(batch.clone()).await.is_err() {
        attempts += 1;
        assert!(attempts < 20, "the poison event was never parked");
    }
    assert_eq!(consumer.cursor().await.unwrap(), 3);
    eventually(WAIT, "the echoes published", || async {
        bus.client().events_after(3, 10).await.unwrap().len() >= 2
            && OutboxRelay::pending(&consumer_db.pool).await.unwrap() == 0
    })
    .await;
    let echoes: Vec<String> = whole_log(&bus)
        .await
        .iter()
        .filter(|e| e["source"] == "echo")
        .map(|e| e["data"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        echoes,
        ["echo-p0", "echo-p2"],
        "an echo of a rolled-back attempt was published, or one twice"
    );
    shutdown.trigger();
    relay_task.await.unwrap();
    bus.stop().await;
}
