//! actix-session's own acceptance suite (`acceptance_test_suite`, from its `test_helpers`) run
//! on [`SessiondStore`] against the `gonest-sessiond` binary, with invalidation supported: a
//! session key that was renewed or purged names no session any more.

mod acceptance;

use gonest_session_actix::SessiondStore;
use gonest_session_client::RemoteSessionStore;
use gonest_session_test_support::DaemonProcess;

#[actix_web::test]
async fn sessions_behave_as_actix_session_expects() {
    let daemon = DaemonProcess::start(&[]);
    let store = SessiondStore::new(RemoteSessionStore::connect(daemon.url()).await.unwrap());
    acceptance::acceptance_test_suite(move || store.clone(), true).await;
}
