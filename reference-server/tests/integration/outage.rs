//! The database going away and coming back (a managed PostgreSQL's failover
//! or restart): edge-server reaches it through a TCP relay on loopback that
//! the test cuts and restores. While it is cut, the control API answers
//! `503` `storage_unavailable` with `Retry-After` (WS-HTTP-4), not `500`;
//! once it is back, the same request goes through and the command reaches
//! its agent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use edge_server::store::postgres::testing::schema_for;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::support::*;

/// A TCP relay to the database. While down it drops what it accepts, and
/// cutting it ends every connection it carries, as a failover does.
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    carried: Arc<std::sync::Mutex<JoinSet<()>>>,
    _accepting: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let carried = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let accepting = tokio::spawn({
            let (up, carried) = (up.clone(), carried.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees its connection end
                    }
                    let to = to.clone();
                    carried.lock().unwrap().spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&to).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }
        });
        Relay {
            addr,
            up,
            carried,
            _accepting: accepting,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.carried.lock().unwrap().abort_all();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A `postgres://` URL split around its `host:port` (the port made explicit).
fn around_host(url: &str) -> (String, String, String) {
    let at = url.rfind('@').expect("user@host in the URL") + 1;
    let end = url[at..].find(['/', '?']).map_or(url.len(), |i| at + i);
    let host = &url[at..end];
    let host = match host.contains(':') {
        true => host.to_string(),
        false => format!("{host}:5432"),
    };
    (url[..at].to_string(), host, url[end..].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_http_4_while_the_database_is_unreachable_commands_get_503_and_retry_after() {
    let test = "ws_http_4_while_the_database_is_unreachable_commands_get_503_and_retry_after";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let (before, database, after) = around_host(&url);
    let relay = Relay::start(database).await;
    let relayed = format!("{before}{}{after}", relay.addr);
    let server = TestServer::start_pg(&relayed, |_| {}).await;
    let mut agent = server.agent("x").await;

    relay.cut();
    let body = json!({"command_type": "send_message", "command_id": "during"});
    let post = || {
        server
            .http
            .post(server.url("/api/agents/x/commands"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let refused = post().await.expect("an answer");
    let status = refused.status();
    let retry_after = refused.headers().get("retry-after").cloned();
    let answer: Value = refused.json().await.expect("a JSON body");
    assert_eq!(
        (status, &answer["error"]),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            &json!("storage_unavailable")
        ),
        "{answer}"
    );
    assert_eq!(retry_after.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
    assert!(
        !answer.to_string().contains(&before),
        "the answer shows the database's URL: {answer}"
    );

    // Back: the same request goes through, and the command is pushed.
    relay.restore();
    let accepted = post().await.expect("an answer");
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let command = agent.expect("command").await;
    assert_eq!(command["data"]["command_id"], "during");
}
