//! `loadtest busy-post`: what one busy post costs everyone. 100 posts with 10 comments
//! each, and one post with 10,000; then, on a quiet system, comment-create latency on
//! a 10-comment post and on the busy one, and `GET /posts` (the whole view, uncached:
//! a comment lands between reads) with and without the busy post. Answers stay bounded
//! when the busy figures are within 1.5× of the quiet ones.

use std::time::Instant;

use crate::stack::{create_comment, create_post, drive, percentile, report, Error, Microblog};

const POSTS: usize = 100;
const BUSY_COMMENTS: usize = 10_000;
const TRIALS: usize = 300;

pub async fn run() -> Result<(), Error> {
    let blog = Microblog::start().await?;
    let (posts, comments, query) = (
        blog.urls["posts"].clone(),
        blog.urls["comments"].clone(),
        blog.urls["query"].clone(),
    );
    let mut ids = Vec::new();
    for n in 0..POSTS {
        let id = create_post(&blog.api, &posts, &format!("post {n}")).await?;
        for c in 0..10 {
            create_comment(&blog.api, &comments, &id, &format!("comment {c}")).await?;
        }
        ids.push(id);
    }
    let quiet = ids[POSTS / 2].clone();
    let quiet_figures = measure(&blog, &quiet, "a post with 10 comments").await?;

    let busy = create_post(&blog.api, &posts, "busy").await?;
    let filled = Instant::now();
    let (api, comments_url, busy_id) = (blog.api.clone(), comments.clone(), busy.clone());
    drive(16, BUSY_COMMENTS, move |n| {
        let (api, comments, busy) = (api.clone(), comments_url.clone(), busy_id.clone());
        async move { create_comment(&api, &comments, &busy, &format!("busy {n}")).await }
    })
    .await?;
    // Every busy comment in the view (and moderated) before measuring.
    loop {
        let post = blog.api.get_json(&format!("{query}/posts/{busy}")).await?;
        if post["commentCount"] == BUSY_COMMENTS
            && post["comments"]
                .as_array()
                .is_some_and(|c| c.iter().all(|c| c["status"] != "pending"))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    println!(
        "{BUSY_COMMENTS} comments on one post written and in the view in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let busy_figures = measure(&blog, &busy, "the post with 10,000 comments").await?;
    println!(
        "busy ÷ quiet p50: comment create {:.2}×, GET /posts {:.2}× (bounded: ≤ 1.5×)",
        busy_figures.0 / quiet_figures.0,
        busy_figures.1 / quiet_figures.1
    );
    blog.world.finish().await;
    Ok(())
}

/// p50 of comment create on `post`, then p50 of reading the whole view right after a
/// comment (so each read renders).
async fn measure(blog: &Microblog, post: &str, name: &str) -> Result<(f64, f64), Error> {
    let (comments, query) = (&blog.urls["comments"], &blog.urls["query"]);
    let mut create_ms = Vec::new();
    let mut view_ms = Vec::new();
    let mut bytes = 0;
    for n in 0..TRIALS {
        let started = Instant::now();
        create_comment(&blog.api, comments, post, &format!("measured {n}")).await?;
        create_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        let whole = blog.api.get_json(&format!("{query}/posts")).await?;
        view_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        bytes = whole.to_string().len();
    }
    let p50 = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        percentile(&v, 50.0)
    };
    let figures = (p50(&create_ms), p50(&view_ms));
    report(&format!("comment create, {name}"), create_ms);
    report(
        &format!("GET /posts after it ({} KiB)", bytes / 1024),
        view_ms,
    );
    Ok(figures)
}
