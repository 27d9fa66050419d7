//! The axum extractor for [`Session`].

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use crate::Session;

/// Why a handler could not get its [`Session`].
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionRejection {
    /// The request did not pass through a [`SessionLayer`](crate::SessionLayer).
    MissingLayer,
    /// The store failed or did not answer in time.
    StoreUnavailable,
}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        match self {
            Self::MissingLayer => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "no session: is the session layer installed? \
                 Add `.layer(SessionLayer::new(store, SessionOptions::default())?)` to the router",
            )
                .into_response(),
            Self::StoreUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "session store unavailable").into_response()
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(session) = parts.extensions.get::<Session>().cloned() else {
            tracing::error!("Session extractor used on a route without SessionLayer");
            return Err(SessionRejection::MissingLayer);
        };
        if let Err(err) = session.load().await {
            tracing::error!(%err, "session could not be loaded; answering 503");
            return Err(SessionRejection::StoreUnavailable);
        }
        Ok(session)
    }
}
