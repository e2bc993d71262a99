#!/usr/bin/env python3
"""After fuzzing: nothing was half-written and every event was delivered.

Reads the local stack's services directly (ports from `devstack topology --json`):

- delivered: every subscriber of the bus reaches the head, none has diverged, and no
  consumer holds a parked event (checked after both fuzz runs);
- rows match the log (--rows, after the public fuzz only, before anything publishes to the
  bus directly): each post in the posts service has exactly one PostCreated from posts in
  the log, and each such event its post; the view holds every post with its title; each
  post's comment total is the same in the comments service, in the log's CommentCreated
  events from comments, and in the view.

    scripts/api/check-stack.py TOPOLOGY_JSON TOKEN [--rows]

Standard library only, so it runs with any python3.
"""

import json
import sys
import time
import urllib.request
from collections import Counter

DEADLINE_S = 120


def get(url, token=None):
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response), response.headers


def fail(message):
    print(f"check-stack: {message}", file=sys.stderr)
    sys.exit(1)


def delivered(url, consumers, token):
    """Waits until every subscriber is at the head with nothing parked."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status, _ = get(f"{url['event-bus']}/subscriptions")
        behind = [s["name"] for s in status["subscriptions"] if s["cursor"] != status["head"]]
        diverged = [s["name"] for s in status["subscriptions"] if s["diverged"]]
        parked = {name: get(f"{url[name]}/parked", token)[0] for name in consumers}
        parked = {name: events for name, events in parked.items() if events}
        if diverged:
            fail(f"subscribers refuse the log as diverged: {diverged}")
        if parked:
            fail(f"events parked (a stored event a consumer could not apply): {json.dumps(parked)[:2000]}")
        if not behind:
            print(f"check-stack: every subscriber at the head ({status['head']}), nothing parked")
            return
        if time.monotonic() > deadline:
            fail(f"subscribers behind the head {status['head']} after {DEADLINE_S} s: {status['subscriptions']}")
        time.sleep(0.5)


def rows_match_the_log(url, token):
    log, _ = get(f"{url['event-bus']}/events", token)
    announced = Counter(e["data"]["id"] for e in log if e["type"] == "PostCreated" and e.get("source") == "posts")
    comments_announced = Counter(
        e["data"]["postId"] for e in log if e["type"] == "CommentCreated" and e.get("source") == "comments"
    )
    posts, _ = get(f"{url['posts']}/posts")
    view, _ = get(f"{url['query']}/posts")
    repeated = [id for id, n in announced.items() if n > 1]
    if repeated:
        fail(f"posts announced more than once: {repeated[:10]}")
    if set(posts) != set(announced):
        fail(
            "posts and their PostCreated events differ: without an event "
            f"{sorted(set(posts) - set(announced))[:10]}, events without a post {sorted(set(announced) - set(posts))[:10]}"
        )
    for id, post in posts.items():
        shown = view.get(id)
        if shown is None or shown["title"] != post["title"]:
            fail(f"post {id!r} is {post!r} in posts but {shown!r} in the view")
        _, headers = get(f"{url['comments']}/posts/{urllib.request.quote(id, safe='')}/comments?limit=1")
        stored = int(headers["X-Total-Count"])
        if not stored == comments_announced[id] == shown["commentCount"]:
            fail(
                f"post {id!r}: {stored} comments in comments, {comments_announced[id]} CommentCreated "
                f"from comments in the log, {shown['commentCount']} in the view"
            )
    print(
        f"check-stack: {len(posts)} posts and {sum(comments_announced[id] for id in posts)} comments, "
        "each with exactly its event, all in the view"
    )


if __name__ == "__main__":
    if len(sys.argv) < 3:
        fail("usage: check-stack.py TOPOLOGY_JSON TOKEN [--rows]")
    topology = json.loads(sys.argv[1])
    token = sys.argv[2]
    url = {s["name"]: f"http://127.0.0.1:{s['port']}" for s in topology["services"]}
    consumers = [s["name"] for s in topology["services"] if s["consumesEvents"]]
    delivered(url, consumers, token)
    if "--rows" in sys.argv[3:]:
        rows_match_the_log(url, token)
