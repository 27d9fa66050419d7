//! [`OwnerSessions`]: a handler's view of all the sessions of an owner, for "your devices" pages and
//! "log out everywhere".

use std::sync::Arc;

use gonest_session_core::{SessionRecord, SessionStore, StoreError};

/// The sessions of any owner, in the layer's store: list them, revoke them. The layer puts one
/// in every request's extensions; in axum, take it as an extractor argument.
///
/// A session gets its owner from [`Session::set_owner`](crate::Session::set_owner). Stores
/// without an owner index (a custom store that does not implement
/// [`SessionStore::list_by_owner`]) answer [`StoreError::Unsupported`].
///
/// ```no_run
/// use axum::Json;
/// use gonest_session::{Session, OwnerSessions};
///
/// async fn logout_everywhere_else(session: Session, sessions: OwnerSessions) -> Json<u64> {
///     let (Some(owner), Some(id)) = (session.owner(), session.id()) else { return Json(0) };
///     Json(sessions.revoke(&owner, &[id]).await.unwrap_or(0))
/// }
/// ```
#[derive(Clone)]
pub struct OwnerSessions {
    store: Arc<dyn SessionStore>,
}

impl std::fmt::Debug for OwnerSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerSessions").finish_non_exhaustive()
    }
}

impl OwnerSessions {
    pub(crate) fn new(store: Arc<dyn SessionStore>) -> Self {
        Self { store }
    }

    /// The live sessions of `owner`, oldest first, without their data: id, `created_at`,
    /// `expires_at`, version and owner.
    pub async fn list(&self, owner: &str) -> Result<Vec<SessionRecord>, StoreError> {
        self.store.list_by_owner(owner, false).await
    }

    /// Destroys every session of `owner` but those with an id in `except` (such as the
    /// caller's own), and returns how many live sessions it destroyed. Once it returns, none of
    /// the owner's other sessions is live, and a request still holding one cannot bring it back.
    pub async fn revoke(&self, owner: &str, except: &[String]) -> Result<u64, StoreError> {
        self.store.destroy_by_owner(owner, except).await
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for OwnerSessions {
    type Rejection = crate::SessionRejection;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<OwnerSessions>()
            .cloned()
            .ok_or_else(|| {
                tracing::error!("OwnerSessions extractor used on a route without SessionLayer");
                crate::SessionRejection::MissingLayer
            })
    }
}
