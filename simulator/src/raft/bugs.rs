//! A store bug, to see the checkers catch what a broken store does to Raft: [`ForgetVote`]
//! keeps the product's log store but forgets its vote when the node restarts, so a restarted
//! node may vote twice in one term.

use super::runtime::SimConfig;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, RaftLogReader, StorageError, Vote};
use pbx_cluster::raft::NodeId;
use pbx_cluster::raft::store::LogStore;
use std::fmt::Debug;
use std::ops::RangeBounds;

pub struct ForgetVote(pub LogStore<SimConfig>);

impl RaftLogReader<SimConfig> for ForgetVote {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<openraft::Entry<SimConfig>>, StorageError<NodeId>> {
        self.0.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<SimConfig> for ForgetVote {
    type LogReader = LogStore<SimConfig>;

    async fn get_log_state(&mut self) -> Result<LogState<SimConfig>, StorageError<NodeId>> {
        self.0.get_log_state().await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.0.get_log_reader().await
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.0.save_vote(vote).await
    }

    /// The bug: the vote is stored, but never read back.
    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(None)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        self.0.save_committed(committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.0.read_committed().await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<SimConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<SimConfig>> + Send,
        I::IntoIter: Send,
    {
        self.0.append(entries, callback).await
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.0.truncate(log_id).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.0.purge(log_id).await
    }
}
