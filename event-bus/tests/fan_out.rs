//! Delivery guarantees: every subscriber gets every event exactly once, in seq order,
//! whatever the subscribers, the bus or concurrent publishers do.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::sync::Arc;
use std::time::Duration;

use testkit::bus::*;
use testkit::{eventually, RecordingSubscriber, SubscriberMode};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_subscribers_each_receive_a_thousand_events_once_in_seq_order() {
    let db = test_db().await;
    let subscribers = [
        RecordingSubscriber::start(),
        RecordingSubscriber::start(),
        RecordingSubscriber::start(),
    ];
    let bus = start_bus(
        &db,
        BusOptions {
            subscribers: vec![
                ("a", subscribers[0].url()),
                ("b", subscribers[1].url()),
                ("c", subscribers[2].url()),
            ],
            ..Default::default()
        },
    )
    .await;
    let client = bus.client();
    // Single events from 4 concurrent publishers, so group commit is exercised too.
    let mut publishers = Vec::new();
    for p in 0..4 {
        let client = client.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..250 {
                client
                    .publish(&[numbered(p * 250 + i)])
                    .await
                    .expect("publish");
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    for (i, subscriber) in subscribers.iter().enumerate() {
        eventually(WAIT, "every subscriber has 1000 events", || async {
            subscriber.count() >= 1000
        })
        .await;
        assert_in_order_once(&subscriber.seqs(), 1000, &format!("subscriber {i}"));
    }
    // Every event published arrived with its data intact.
    let mut numbers: Vec<i64> = subscribers[0]
        .received()
        .iter()
        .map(|e| e.data["n"].as_i64().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(numbers, (0..1000).collect::<Vec<i64>>());
    bus.stop().await;
}

/// A visibility trial's hop: one publish, delivered before the next. The commit that
/// wakes the delivery loop is also announced to this replica's own listener, which may
/// hear it before the append returns; the loop must still find the event where the
/// append put it, in memory, and not read it back from PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_just_appended_are_delivered_without_reading_them_back() {
    let db = test_db().await;
    let subscriber = RecordingSubscriber::start();
    let bus = start_bus_for(&db, &subscriber).await;
    let client = bus.client();
    for n in 0..300 {
        client.publish(&[numbered(n)]).await.expect("publish");
        eventually(WAIT, "the event delivered", || async {
            subscriber.count() > n
        })
        .await;
    }
    assert_in_order_once(&subscriber.seqs(), 300, "subscriber");
    bus.stop().await;
    let pages_read = testkit::index_scans(&db, "events_pkey").await;
    assert_eq!(
        pages_read, 0,
        "the loop read {pages_read} pages back from PostgreSQL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sick_subscribers_get_every_event_in_order_after_recovery_while_healthy_ones_finish() {
    let db = test_db().await;
    let failing = RecordingSubscriber::start();
    let mut refusing = RecordingSubscriber::start();
    let healthy = RecordingSubscriber::start();
    failing.set_mode(SubscriberMode::Fail(500));
    refusing.go_down().await;
    let bus = start_bus(
        &db,
        BusOptions {
            subscribers: vec![
                ("failing", failing.url()),
                ("refusing", refusing.url()),
                ("healthy", healthy.url()),
            ],
            batch_size: 50,
            ..Default::default()
        },
    )
    .await;
    let client = bus.client();
    let batch: Vec<_> = (0..300).map(numbered).collect();
    for chunk in batch.chunks(30) {
        client.publish(chunk).await.expect("publish");
    }
    // The healthy subscriber finishes while the others are still sick.
    eventually(WAIT, "healthy subscriber has all 300", || async {
        healthy.count() >= 300
    })
    .await;
    assert_in_order_once(&healthy.seqs(), 300, "healthy");
    assert_eq!(failing.count(), 0);
    assert_eq!(refusing.count(), 0);

    // The status page tells who is behind and why (it is updated just after each
    // acknowledgement, so wait for it to settle).
    let status_url = format!("{}/subscriptions", bus.url());
    let subscription = |status: &serde_json::Value, name: &str| {
        status["subscriptions"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    eventually(
        WAIT,
        "status shows the healthy one caught up, the sick ones behind with errors",
        || async {
            let status: serde_json::Value = reqwest::get(&status_url)
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            status["head"] == 300
                && subscription(&status, "healthy")["lag"] == 0
                && subscription(&status, "failing")["lag"] == 300
                && subscription(&status, "failing")["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("500"))
                && subscription(&status, "refusing")["lag"] == 300
                && subscription(&status, "refusing")["lastError"].is_string()
        },
    )
    .await;

    failing.set_mode(SubscriberMode::Accept);
    refusing.come_back();
    eventually(WAIT, "recovered subscribers have all 300", || async {
        failing.count() >= 300 && refusing.count() >= 300
    })
    .await;
    assert_in_order_once(&failing.seqs(), 300, "failing, after recovery");
    assert_in_order_once(&refusing.seqs(), 300, "refusing, after recovery");
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bus_restarted_mid_stream_loses_nothing_and_reorders_nothing() {
    let db = test_db().await;
    let subscriber = RecordingSubscriber::start();
    let options = || BusOptions {
        subscribers: vec![("sub", subscriber.url())],
        batch_size: 20,
        ..Default::default()
    };
    let bus = start_bus(&db, options()).await;
    let first_half: Vec<_> = (0..400).map(numbered).collect();
    let client = bus.client();
    for chunk in first_half.chunks(10) {
        client.publish(chunk).await.expect("publish");
    }
    // Stop while deliveries are still under way.
    eventually(WAIT, "some deliveries happened", || async {
        subscriber.count() >= 20
    })
    .await;
    bus.stop().await;
    let delivered_before_restart = subscriber.count();

    let bus = start_bus(&db, options()).await;
    let client = bus.client();
    let second_half: Vec<_> = (400..800).map(numbered).collect();
    for chunk in second_half.chunks(10) {
        publish_until_accepted(&client, chunk).await;
    }
    eventually(WAIT, "all 800 delivered", || async {
        let mut seqs = subscriber.seqs();
        seqs.sort();
        seqs.dedup();
        seqs.len() >= 800
    })
    .await;
    let seqs = subscriber.seqs();
    // At most the batch in flight at the stop is delivered again, and only right after
    // the restart point; apart from that, strictly in order.
    let mut seen = 0i64;
    let mut redelivered = Vec::new();
    for &seq in &seqs {
        if seq <= seen {
            redelivered.push(seq);
        } else {
            assert_eq!(seq, seen + 1, "a hole before seq {seq}");
            seen = seq;
        }
    }
    assert_eq!(seen, 800);
    assert!(
        redelivered.len() <= 20,
        "redelivered more than one batch: {redelivered:?}"
    );
    // The batch in flight at the stop may reach the subscriber just after the count was
    // read (the bus stopped waiting for its answer, not the request): what comes again is
    // at most that batch.
    assert!(
        redelivered
            .iter()
            .all(|&s| s as usize <= delivered_before_restart + 20),
        "redelivered {redelivered:?}, though only {delivered_before_restart} had arrived at the stop"
    );
    assert_eq!(whole_log(&bus).await.len(), 800);
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_publishers_make_a_gap_free_log_that_every_subscriber_reads_in_order() {
    let db = test_db().await;
    let subscribers = Arc::new([RecordingSubscriber::start(), RecordingSubscriber::start()]);
    let bus = start_bus(
        &db,
        BusOptions {
            subscribers: vec![("one", subscribers[0].url()), ("two", subscribers[1].url())],
            batch_size: 64,
            ..Default::default()
        },
    )
    .await;
    let mut publishers = Vec::new();
    for p in 0..8 {
        let client = bus.client();
        publishers.push(tokio::spawn(async move {
            // Mixed sizes: singles and small batches race for the log's head.
            let events: Vec<_> = (0..500).map(|i| numbered(p * 500 + i)).collect();
            let mut rest = events.as_slice();
            let mut size = 1;
            while !rest.is_empty() {
                let (now, later) = rest.split_at(size.min(rest.len()));
                client.publish(now).await.expect("publish");
                rest = later;
                size = size % 7 + 1;
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let log = whole_log(&bus).await;
    let seqs: Vec<i64> = log.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=4000).collect::<Vec<i64>>(),
        "the log has a hole or is out of order"
    );
    for (i, subscriber) in subscribers.iter().enumerate() {
        eventually(WAIT, "every subscriber has 4000 events", || async {
            subscriber.count() >= 4000
        })
        .await;
        assert_in_order_once(&subscriber.seqs(), 4000, &format!("subscriber {i}"));
    }
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_publishing_side_by_side_make_one_gap_free_log_and_keep_one_copy_of_an_id() {
    let db = test_db().await;
    let subscriber = Arc::new(RecordingSubscriber::start());
    let options = || BusOptions {
        subscribers: vec![("one", subscriber.url())],
        ..Default::default()
    };
    let buses = [
        start_bus(&db, options()).await,
        start_bus(&db, options()).await,
    ];
    let mut publishers = Vec::new();
    for p in 0..8 {
        // Each publisher sends to one replica and republishes what it sent to the other,
        // as a relay whose answer was lost does after the Service moved it.
        let (here, there) = (buses[p % 2].client(), buses[(p + 1) % 2].client());
        publishers.push(tokio::spawn(async move {
            for chunk in 0..50 {
                let events: Vec<_> = (0..5).map(|i| numbered(p * 1000 + chunk * 5 + i)).collect();
                let first = here.publish(&events).await.expect("publish");
                let again = there.publish(&events).await.expect("republish");
                let seqs = |answer: &[contract::Accepted]| {
                    answer.iter().map(|a| a.seq).collect::<Vec<_>>()
                };
                assert_eq!(
                    seqs(&again),
                    seqs(&first),
                    "a republished id got another seq"
                );
                assert!(again.iter().all(|a| a.duplicate));
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let log = whole_log(&buses[0]).await;
    let seqs: Vec<i64> = log.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=2000).collect::<Vec<i64>>(),
        "a hole, a reorder or a copy"
    );
    eventually(WAIT, "the subscriber has every event", || async {
        subscriber.count() >= 2000
    })
    .await;
    assert_in_order_once(&subscriber.seqs(), 2000, "the subscriber");
    let [first, second] = buses;
    first.stop().await;
    second.stop().await;
}

/// A publication of another type than `numbered`'s.
fn other(n: usize) -> contract::Publication {
    serde_json::from_value(serde_json::json!({
        "id": uuid::Uuid::now_v7(),
        "type": "Other",
        "data": { "n": n },
        "source": "test",
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_says_what_it_takes_gets_only_that_and_every_seq_covered_once_in_order() {
    let db = test_db().await;
    let (picky, everything) = (RecordingSubscriber::start(), RecordingSubscriber::start());
    picky.wanting(&["Numbered"]);
    let bus = start_bus(
        &db,
        BusOptions {
            subscribers: vec![("picky", picky.url()), ("all", everything.url())],
            ..Default::default()
        },
    )
    .await;
    let client = bus.client();
    // Mixed, then a tail of only the type it does not take: that tail must be covered too.
    let mut published = 0;
    for n in 0..300 {
        let publication = if n % 3 == 0 { numbered(n) } else { other(n) };
        client.publish(&[publication]).await.unwrap();
        published += 1;
    }
    for n in 0..20 {
        client.publish(&[other(1000 + n)]).await.unwrap();
        published += 1;
    }
    eventually(WAIT, "the plain subscriber has everything", || async {
        everything.count() >= published
    })
    .await;
    assert_in_order_once(&everything.seqs(), published, "all");
    // Each delivery stands for the seqs after the one before: those it holds, or with a
    // range, all of that range. Together, every seq once, in order, to the head.
    let covered = |batches: &[(Option<String>, Vec<i64>)]| -> Result<i64, String> {
        let mut next = 1;
        for (covers, seqs) in batches {
            let (from, through) = match covers {
                None => match (seqs.first(), seqs.last()) {
                    (Some(first), Some(last)) => (*first, *last),
                    _ => return Err("an empty delivery without a range".into()),
                },
                Some(covers) => {
                    let (range, _) = covers.split_once(' ').ok_or(covers.clone())?;
                    let (from, through) = range.split_once('-').ok_or(covers.clone())?;
                    (from.parse().unwrap(), through.parse().unwrap())
                }
            };
            if from != next || seqs.iter().any(|s| *s < from || *s > through) {
                return Err(format!("{covers:?} {seqs:?} after {}", next - 1));
            }
            next = through + 1;
        }
        Ok(next - 1)
    };
    eventually(WAIT, "the picky subscriber covered to the head", || async {
        covered(&picky.batches()) == Ok(published as i64)
    })
    .await;
    let batches = picky.batches();
    let first_filtered = batches.iter().position(|(c, _)| c.is_some()).unwrap();
    // Once it said what it takes, only that; and every event of that type arrived.
    let after_saying: Vec<i64> = batches[first_filtered..]
        .iter()
        .flat_map(|(_, seqs)| seqs.clone())
        .collect();
    let kinds: std::collections::HashMap<i64, String> = everything
        .received()
        .into_iter()
        .map(|e| (e.seq, e.kind))
        .collect();
    assert!(after_saying.iter().all(|seq| kinds[seq] == "Numbered"));
    let from = batches[first_filtered].0.as_deref().unwrap();
    let from: i64 = from.split('-').next().unwrap().parse().unwrap();
    let wanted: Vec<i64> = (from..=published as i64)
        .filter(|seq| kinds[seq] == "Numbered")
        .collect();
    assert_eq!(after_saying, wanted);
    // The others ride along with the next wanted one, and the unwanted tail goes in a
    // range of its own or two: never a delivery per unwanted event.
    assert!(
        batches.len() - first_filtered <= wanted.len() + 3,
        "{} deliveries for {} wanted events",
        batches.len() - first_filtered,
        wanted.len()
    );
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_answers_it_is_further_on_is_sent_only_what_follows_and_never_skips_past_the_head(
) {
    let db = test_db().await;
    let ahead = RecordingSubscriber::start();
    ahead.set_mode(SubscriberMode::Fail(503));
    let bus = start_bus(
        &db,
        BusOptions {
            subscribers: vec![("ahead", ahead.url())],
            batch_size: 50,
            ..Default::default()
        },
    )
    .await;
    let client = bus.client();
    let batch: Vec<_> = (0..300).map(numbered).collect();
    for chunk in batch.chunks(100) {
        client.publish(chunk).await.expect("publish");
    }
    // As a consumer that read the log to seq 200 by itself, while the bus could not
    // reach it: the first delivery tells the bus, which goes on after 200.
    ahead.claiming_cursor(200);
    ahead.set_mode(SubscriberMode::Accept);
    eventually(WAIT, "seq 300 delivered", || async {
        ahead.seqs().last() == Some(&300)
    })
    .await;
    let expected: Vec<i64> = (1..=50).chain(201..=300).collect();
    assert_eq!(ahead.seqs(), expected);

    // A cursor past the log's head moves the bus no further than its head: what is
    // published next is still delivered.
    ahead.claiming_cursor(1_000_000);
    for n in 300..303 {
        client.publish(&[numbered(n)]).await.expect("publish");
        eventually(WAIT, "the newest event delivered", || async {
            ahead.seqs().last() == Some(&(n as i64 + 1))
        })
        .await;
    }
    let status: serde_json::Value = reqwest::get(format!("{}/subscriptions", bus.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["subscriptions"][0]["cursor"], 303, "{status}");
    bus.stop().await;
}
