//! The controller on two instances of the app sharing one daemon (the binary) and one cookie
//! key.

use actix_web::App;
use actix_web::cookie::Key;
use actix_web::http::StatusCode;
use gonest_session_client::{RemoteSessionStore, SessionStore as _};
use gonest_session_test_support::DaemonProcess;
use serde_json::{Value, json};

/// An instance of the app on `daemon`, served on a free port.
async fn instance(daemon: &DaemonProcess, key: &Key) -> actix_test::TestServer {
    let store = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    let key = key.clone();
    actix_test::start(move || {
        App::new()
            .wrap(actix_example::sessions(store.clone(), key.clone(), false))
            .configure(actix_example::routes)
    })
}

/// One browser's cookie, carried from one answer to the next request.
#[derive(Default)]
struct Browser(Option<actix_web::cookie::Cookie<'static>>);

impl Browser {
    async fn call(
        &mut self,
        server: &actix_test::TestServer,
        post: bool,
        path: &str,
    ) -> (StatusCode, Value) {
        let mut request = if post {
            server.post(path)
        } else {
            server.get(path)
        };
        if let Some(cookie) = &self.0 {
            request = request.cookie(cookie.clone());
        }
        let mut response = request.send().await.unwrap();
        if let Some(cookie) = response
            .cookies()
            .unwrap()
            .iter()
            .find(|c| c.name() == "id")
        {
            self.0 = Some(cookie.clone().into_owned());
        }
        (response.status(), response.json().await.unwrap())
    }
}

#[actix_web::test]
async fn a_login_on_one_instance_is_seen_by_the_other_until_logout() {
    let daemon = DaemonProcess::start(&[]);
    let key = Key::generate();
    let (a, b) = (instance(&daemon, &key).await, instance(&daemon, &key).await);
    let mut browser = Browser::default();

    let (status, body) = browser.call(&b, false, "/profile").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({"statusCode": 401, "message": "not logged in"}));

    let answer = browser.call(&a, true, "/login").await;
    assert_eq!(answer, (StatusCode::OK, json!({"status": "logged in"})));
    let answer = browser.call(&b, false, "/profile").await;
    assert_eq!(answer, (StatusCode::OK, json!({"user_id": 42})));

    let answer = browser.call(&b, true, "/logout").await;
    assert_eq!(answer, (StatusCode::OK, json!({"status": "logged out"})));
    let (status, _) = browser.call(&a, false, "/profile").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn log_out_everywhere_reaches_every_session_of_the_user() {
    let daemon = DaemonProcess::start(&[]);
    let app = instance(&daemon, &Key::generate()).await;
    let (mut phone, mut laptop) = (Browser::default(), Browser::default());
    for device in [&mut phone, &mut laptop] {
        let (status, _) = device.call(&app, true, "/login").await;
        assert_eq!(status, StatusCode::OK);
    }

    let remote = RemoteSessionStore::connect(daemon.url()).await.unwrap();
    assert_eq!(remote.destroy_by_owner("42", &[]).await.unwrap(), 2);

    for device in [&mut phone, &mut laptop] {
        let (status, _) = device.call(&app, false, "/profile").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}
