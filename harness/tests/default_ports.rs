//! Each service's own default port is the topology's: a deployment that leaves `PORT`
//! unset (as the course's manifests do) gets the port everyone else expects.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use harness::topology;
use service_kit::config::Env;

#[test]
fn every_service_listens_by_default_on_its_topology_port() {
    let env = Env::from_pairs([
        ("DATABASE_URL", "postgres://db/x"),
        ("EVENT_BUS_URL", "http://bus"),
    ]);
    let defaults = [
        (
            "event-bus",
            event_bus::BusConfig::from_env(&env).unwrap().service.port,
        ),
        ("posts", posts::config_from_env(&env).unwrap().service.port),
        (
            "comments",
            comments::config_from_env(&env).unwrap().service.port,
        ),
        (
            "moderation",
            moderation::config_from_env(&env).unwrap().base.service.port,
        ),
        ("query", query::config_from_env(&env).unwrap().service.port),
    ];
    assert_eq!(
        defaults.len(),
        topology::SERVICES.len(),
        "a service is not pinned"
    );
    for (name, port) in defaults {
        let service = topology::service(name).unwrap();
        assert_eq!(port, service.port, "{name} listens by default on {port}");
    }
}
