//! Conversions between the wire types in [`pb`](crate::pb) and the core types, and between
//! [`StoreError`] and gRPC status codes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::HashMap;

use gonest_session_core::{Result, Save, SessionRecord, StoreError, StoreExpiry};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::pb;

/// A point in time as a protobuf timestamp.
pub fn timestamp_to_pb(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

/// A protobuf timestamp as a point in time; `INVALID_ARGUMENT` when it is malformed or before
/// 1970.
pub fn timestamp_from_pb(timestamp: &prost_types::Timestamp) -> Result<SystemTime> {
    let Ok(nanos) = u32::try_from(timestamp.nanos) else {
        return Err(StoreError::invalid("timestamp has negative nanos"));
    };
    let Ok(seconds) = u64::try_from(timestamp.seconds) else {
        return Err(StoreError::invalid("timestamp is before 1970"));
    };
    if nanos >= 1_000_000_000 {
        return Err(StoreError::invalid("timestamp nanos out of range"));
    }
    UNIX_EPOCH
        .checked_add(Duration::new(seconds, nanos))
        .ok_or_else(|| StoreError::invalid("timestamp out of range"))
}

/// A duration as a protobuf duration.
pub fn duration_to_pb(duration: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

/// A protobuf duration used as a TTL; `INVALID_ARGUMENT` when it is zero, negative or malformed.
pub fn duration_from_pb(duration: &prost_types::Duration) -> Result<Duration> {
    if !(0..1_000_000_000).contains(&duration.nanos.unsigned_abs()) {
        return Err(StoreError::invalid(format!(
            "ttl nanos of {} is out of range (must be within ±999999999)",
            duration.nanos
        )));
    }
    match (
        u64::try_from(duration.seconds),
        u32::try_from(duration.nanos),
    ) {
        (Ok(seconds), Ok(nanos)) if seconds > 0 || nanos > 0 => Ok(Duration::new(seconds, nanos)),
        _ => Err(StoreError::invalid("ttl must be positive")),
    }
}

/// A stored record as a wire session.
pub fn record_to_pb(record: SessionRecord) -> pb::Session {
    pb::Session {
        id: record.id,
        data: record.data,
        created_at: Some(timestamp_to_pb(record.created_at)),
        expires_at: Some(timestamp_to_pb(record.expires_at)),
        version: record.version,
        owner: record.owner.unwrap_or_default(),
    }
}

/// A wire session, as answered by Get, as a record.
pub fn record_from_pb(session: pb::Session) -> Result<SessionRecord> {
    let time = |t: Option<prost_types::Timestamp>, what: &str| {
        t.as_ref()
            .map(timestamp_from_pb)
            .transpose()?
            .ok_or_else(|| StoreError::Internal(format!("session without {what}")))
    };
    Ok(SessionRecord {
        created_at: time(session.created_at, "created_at")?,
        expires_at: time(session.expires_at, "expires_at")?,
        id: session.id,
        data: session.data,
        version: session.version,
        owner: (!session.owner.is_empty()).then_some(session.owner),
    })
}

/// A wire Save request as a core save: expiry from `ttl`, else `session.expires_at`, else the
/// store's default.
pub fn save_from_pb(request: pb::SaveRequest) -> Result<Save> {
    let Some(session) = request.session else {
        return Err(StoreError::invalid("save without a session"));
    };
    let expiry = match (&request.ttl, &session.expires_at) {
        (Some(ttl), _) => StoreExpiry::Ttl(duration_from_pb(ttl)?),
        (None, Some(at)) => StoreExpiry::At(timestamp_from_pb(at)?),
        (None, None) => StoreExpiry::Default,
    };
    Ok(Save {
        id: session.id,
        data: session.data,
        expected_version: request.expected_version,
        expiry,
        owner: (!session.owner.is_empty()).then_some(session.owner),
    })
}

/// A core save as a wire Save request.
pub fn save_to_pb(save: Save) -> pb::SaveRequest {
    let (ttl, expires_at) = match save.expiry {
        StoreExpiry::Default => (None, None),
        StoreExpiry::Ttl(ttl) => (Some(duration_to_pb(ttl)), None),
        StoreExpiry::At(at) => (None, Some(timestamp_to_pb(at))),
    };
    pb::SaveRequest {
        session: Some(pb::Session {
            id: save.id,
            data: save.data,
            created_at: None,
            expires_at,
            version: 0,
            owner: save.owner.unwrap_or_default(),
        }),
        expected_version: save.expected_version,
        ttl,
    }
}

/// The domain of the error details this contract sends.
pub const ERROR_DOMAIN: &str = "gonest.session.v1";

/// The gRPC status a store error is answered with: its code, its message, and for a refusal
/// with figures, a `google.rpc.ErrorInfo` detail carrying them.
pub fn status_from_error(error: &StoreError) -> Status {
    let code = code_of(error);
    let info = |reason: &str, metadata: Vec<(&str, u64)>| {
        let metadata: HashMap<String, String> = metadata
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_string()))
            .collect();
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
    };
    let details = match error {
        StoreError::TooLarge { size, limit } => info(
            "SESSION_TOO_LARGE",
            vec![("size", *size as u64), ("limit", *limit as u64)],
        ),
        StoreError::TooManySessions { limit } => info("SESSION_LIMIT", vec![("limit", *limit)]),
        StoreError::TooManyOwnerSessions { limit } => {
            info("OWNER_SESSION_LIMIT", vec![("limit", *limit)])
        }
        StoreError::StoreFull(_) => info("STORE_FULL", Vec::new()),
        StoreError::LogFailing(_) => info("LOG_FAILING", Vec::new()),
        StoreError::Conflict { expected, actual } => info(
            "VERSION_CONFLICT",
            std::iter::once(("expected", *expected))
                .chain(actual.map(|actual| ("actual", actual)))
                .collect(),
        ),
        _ => return Status::new(code, error.to_string()),
    };
    Status::with_error_details(code, error.to_string(), details)
}

/// The name of the gRPC status code a store error is sent as, such as `UNAVAILABLE`, as
/// grpcurl and the gRPC documentation spell it: what a message for people shows, so that an
/// error reported through another library still says what the daemon answered.
pub fn code_name(error: &StoreError) -> &'static str {
    match code_of(error) {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::Aborted => "ABORTED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// The status code a store error is sent as.
fn code_of(error: &StoreError) -> Code {
    match error {
        StoreError::InvalidArgument(_) => Code::InvalidArgument,
        StoreError::Conflict { .. } => Code::Aborted,
        StoreError::TooLarge { .. }
        | StoreError::TooManySessions { .. }
        | StoreError::TooManyOwnerSessions { .. }
        | StoreError::StoreFull(_) => Code::ResourceExhausted,
        StoreError::Unsupported(_) => Code::Unimplemented,
        StoreError::Unauthenticated(_) => Code::Unauthenticated,
        StoreError::Unavailable(_) | StoreError::LogFailing(_) => Code::Unavailable,
        StoreError::Timeout => Code::DeadlineExceeded,
        // A variant core gains later is INTERNAL until it is mapped here (the round-trip test
        // below lists every variant).
        _ => Code::Internal,
    }
}

/// The status that ends a `Pipeline` stream whose message carries more than `limit` operations
/// in its batch: `RESOURCE_EXHAUSTED`, ErrorInfo reason `BATCH_TOO_LARGE` with the limit.
pub fn batch_too_large(limit: usize) -> Status {
    let metadata = HashMap::from([("limit".to_owned(), limit.to_string())]);
    Status::with_error_details(
        Code::ResourceExhausted,
        format!("a Pipeline message carries at most {limit} operations in its batch"),
        ErrorDetails::with_error_info("BATCH_TOO_LARGE", ERROR_DOMAIN, metadata),
    )
}

/// The ErrorInfo reason of a `Track` call the daemon refuses: it cannot see every change.
pub const TRACKING_UNAVAILABLE: &str = "TRACKING_UNAVAILABLE";

/// The status of a `Track` call on a daemon that cannot see every change to its sessions
/// (other daemons share its backend): `FAILED_PRECONDITION`, ErrorInfo reason
/// [`TRACKING_UNAVAILABLE`]. A client then runs without its near cache.
pub fn tracking_unavailable() -> Status {
    Status::with_error_details(
        Code::FailedPrecondition,
        "this daemon cannot see every change to its sessions (other daemons share its \
         Redis Cluster backend, whose pub/sub does not promise delivery), so it cannot keep \
         near caches true: run without one",
        ErrorDetails::with_error_info(TRACKING_UNAVAILABLE, ERROR_DOMAIN, HashMap::new()),
    )
}

/// Whether `status` is a daemon's refusal to track ([`tracking_unavailable`]).
pub fn is_tracking_unavailable(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition
        && status
            .get_details_error_info()
            .is_some_and(|info| info.reason == TRACKING_UNAVAILABLE)
}

/// The store error a gRPC status stands for; the mapping back of [`status_from_error`], with
/// the figures read from its details.
///
/// `expected_version` is the version the failed call expected, used when an `ABORTED` status
/// carries no details (from a daemon that sends none).
pub fn error_from_status(status: &Status, expected_version: Option<u64>) -> StoreError {
    let message = status.message().to_owned();
    let info = status
        .get_details_error_info()
        .filter(|info| info.domain == ERROR_DOMAIN);
    let figure = |key: &str| {
        info.as_ref()
            .and_then(|info| info.metadata.get(key))
            .and_then(|value| value.parse::<u64>().ok())
    };
    let reason = info.as_ref().map(|info| info.reason.as_str());
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => StoreError::InvalidArgument(message),
        Code::Aborted | Code::FailedPrecondition => StoreError::Conflict {
            expected: figure("expected").or(expected_version).unwrap_or(0),
            actual: figure("actual"),
        },
        Code::ResourceExhausted => match (reason, figure("size"), figure("limit")) {
            (Some("SESSION_TOO_LARGE"), Some(size), Some(limit)) => StoreError::TooLarge {
                size: usize::try_from(size).unwrap_or(usize::MAX),
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            },
            (Some("SESSION_LIMIT"), _, Some(limit)) => StoreError::TooManySessions { limit },
            (Some("OWNER_SESSION_LIMIT"), _, Some(limit)) => {
                StoreError::TooManyOwnerSessions { limit }
            }
            (Some("STORE_FULL"), _, _) => StoreError::StoreFull(
                message
                    .strip_prefix("the session store is full: ")
                    .unwrap_or(&message)
                    .to_owned(),
            ),
            _ => StoreError::Internal(format!("resource exhausted: {message}")),
        },
        Code::Unauthenticated | Code::PermissionDenied => StoreError::Unauthenticated(message),
        Code::Unavailable if reason == Some("LOG_FAILING") => StoreError::LogFailing(
            message
                .strip_prefix("writes refused: ")
                .unwrap_or(&message)
                .to_owned(),
        ),
        Code::Unavailable | Code::Cancelled => StoreError::Unavailable(message),
        Code::DeadlineExceeded => StoreError::Timeout,
        Code::Unimplemented => StoreError::Unsupported(
            message
                .strip_prefix("not supported by this session store: ")
                .unwrap_or(&message)
                .to_owned(),
        ),
        _ => StoreError::Internal(format!("{}: {message}", status.code())),
    }
}

/// A failed `Pipeline` operation's answer, with the details its status carries.
pub fn error_to_pb(status: &Status) -> pb::Error {
    pb::Error {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: bytes::Bytes::copy_from_slice(status.details()),
    }
}

/// The status a failed `Pipeline` operation's answer stands for.
pub fn error_from_pb(error: pb::Error) -> Status {
    Status::with_details(Code::from(error.code), error.message, error.details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_round_trips_through_a_status() {
        for error in [
            StoreError::invalid("ttl must be positive"),
            StoreError::Conflict {
                expected: 3,
                actual: None,
            },
            StoreError::Conflict {
                expected: 3,
                actual: Some(5),
            },
            StoreError::TooLarge {
                size: 2_000_000,
                limit: 1_048_576,
            },
            StoreError::TooManySessions { limit: 10 },
            StoreError::TooManyOwnerSessions { limit: 1000 },
            StoreError::StoreFull("redis: OOM command not allowed".into()),
            StoreError::LogFailing("the append-only log cannot be written".into()),
            StoreError::Unsupported("listing sessions by owner".into()),
            StoreError::Unauthenticated("unauthenticated: missing token".into()),
            StoreError::Timeout,
        ] {
            let status = status_from_error(&error);
            // The name people read is the code's, as gRPC spells it.
            let name = format!("{:?}", status.code());
            let spelled: String = name
                .chars()
                .enumerate()
                .flat_map(|(i, c)| {
                    let gap = (i > 0 && c.is_ascii_uppercase()).then_some('_');
                    gap.into_iter().chain(c.to_uppercase())
                })
                .collect();
            assert_eq!(code_name(&error), spelled, "{error:?}");
            let back = error_from_status(&status, Some(3));
            // And through a Pipeline answer, with the message text of no use.
            let mut answer = error_to_pb(&status);
            answer.message = "reworded".into();
            let piped = error_from_status(&error_from_pb(answer), Some(3));
            if !matches!(
                error,
                StoreError::Unauthenticated(_)
                    | StoreError::InvalidArgument(_)
                    | StoreError::Unsupported(_)
                    | StoreError::StoreFull(_)
                    | StoreError::LogFailing(_)
            ) {
                assert_eq!(piped, error, "through a Pipeline answer");
            }
            match (&error, &back) {
                (StoreError::Unauthenticated(_), StoreError::Unauthenticated(_)) => {}
                _ => assert_eq!(error, back),
            }
        }
    }

    #[test]
    fn negative_and_zero_ttls_are_invalid() {
        for (seconds, nanos) in [(0, 0), (-1, 0), (0, -5), (-3, 999)] {
            let ttl = prost_types::Duration { seconds, nanos };
            assert!(duration_from_pb(&ttl).is_err(), "{seconds}s {nanos}ns");
        }
        let ttl = prost_types::Duration {
            seconds: 0,
            nanos: 1,
        };
        assert_eq!(duration_from_pb(&ttl).unwrap(), Duration::from_nanos(1));
        let max = prost_types::Duration {
            seconds: i64::MAX,
            nanos: 999_999_999,
        };
        assert_eq!(
            duration_from_pb(&max).unwrap(),
            Duration::new(i64::MAX as u64, 999_999_999)
        );
        for nanos in [1_000_000_000, i32::MAX, i32::MIN] {
            let err = duration_from_pb(&prost_types::Duration { seconds: 1, nanos }).unwrap_err();
            assert!(err.to_string().contains("nanos"), "{err}");
        }
    }

    #[test]
    fn save_expiry_prefers_ttl_then_expires_at() {
        let at = timestamp_to_pb(UNIX_EPOCH + Duration::from_secs(4_000_000_000));
        let mut request = pb::SaveRequest {
            session: Some(pb::Session {
                id: "a".into(),
                expires_at: Some(at),
                ..Default::default()
            }),
            expected_version: None,
            ttl: Some(duration_to_pb(Duration::from_secs(5))),
        };
        let save = save_from_pb(request.clone()).unwrap();
        assert_eq!(save.expiry, StoreExpiry::Ttl(Duration::from_secs(5)));
        request.ttl = None;
        let save = save_from_pb(request.clone()).unwrap();
        assert_eq!(
            save.expiry,
            StoreExpiry::At(UNIX_EPOCH + Duration::from_secs(4_000_000_000))
        );
        request.session.as_mut().unwrap().expires_at = None;
        assert_eq!(save_from_pb(request).unwrap().expiry, StoreExpiry::Default);
    }
}
