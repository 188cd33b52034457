//! The connection to Redis: one multiplexed connection to a single server,
//! or a Cluster connection made on first use, behind one type.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use super::RedisStore;

/// How a store reaches Redis.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    /// Connected on first use (and again after a failed first attempt), so
    /// tollgate starts while the cluster is down.
    Cluster(
        Arc<redis::cluster::ClusterClient>,
        Arc<tokio::sync::OnceCell<ClusterConnection>>,
    ),
}

/// One multiplexed connection of either kind.
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

// === impl RedisStore ===

impl RedisStore {
    /// A handle on the shared connection (a cheap clone), connecting a
    /// Cluster on first use.
    pub(super) async fn connection(&self) -> redis::RedisResult<Connection> {
        Ok(match &self.conn {
            Conn::Single(c) => Connection::Single(c.clone()),
            Conn::Cluster(client, cell) => Connection::Cluster(
                cell.get_or_try_init(|| client.get_async_connection())
                    .await?
                    .clone(),
            ),
        })
    }
}
