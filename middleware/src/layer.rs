//! The tower [`Layer`] and [`Service`] that give each request its [`Session`] and write it back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use gonest_session_core::{SessionStore, StoreError};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::session::{Outcome, WriteLocks};
use crate::{InvalidOptions, OwnerSessions, Session, SessionOptions};

/// Adds sessions to a tower stack (axum, hyper, tonic-web, ...).
///
/// ```
/// use std::time::Duration;
/// use gonest_session::{MemorySessionStore, SessionLayer, SessionOptions};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = MemorySessionStore::new(Duration::from_secs(3600));
/// let layer = SessionLayer::new(store, SessionOptions { secure: true, ..Default::default() })
///     .expect("options a browser keeps");
/// # let _ = layer;
/// # }
/// ```
#[derive(Clone)]
pub struct SessionLayer {
    store: Arc<dyn SessionStore>,
    options: Arc<SessionOptions>,
    write_locks: Arc<WriteLocks>,
}

impl std::fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLayer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SessionLayer {
    /// Sessions kept in `store`, with cookies and lifetimes from `options`.
    ///
    /// Refuses, naming the rule, options whose cookie a browser would drop without a word (a
    /// `__Host-` or `__Secure-` name without what the prefix requires, `SameSite=None` without
    /// `secure`) and lifetimes the store refuses (over its maximum TTL, as far as
    /// [`SessionStore::limits`] knows it: a `RemoteSessionStore` learns the daemon's when it
    /// connects).
    pub fn new(store: impl SessionStore, options: SessionOptions) -> Result<Self, InvalidOptions> {
        options.validate(store.limits())?;
        Ok(Self {
            store: Arc::new(store),
            options: Arc::new(options),
            write_locks: Arc::new(WriteLocks::new()),
        })
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionMiddleware<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionMiddleware {
            inner,
            store: self.store.clone(),
            options: self.options.clone(),
            write_locks: self.write_locks.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around an inner service.
#[derive(Clone)]
pub struct SessionMiddleware<S> {
    inner: S,
    store: Arc<dyn SessionStore>,
    options: Arc<SessionOptions>,
    write_locks: Arc<WriteLocks>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for SessionMiddleware<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionMiddleware")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The session id in the request's first cookie of the session cookie's name, if that one
/// carries an id as `options` say (the bare form this crate issues, or a signed one that
/// verifies). A later cookie of the same name is never looked at, as express-session does: both
/// stacks take the same cookie, and with a bad first one both start a new session.
fn cookie_id(headers: &HeaderMap, options: &SessionOptions) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == options.cookie_name)
        .and_then(|cookie| options.id_in_cookie(cookie.value()))
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionMiddleware<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone that was driven to readiness serves this request; a fresh clone waits for
        // the next one (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let options = self.options.clone();
        let session = Session::new(
            self.store.clone(),
            options.clone(),
            self.write_locks.clone(),
            cookie_id(request.headers(), &options),
        );
        request.extensions_mut().insert(session.clone());
        request
            .extensions_mut()
            .insert(OwnerSessions::new(self.store.clone()));

        Box::pin(async move {
            let mut response = inner.call(request).await?;
            if response.status().is_server_error() {
                return Ok(response);
            }
            let cookie = match session.commit().await {
                Ok(Outcome::Unchanged) => return Ok(response),
                Ok(Outcome::SetCookie(id, expiry)) => {
                    options.set_cookie(&id, expiry, std::time::SystemTime::now())
                }
                Ok(Outcome::RemoveCookie) => options.removal_cookie(),
                Err(err) => {
                    let mut failed = Response::new(ResBody::default());
                    *failed.status_mut() = failure_status(&err);
                    return Ok(failed);
                }
            };
            match HeaderValue::try_from(cookie) {
                Ok(value) => {
                    response.headers_mut().append(SET_COOKIE, value);
                }
                Err(err) => tracing::error!(%err, "session cookie is not a valid header"),
            }
            Ok(response)
        })
    }
}

/// The status answered for a session that could not be saved, and the log line saying why.
///
/// A session over the store's size limit is the app's own bug (it put too much in the session),
/// not an outage: a 500, logged as what it is. A store that is down or slow is a 503.
fn failure_status(err: &StoreError) -> StatusCode {
    match err {
        StoreError::TooLarge { size, limit } => {
            tracing::error!(
                size,
                limit,
                "session is larger than the store accepts; not saved, answering 500 (keep less \
                 in the session)"
            );
            StatusCode::INTERNAL_SERVER_ERROR
        }
        StoreError::InvalidArgument(_) => {
            tracing::error!(%err, "the store refused the session; not saved, answering 500");
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => {
            tracing::error!(%err, "session could not be saved; answering 503");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id;

    #[test]
    fn only_well_formed_ids_are_taken_from_cookies() {
        let good = id::generate();
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("other=1; gonest.sid=bogus"),
        );
        let options = SessionOptions::default();
        let other = SessionOptions {
            cookie_name: "other.sid".into(),
            ..Default::default()
        };
        assert_eq!(cookie_id(&headers, &options), None);
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_str(&format!("other=1; gonest.sid={good}")).unwrap(),
        );
        assert_eq!(cookie_id(&headers, &options), Some(good.clone()));
        assert_eq!(cookie_id(&headers, &other), None);
        let signed = SessionOptions {
            secret: vec!["k".into()],
            ..Default::default()
        };
        assert_eq!(
            cookie_id(&headers, &signed),
            None,
            "a bare id is not signed"
        );
    }

    /// Only the first cookie of the name counts, valid or not, in one header or over several.
    #[test]
    fn the_first_session_cookie_is_the_one_taken() {
        let (first, second) = (id::generate(), id::generate());
        let options = SessionOptions::default();
        let taken = |values: &[String]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(COOKIE, HeaderValue::from_str(value).unwrap());
            }
            cookie_id(&headers, &options)
        };
        let both = format!("gonest.sid={first}; gonest.sid={second}");
        assert_eq!(taken(&[both]), Some(first.clone()));
        let bad_first = format!("gonest.sid=bogus; gonest.sid={second}");
        assert_eq!(taken(&[bad_first]), None);
        let split = [
            format!("gonest.sid={first}"),
            format!("gonest.sid={second}"),
        ];
        assert_eq!(taken(&split), Some(first));
    }
}
