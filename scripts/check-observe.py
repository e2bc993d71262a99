#!/usr/bin/env python3
"""With devstack --observe: the Prometheus it started scrapes every instance of every
service, and the shipped rules load and evaluate.

    scripts/check-observe.py PROMETHEUS_URL INSTANCES

Waits (up to a deadline) until Prometheus reports exactly INSTANCES targets, all up, and
every rule of infra/prometheus/rules.yml loaded and evaluating without error; then reads
one series each of the bus and a consumer through PromQL. Standard library only.
"""

import json
import sys
import time
import urllib.parse
import urllib.request

DEADLINE_S = 90
JOBS = {"posts", "comments", "moderation", "query", "event-bus"}


def get(base, path, **params):
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    if answer.get("status") != "success":
        raise RuntimeError(f"{url}: {answer}")
    return answer["data"]


def problems(base, instances):
    found = []
    targets = get(base, "/api/v1/targets", state="active")["activeTargets"]
    jobs = {t["labels"]["job"] for t in targets}
    if len(targets) != instances or jobs != JOBS:
        found.append(f"{len(targets)} targets of jobs {sorted(jobs)}, expected {instances} of {sorted(JOBS)}")
    found += [f"{t['scrapeUrl']} is {t['health']} {t['lastError']}" for t in targets if t["health"] != "up"]
    groups = get(base, "/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    if {g["name"] for g in groups} != {"microblog-recording", "microblog-alerts"} or len(rules) < 10:
        found.append(f"rule groups {[g['name'] for g in groups]} with {len(rules)} rules")
    found += [f"rule {r['name']}: {r['health']} {r.get('lastError', '')}" for r in rules if r["health"] != "ok"]
    for series in ("bus_head_seq", 'consumer_caught_up{job="query"}'):
        if not get(base, "/api/v1/query", query=series)["result"]:
            found.append(f"no sample of {series}")
    return found


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    base, instances = sys.argv[1].rstrip("/"), int(sys.argv[2])
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            found = problems(base, instances)
        except (OSError, RuntimeError, KeyError) as error:
            found = [f"asking Prometheus: {error}"]
        if not found:
            print(f"check-observe: Prometheus scrapes all {instances} instances, every target up, every rule evaluating")
            return
        if time.monotonic() > deadline:
            sys.exit("check-observe: " + "; ".join(found))
        time.sleep(1)


if __name__ == "__main__":
    main()
