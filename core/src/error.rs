/// The result of a [`SessionStore`](crate::SessionStore) operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Why a session store operation failed.
///
/// The daemon maps each variant to one gRPC status code and the client maps the codes back, so
/// an app sees the same error whether its store is in-process or remote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The request was malformed: a bad session id, TTL or expiry. Sent as `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// A conditional save found the session at another version, or absent. Nothing changed;
    /// reload and try again. Sent as `ABORTED`.
    #[error("version conflict: expected version {expected}, {}", match .actual {
        Some(v) => format!("session is at version {v}"),
        None => "session does not exist".to_owned(),
    })]
    Conflict {
        /// The version the save expected.
        expected: u64,
        /// The live session's version, or `None` when there is no live session (or the store
        /// does not say).
        actual: Option<u64>,
    },
    /// The session's keys and values together are larger than the store allows. Sent as
    /// `RESOURCE_EXHAUSTED`.
    #[error("session is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The session's size in bytes (keys plus values).
        size: usize,
        /// The store's limit in bytes.
        limit: usize,
    },
    /// The store holds as many sessions as it allows; existing sessions can still be written.
    /// Sent as `RESOURCE_EXHAUSTED`.
    #[error("session limit of {limit} reached")]
    TooManySessions {
        /// The store's limit on live sessions.
        limit: u64,
    },
    /// The owner already has as many live sessions as the store allows; their existing sessions
    /// can still be written. Sent as `RESOURCE_EXHAUSTED`.
    #[error("the owner's limit of {limit} sessions is reached")]
    TooManyOwnerSessions {
        /// The store's limit on live sessions per owner.
        limit: u64,
    },
    /// The store cannot do this (a store without an owner index asked to list by owner). Sent
    /// as `UNIMPLEMENTED`.
    #[error("not supported by this session store: {0}")]
    Unsupported(String),
    /// The store refused the caller's credentials. Sent as `UNAUTHENTICATED`.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The store has no room left for the write (Redis at its `maxmemory` with the
    /// `noeviction` policy); reads still work. Sent as `RESOURCE_EXHAUSTED`, ErrorInfo reason
    /// `STORE_FULL`.
    #[error("the session store is full: {0}")]
    StoreFull(String),
    /// The store could not be reached. Sent as `UNAVAILABLE`.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// Writes are refused because the store cannot make them durable now (its append-only log
    /// cannot be written: a full or read-only disk); reads still work, and writes resume by
    /// themselves once it can. Sent as `UNAVAILABLE`, ErrorInfo reason `LOG_FAILING`.
    #[error("writes refused: {0}")]
    LogFailing(String),
    /// The store did not answer in time. Sent as `DEADLINE_EXCEEDED`.
    #[error("session store did not answer in time")]
    Timeout,
    /// Any other failure. Sent as `INTERNAL`.
    #[error("session store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Shorthand for [`StoreError::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    /// Whether the operation may succeed if simply tried again later (the store was unreachable
    /// or slow), as opposed to a rejection of the request itself.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::LogFailing(_) | Self::Timeout
        )
    }
}
