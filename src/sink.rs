//! PLACEHOLDER written by the lead so the crate compiles; the sink owner replaces this file.
use std::future::Future;
use std::sync::Arc;
#[derive(Debug, thiserror::Error)]
#[error("sink not built yet")]
pub struct SinkError;
pub async fn run(
    _config: crate::config::Config,
    _codec: Arc<crate::contracts::Codec>,
    _shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SinkError> {
    Err(SinkError)
}
