#!/usr/bin/env python3
"""With devstack --observe: the Prometheus it started scrapes every instance of every
service, and the shipped rules load and evaluate.

    scripts/check-observe.py PROMETHEUS_URL INSTANCES

Waits (up to a deadline) until Prometheus reports exactly INSTANCES targets, all up, and
every rule of infra/prometheus/rules.yml loaded and evaluating without error; then reads
one series each of the bus and a consumer through PromQL, and evaluates every query of
the Grafana dashboard (infra/grafana/microblog.json), each of whose series names must be
one Prometheus has. Standard library only.
"""

import json
import re
import sys
from pathlib import Path
import time
import urllib.parse
import urllib.request

DEADLINE_S = 90
JOBS = {"posts", "comments", "moderation", "query", "event-bus"}
ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "infra" / "grafana" / "microblog.json"


def series_names(expr):
    """The series an expression reads: what is left once strings, label matchers, ranges,
    `by (...)` lists, functions and numbers are taken out."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", bare)
    tokens = re.findall(r"(?<![A-Za-z0-9_:])[A-Za-z_:][A-Za-z0-9_:]*(?![A-Za-z0-9_:]|\s*\()", bare)
    return {t for t in tokens if not re.fullmatch(r"\d+", t) and t not in ("and", "or", "unless", "bool", "on", "ignoring")}


def registered_series():
    """Every series name the services' metrics modules can expose (`register("name", …)`
    is a counter's `name_total` or a gauge's `name`; `register_seconds` appends
    `_seconds`), histograms with their `_bucket`, `_sum` and `_count`."""
    names = set()
    for module in ROOT.glob("*/src/metrics.rs"):
        for function, name in re.findall(r'\b(register|register_seconds)\(\s*"([a-z_:]+)"', module.read_text()):
            name += "_seconds" if function == "register_seconds" else ""
            names |= {name + suffix for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    if not names:
        raise RuntimeError(f"no register(\"…\") calls found in {ROOT}/*/src/metrics.rs")
    return names


def dashboard_problems(base):
    found = []
    # What has samples, what the recording rules make, and what the services register:
    # a family with labels has no series until something is counted (no delivery failed
    # yet), and it is still no typo.
    known = set(get(base, "/api/v1/label/__name__/values"))
    known |= {rule["name"] for group in get(base, "/api/v1/rules")["groups"] for rule in group["rules"]}
    known |= registered_series()
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            try:
                get(base, "/api/v1/query", query=expr)
            except (OSError, RuntimeError) as error:
                found.append(f"dashboard panel {panel['title']!r}: {expr} does not evaluate: {error}")
            missing = {n for n in series_names(expr) if n not in known}
            if missing:
                found.append(f"dashboard panel {panel['title']!r}: {expr} reads {sorted(missing)}, which no service registers and no rule records")
    return found


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
    return found or dashboard_problems(base)


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
            print(f"check-observe: Prometheus scrapes all {instances} instances, every target up, every rule and dashboard query evaluating")
            return
        if time.monotonic() > deadline:
            sys.exit("check-observe: " + "; ".join(found))
        time.sleep(1)


if __name__ == "__main__":
    main()
