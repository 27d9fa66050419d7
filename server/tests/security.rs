//! Bearer-token authentication and TLS.

mod common;

use std::time::Duration;

use common::Daemon;
use gonest_session_client::RemoteSessionStore;
use gonest_session_core::{Save, SessionData, SessionStore, StoreError};
use gonest_session_proto::pb::{self, session_store_client::SessionStoreClient};
use gonest_sessiond::{Config, TlsFiles, Tokens};
use tonic::transport::Channel;
use tonic::{Code, Request};

const TOKEN: &str = "s3cret-token-0123456789";

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Every SessionStore RPC once, with `token`; the status code of each.
async fn every_rpc(channel: Channel, token: Option<&str>) -> Vec<(&'static str, Code)> {
    let mut client = SessionStoreClient::new(channel);
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let session = pb::Session {
        id: "abc".into(),
        ..Default::default()
    };
    vec![
        (
            "save",
            code(
                client
                    .save(with_token(
                        pb::SaveRequest {
                            session: Some(session),
                            expected_version: None,
                            ttl: None,
                        },
                        token,
                    ))
                    .await
                    .map(drop),
            ),
        ),
        (
            "get",
            code(
                client
                    .get(with_token(pb::GetRequest { id: "abc".into() }, token))
                    .await
                    .map(drop),
            ),
        ),
        (
            "touch",
            code(
                client
                    .touch(with_token(
                        pb::TouchRequest {
                            id: "abc".into(),
                            ttl: None,
                        },
                        token,
                    ))
                    .await
                    .map(drop),
            ),
        ),
        (
            "destroy",
            code(
                client
                    .destroy(with_token(pb::DestroyRequest { id: "abc".into() }, token))
                    .await
                    .map(drop),
            ),
        ),
        (
            "stats",
            code(
                client
                    .stats(with_token(pb::StatsRequest::default(), token))
                    .await
                    .map(drop),
            ),
        ),
        (
            "pipeline",
            code(
                client
                    .pipeline(with_token(
                        futures_util::stream::iter(Vec::<pb::PipelineRequest>::new()),
                        token,
                    ))
                    .await
                    .map(drop),
            ),
        ),
    ]
}

#[tokio::test]
async fn every_call_needs_the_token_and_health_does_not() {
    let daemon = Daemon::start(Config {
        tokens: Tokens::new([TOKEN.to_owned()]),
        ..Config::default()
    })
    .await;
    for (rpc, code) in every_rpc(daemon.channel.clone(), None).await {
        assert_eq!(code, Code::Unauthenticated, "{rpc} without a token");
    }
    for (rpc, code) in every_rpc(daemon.channel.clone(), Some("wrong-token-0123456789")).await {
        assert_eq!(code, Code::Unauthenticated, "{rpc} with a wrong token");
    }
    for (rpc, code) in every_rpc(daemon.channel.clone(), Some(TOKEN)).await {
        assert_eq!(code, Code::Ok, "{rpc} with the token");
    }

    let mut health = tonic_health::pb::health_client::HealthClient::new(daemon.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "health answers without a token");
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn the_client_sends_its_token() {
    let daemon = Daemon::start(Config {
        tokens: Tokens::new([TOKEN.to_owned()]),
        ..Config::default()
    })
    .await;
    let url = format!("http://{}", daemon.addr);
    let store = RemoteSessionStore::builder(&url)
        .auth_token(TOKEN)
        .connect()
        .await
        .unwrap();
    store
        .save(Save::new("s", SessionData::new()))
        .await
        .unwrap();
    assert!(store.get("s").await.unwrap().is_some());
    assert_eq!(store.stats().await.unwrap().live_sessions, Some(1));

    let anonymous = RemoteSessionStore::connect(&url).await.unwrap();
    let err = anonymous.get("s").await.unwrap_err();
    assert!(matches!(err, StoreError::Unauthenticated(_)), "{err:?}");
    assert!(
        format!("{:?}", RemoteSessionStore::builder(&url).auth_token(TOKEN)).contains("redacted")
    );
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn tls_round_trip_with_a_self_signed_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = Config {
        tls: Some(TlsFiles {
            cert_pem: cert_pem.clone().into_bytes(),
            key_pem: certified.signing_key.serialize_pem().into_bytes(),
        }),
        ..Config::default()
    };
    let server = tokio::spawn(gonest_sessiond::run(listener, config, async {
        stopped.await.ok();
    }));

    let store = RemoteSessionStore::builder(format!("https://{addr}"))
        .ca_certificate(cert_pem)
        .connect()
        .await
        .unwrap();
    store
        .save(Save::new("tls", SessionData::new()).ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(store.get("tls").await.unwrap().is_some());

    // Without trusting the certificate, the handshake fails.
    let untrusted = RemoteSessionStore::connect(format!("https://{addr}")).await;
    assert!(untrusted.is_err());
    // Plaintext against a TLS port does not get through either.
    let plain = RemoteSessionStore::builder(format!("http://{addr}"))
        .timeout(Duration::from_secs(2))
        .connect_lazy()
        .unwrap();
    assert!(plain.get("tls").await.is_err());

    stop.send(()).ok();
    server.await.unwrap().unwrap();
}
