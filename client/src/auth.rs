//! The bearer token sent with every call.

use gonest_session_proto::pb::session_store_client::SessionStoreClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// The generated client with the token interceptor in front.
pub(crate) type Client = SessionStoreClient<InterceptedService<Channel, ClientAuth>>;

/// Adds `authorization: Bearer <token>` to each call, when a token is set.
#[derive(Clone, Default)]
pub(crate) struct ClientAuth(Option<MetadataValue<Ascii>>);

impl ClientAuth {
    pub(crate) fn new(header: MetadataValue<Ascii>) -> Self {
        Self(Some(header))
    }
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ClientAuth(<redacted>)"
        } else {
            "ClientAuth(none)"
        })
    }
}

impl Interceptor for ClientAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}
