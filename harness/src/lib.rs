//! What runs the microblog outside Kubernetes, shared by the local runner, the system
//! tests and the load tool: the local PostgreSQL launcher.

pub mod postgres;
