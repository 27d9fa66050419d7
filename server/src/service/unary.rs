//! The generated server's methods: each unary call is one [`Operation`] applied by the engine.
//!
//! [`Operation`]: crate::engine::Operation

use gonest_session_proto::{duration_to_pb, pb};
use tonic::{Request, Response, Status, Streaming};

use super::{SessionService, answer_budget};
use crate::engine::Engine;
use crate::memory_usage;

/// The response stream of the generated server's `Pipeline`.
pub(crate) type PipelineStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<pb::PipelineResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl<E: Engine> pb::session_store_server::SessionStore for SessionService<E> {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let _call = self.in_flight.token();
        let budget = answer_budget(&request);
        self.unary(request.into_inner(), budget.as_deref())
            .await
            .map(Response::new)
    }

    async fn save(
        &self,
        request: Request<pb::SaveRequest>,
    ) -> Result<Response<pb::SaveResponse>, Status> {
        let _call = self.in_flight.token();
        self.unary(request.into_inner(), None)
            .await
            .map(Response::new)
    }

    async fn destroy(
        &self,
        request: Request<pb::DestroyRequest>,
    ) -> Result<Response<pb::DestroyResponse>, Status> {
        let _call = self.in_flight.token();
        self.unary(request.into_inner(), None)
            .await
            .map(Response::new)
    }

    async fn touch(
        &self,
        request: Request<pb::TouchRequest>,
    ) -> Result<Response<pb::TouchResponse>, Status> {
        let _call = self.in_flight.token();
        self.unary(request.into_inner(), None)
            .await
            .map(Response::new)
    }

    async fn list_by_owner(
        &self,
        request: Request<pb::ListByOwnerRequest>,
    ) -> Result<Response<pb::ListByOwnerResponse>, Status> {
        let _call = self.in_flight.token();
        let budget = answer_budget(&request);
        self.unary(request.into_inner(), budget.as_deref())
            .await
            .map(Response::new)
    }

    async fn destroy_by_owner(
        &self,
        request: Request<pb::DestroyByOwnerRequest>,
    ) -> Result<Response<pb::DestroyByOwnerResponse>, Status> {
        let _call = self.in_flight.token();
        self.unary(request.into_inner(), None)
            .await
            .map(Response::new)
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let _call = self.in_flight.token();
        let budget = answer_budget(&request);
        self.unary(request.into_inner(), budget.as_deref())
            .await
            .map(Response::new)
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let stats = self.engine.stats(request.get_ref().as_stored).await;
        Ok(Response::new(pb::StatsResponse {
            live_sessions: stats.map(|stats| stats.live_sessions),
            expired_removed_total: stats.map(|stats| stats.expired_removed_total),
            sweeps_total: stats.map(|stats| stats.sweeps_total),
            resident_memory_bytes: memory_usage::resident_bytes(),
            max_session_bytes: u64::try_from(self.limits.max_session_bytes).unwrap_or(u64::MAX),
            max_ttl: Some(duration_to_pb(self.limits.max_ttl)),
            pipeline_batches: true,
            max_batch_operations: u32::try_from(gonest_session_proto::MAX_BATCH_OPERATIONS)
                .unwrap_or(u32::MAX),
        }))
    }

    type PipelineStream = PipelineStream;

    type TrackStream = crate::tracking::TrackStream;

    /// Invalidations for the caller's near cache; see [`crate::tracking`]. Refused where the
    /// daemon cannot see every change.
    async fn track(
        &self,
        _request: Request<pb::TrackRequest>,
    ) -> Result<Response<Self::TrackStream>, Status> {
        let Some(feed) = self.engine.feed() else {
            return Err(gonest_session_proto::tracking_unavailable());
        };
        Ok(Response::new(feed.stream(self.stopping.clone())?))
    }

    /// Never called: [`WithPipeline`](crate::pipeline::WithPipeline) answers every `Pipeline`
    /// call before the generated server sees it. Were it reached, the caller would be told so
    /// rather than served a second way.
    async fn pipeline(
        &self,
        _request: Request<Streaming<pb::PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        Err(Status::internal(
            "Pipeline is served by the daemon's own body, not the generated server",
        ))
    }
}
