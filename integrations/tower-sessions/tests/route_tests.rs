//! tower-sessions' own suite (`route_tests!`, from its tests/common) run on [`SessiondStore`]
//! against the `gonest-sessiond` binary.

// The suite prints one response with dbg!, as it does upstream.
#![allow(clippy::dbg_macro)]

#[macro_use]
mod common;

mod sessiond_store_tests {
    use axum::Router;
    use gonest_session_client::RemoteSessionStore;
    use gonest_session_test_support::DaemonProcess;
    use gonest_session_tower_sessions::SessiondStore;
    use tower_sessions::SessionManagerLayer;

    use crate::common::build_app;

    /// The suite's app on the test binary's daemon. (The suite drops an app as soon as it has
    /// called it, so the app cannot hold a daemon of its own.)
    async fn app(max_age: Option<Duration>, domain: Option<String>) -> Router {
        let daemon = DaemonProcess::shared();
        let remote = RemoteSessionStore::connect(daemon.url()).await.unwrap();
        let session_manager =
            SessionManagerLayer::new(SessiondStore::new(remote)).with_secure(true);
        build_app(session_manager, max_age, domain)
    }

    route_tests!(app);
}
