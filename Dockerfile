# syntax=docker/dockerfile:1.7
#
# Every Rust service's image from one file. Build one with `--target <service>`
# (posts, comments, moderation, query, event-bus); skaffold.yaml does this for each.
#
#   chef     the toolchain plus cargo-chef
#   planner  reduces the workspace to a recipe: manifests and Cargo.lock, no sources
#   cook     compiles only the dependencies of the five services (not the local
#            runner's, the tests' or the load tool's), with the features the build
#            below selects. It is cached for as long as the recipe stays the same, so a
#            source change never recompiles them
#   build    ONE cargo build of all five binaries; every service target copies from it
#   <svc>    distroless cc (glibc, no shell) + one binary, running as 65532
#
# The builder is trixie (Debian 13, glibc 2.41) because the runtime is
# distroless/cc-debian13: the binaries link glibc dynamically and must not need a newer
# one than the runtime ships (scripts/check-k8s holds the two to one Debian release).
# Every image here is published for Intel and ARM machines alike, and nothing below
# names an architecture, so the images build natively on Apple Silicon too.
# RUN --mount needs BuildKit (the default builder since Docker 23; skaffold sets
# useBuildkit).

FROM rust:1.95.0-trixie AS chef
# bash with pipefail, so that a failing command inside a pipe fails the RUN.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The version is pinned so that the recipe format cannot change under a cached layer.
RUN --mount=type=cache,id=microblog-cargo-registry,target=/usr/local/cargo/registry \
    cargo install cargo-chef --locked --version 0.1.77
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS cook
COPY --from=planner /app/recipe.json recipe.json
# target/ stays in this layer (it is the seed of the build stage's cache below), so a
# builder that keeps layers but not cache mounts, such as most CI builders, still
# skips the dependencies.
RUN --mount=type=cache,id=microblog-cargo-registry,target=/usr/local/cargo/registry \
    cargo chef cook --release --locked --bins --recipe-path recipe.json \
        -p posts -p comments -p moderation -p query -p event-bus

FROM chef AS build
# Inherited from chef; repeated because hadolint checks each stage on its own.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=planner /app/recipe.json recipe.json
COPY . .
# target/ is a cache mount that outlives builds, so a change to one service recompiles
# that crate and what depends on it, not the whole workspace. It is seeded from the
# cooked layer whenever the recipe (the dependency set) changes, at the same path
# (/app/target) because cargo's fingerprints hold absolute paths.
#
# The trap this avoids: cargo decides that a workspace crate is fresh by comparing
# file mtimes with its last build, but COPY may give files any mtime (some builders
# normalise them), and sqlx::migrate! embeds <crate>/migrations without cargo noticing
# a new file there. Either way a long-lived target/ could ship a stale binary. So each
# crate's content hash is compared with the one of the last successful build, and a
# crate whose content changed is touched, which cargo cannot miss. The hashes are
# saved only after the build succeeds.
RUN --mount=type=cache,id=microblog-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=bind,from=cook,source=/app/target,target=/cooked \
    --mount=type=cache,id=microblog-target,target=/app/target,sharing=locked \
    set -eu; \
    recipe="$(sha256sum recipe.json)"; \
    if [ "$(cat target/.cooked-recipe 2>/dev/null || true)" != "$recipe" ]; then \
        find target -mindepth 1 -delete; \
        cp -a /cooked/. target/; \
        echo "$recipe" > target/.cooked-recipe; \
    fi; \
    mkdir -p /tmp/sums; \
    for manifest in */Cargo.toml; do \
        crate="${manifest%/Cargo.toml}"; \
        find "$crate" -type f -exec sha256sum {} + | sort > "/tmp/sums/$crate"; \
        if ! cmp -s "/tmp/sums/$crate" "target/.sources-$crate"; then \
            find "$crate" -type f -exec touch {} +; \
        fi; \
    done; \
    cargo build --release --locked --bins \
        -p posts -p comments -p moderation -p query -p event-bus; \
    for sums in /tmp/sums/*; do cp "$sums" "target/.sources-${sums##*/}"; done; \
    mkdir -p /out; \
    for bin in posts comments moderation query event-bus; do \
        cp "target/release/$bin" /out/; \
    done

# distroless/cc: glibc, libgcc and CA certificates, no shell, no package manager. The
# tag is the one whose default user is already nonroot; USER repeats it numerically
# so that Kubernetes' runAsNonRoot can verify it. No EXPOSE: a service's port is the
# topology's (`devstack topology`), which its Deployment sets as PORT and containerPort
# (Kubernetes ignores EXPOSE); scripts/check-k8s keeps this file and the topology in step.
FROM gcr.io/distroless/cc-debian13:nonroot AS runtime
USER 65532:65532

FROM runtime AS posts
COPY --from=build /out/posts /usr/local/bin/posts
ENTRYPOINT ["/usr/local/bin/posts"]

FROM runtime AS comments
COPY --from=build /out/comments /usr/local/bin/comments
ENTRYPOINT ["/usr/local/bin/comments"]

FROM runtime AS query
COPY --from=build /out/query /usr/local/bin/query
ENTRYPOINT ["/usr/local/bin/query"]

FROM runtime AS moderation
COPY --from=build /out/moderation /usr/local/bin/moderation
ENTRYPOINT ["/usr/local/bin/moderation"]

FROM runtime AS event-bus
COPY --from=build /out/event-bus /usr/local/bin/event-bus
ENTRYPOINT ["/usr/local/bin/event-bus"]
