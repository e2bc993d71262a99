//! What runs the microblog outside Kubernetes, shared by the local runner (devstack),
//! the system tests and the load tool, and never built into a service image: the one
//! table of services (`topology`), the one process harness (`process`, `stack`), the
//! local PostgreSQL launcher (`postgres`) and a client of the public API (`api`).

pub mod api;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod stack;
pub mod topology;
