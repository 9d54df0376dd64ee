//! RDS end to end (issue 12, item 4): route configurations over the ADS stream (SotW and
//! delta), requested because LDS listeners name them, listeners warming until they arrive,
//! changes applied to new requests on established connections, NACKs with the field path,
//! and a route change under load that fails no request.

use plumb_tests::agent::TestAgent;
use plumb_tests::client::get;
use plumb_tests::http_client::{request, H1};
use plumb_tests::http_upstream;
use plumb_tests::xds::{
    ads_bootstrap, http_rds_listener, route_to, static_cluster, ControlPlane, ROUTE,
};
use std::net::SocketAddr;
use std::time::Duration;

fn free_addr() -> SocketAddr {
    plumb_tests::servers::closed_port()
}

async fn served_by(c: &mut H1) -> (String, String) {
    let r = c.send(request("GET", "svc", "/", &[], b"")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    (
        j["server"].as_str().unwrap_or_default().to_string(),
        j["headers"]["x-route"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

async fn routes_arrive_and_change(api: &str) {
    let a = http_upstream::start("a").await;
    let b = http_upstream::start("b").await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    cp.set(
        vec![static_cluster("a", a.addr), static_cluster("b", b.addr)],
        vec![http_rds_listener("web", front, "routes")],
        vec![],
    );
    cp.set_routes(vec![route_to("routes", "a", "v1")]);
    let agent = TestAgent::start(&ads_bootstrap(cp.addr, api)).await;
    let mut c = H1::connect(front).await;
    assert_eq!(served_by(&mut c).await, ("a".into(), "v1".into()));
    assert!(
        cp.requests()
            .iter()
            .any(|r| r.type_url == ROUTE && r.names == vec!["routes".to_string()]),
        "RDS is requested by name"
    );
    // A new version applies to the next request on the same connection.
    cp.set_routes(vec![route_to("routes", "b", "v2")]);
    plumb_tests::wait_until("the new routes", Duration::from_secs(10), || async {
        agent.stat("http.web.rds.routes.config_reload") == 2
    })
    .await;
    assert_eq!(served_by(&mut c).await, ("b".into(), "v2".into()));
    assert_eq!(a.connections() + b.connections(), 2);
    let dump = get(agent.admin(), "/config_dump").await.json().to_string();
    assert!(
        dump.contains("RoutesConfigDump") && dump.contains("dynamic_route_configs"),
        "{dump}"
    );
    assert!(
        dump.contains("\"x-route\"") && dump.contains("\"v2\""),
        "{dump}"
    );

    // An invalid version is NACKed with the field path; the last good one keeps serving.
    let mut bad = route_to("routes", "a", "v3");
    bad.virtual_hosts[0].domains = vec!["a*b".into()];
    cp.set_routes(vec![bad]);
    plumb_tests::wait_until("a NACK", Duration::from_secs(10), || async {
        cp.nacks().iter().any(|n| n.type_url == ROUTE)
    })
    .await;
    let nack = cp
        .nacks()
        .into_iter()
        .find(|n| n.type_url == ROUTE)
        .unwrap();
    let msg = nack.error.unwrap_or_default();
    assert!(
        msg.contains("route configuration \"routes\"")
            && msg.contains("virtual_hosts[0].domains[0]: invalid domain"),
        "{msg}"
    );
    assert_eq!(agent.stat("http.web.rds.routes.update_rejected"), 1);
    assert_eq!(served_by(&mut c).await, ("b".into(), "v2".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_routes_arrive_change_and_are_nacked_sotw() {
    routes_arrive_and_change("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_routes_arrive_change_and_are_nacked_delta() {
    routes_arrive_and_change("DELTA_GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_warms_until_its_routes_arrive() {
    let a = http_upstream::start("a").await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    let agent = TestAgent::start(&ads_bootstrap(cp.addr, "GRPC")).await;
    cp.set(
        vec![static_cluster("a", a.addr)],
        vec![http_rds_listener("web", front, "late")],
        vec![],
    );
    plumb_tests::wait_until("the listener to warm", Duration::from_secs(10), || async {
        get(agent.admin(), "/config_dump")
            .await
            .body
            .contains("warming_state")
    })
    .await;
    assert!(
        tokio::net::TcpStream::connect(front).await.is_err(),
        "not bound while warming"
    );
    cp.set_routes(vec![route_to("late", "a", "now")]);
    plumb_tests::wait_until("the listener to serve", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(front).await.is_ok()
    })
    .await;
    let mut c = H1::connect(front).await;
    assert_eq!(served_by(&mut c).await, ("a".into(), "now".into()));
    let dump = get(agent.admin(), "/config_dump").await.body;
    assert!(!dump.contains("warming_state"), "{dump}");

    // Removing the listener unsubscribes its routes and forgets them (once its last
    // connection is gone).
    drop(c);
    cp.set(vec![static_cluster("a", a.addr)], vec![], vec![]);
    plumb_tests::wait_until(
        "the routes to be forgotten",
        Duration::from_secs(10),
        || async {
            !get(agent.admin(), "/config_dump")
                .await
                .body
                .contains("\"late\"")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_change_under_load_fails_no_request() {
    let a = http_upstream::start("a").await;
    let b = http_upstream::start("b").await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    cp.set(
        vec![static_cluster("a", a.addr), static_cluster("b", b.addr)],
        vec![http_rds_listener("web", front, "routes")],
        vec![],
    );
    cp.set_routes(vec![route_to("routes", "a", "0")]);
    let agent = TestAgent::start(&ads_bootstrap(cp.addr, "DELTA_GRPC")).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut c = H1::connect(front).await;
            let (mut ok, mut failed) = (0u32, 0u32);
            // Bounded: at most 100,000 requests or until told to stop.
            for _ in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match c.send(request("GET", "svc", "/", &[], b"")).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    for i in 1..=10u32 {
        let cluster = if i % 2 == 0 { "a" } else { "b" };
        cp.set_routes(vec![route_to("routes", cluster, &i.to_string())]);
        plumb_tests::wait_until("the route change", Duration::from_secs(10), || async {
            agent.stat("http.web.rds.routes.config_reload") == i as i64 + 1
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert!(
        ok > 0 && a.requests() > 0 && b.requests() > 0,
        "{ok} {} {}",
        a.requests(),
        b.requests()
    );
}
