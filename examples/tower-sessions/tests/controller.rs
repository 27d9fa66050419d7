//! The controller on two instances of the app sharing one daemon (the binary).

use gonest_session_client::{RemoteSessionStore, SessionStore as _};
use gonest_session_test_support::DaemonProcess;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// An instance of the app on `daemon`, served on a free port; its base URL. (Without a near
/// cache: a read right after another instance's write is then never early; the near cache's
/// bound is the client's tests'.)
async fn instance(daemon: &DaemonProcess) -> String {
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, tower_sessions_example::app(store, false))
            .await
            .unwrap()
    });
    format!("http://{addr}")
}

async fn call(client: &reqwest::Client, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = client.execute(request.build().unwrap()).await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_login_on_one_instance_is_seen_by_the_other_until_logout() {
    let daemon = DaemonProcess::start(&[]);
    let (a, b) = (instance(&daemon).await, instance(&daemon).await);
    // One browser: one cookie jar for both instances (same host, as behind a load balancer).
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();

    let (status, body) = call(&browser, browser.get(format!("{b}/profile"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({"statusCode": 401, "message": "not logged in"}));

    let (status, body) = call(&browser, browser.post(format!("{a}/login"))).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"status": "logged in"}))
    );
    let (status, body) = call(&browser, browser.get(format!("{b}/profile"))).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"user_id": 42})));

    let (status, body) = call(&browser, browser.post(format!("{b}/logout"))).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"status": "logged out"}))
    );
    let (status, _) = call(&browser, browser.get(format!("{a}/profile"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn log_out_everywhere_reaches_every_session_of_the_user() {
    let daemon = DaemonProcess::start(&[]);
    let app = instance(&daemon).await;
    let (phone, laptop) = (
        reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .unwrap(),
        reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .unwrap(),
    );
    for device in [&phone, &laptop] {
        let (status, _) = call(device, device.post(format!("{app}/login"))).await;
        assert_eq!(status, StatusCode::OK);
    }

    let remote = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    assert_eq!(remote.destroy_by_owner("42", &[]).await.unwrap(), 2);

    for device in [&phone, &laptop] {
        let (status, _) = call(device, device.get(format!("{app}/profile"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}
