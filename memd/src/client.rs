//! Network client (being written).
use crate::far::StoreError;
use crate::proto::Reply;

/// Client configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig;
/// The client.
#[derive(Debug)]
pub struct Client;
/// A request in flight.
#[derive(Debug)]
pub struct Ticket;
impl Ticket {
    pub(crate) fn wait(self) -> Result<Reply, StoreError> {
        unreachable!()
    }
    pub(crate) fn is_ready(&self) -> bool {
        false
    }
}
