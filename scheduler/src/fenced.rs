//! The scheduler's own writes to the store, as its role allows: none from a follower,
//! fenced by the leadership key's revision from the leader of a shared store (a leader
//! deposed without noticing yet cannot overwrite its successor's state), plain from the
//! sole scheduler of a store of its own.

use crate::leader::{self, Role};
use crate::state::Scheduler;
use crate::store::{Revision, StoreError};

/// How a write goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    Skip,
    Plain,
    Fenced(Revision),
}

/// How a scheduler in `role` writes to a store that is `shared` (etcd) or its own.
pub fn write_kind(role: &Role, shared: bool) -> WriteKind {
    match role {
        Role::Follower { .. } => WriteKind::Skip,
        Role::Leader { revision } if shared => WriteKind::Fenced(*revision),
        Role::Leader { .. } => WriteKind::Plain,
    }
}

impl Scheduler {
    /// Deletes `key` as this scheduler's role allows; whether it was deleted.
    pub async fn delete_state(&self, key: &str) -> Result<bool, StoreError> {
        match write_kind(&self.role(), self.store.shared()) {
            WriteKind::Skip => Ok(false),
            WriteKind::Plain => self.store.delete(key).await.map(|r| r.is_some()),
            WriteKind::Fenced(fence) => Ok(self
                .store
                .delete_fenced(key, leader::KEY, fence)
                .await?
                .is_some()),
        }
    }

    /// Writes `key` as this scheduler's role allows; whether it was written.
    pub async fn write_state(&self, key: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        match write_kind(&self.role(), self.store.shared()) {
            WriteKind::Skip => Ok(false),
            WriteKind::Plain => self.store.put(key, value, None).await.map(|_| true),
            WriteKind::Fenced(fence) => {
                let written = self
                    .store
                    .put_fenced(key, value, leader::KEY, fence)
                    .await?
                    .is_some();
                if !written {
                    tracing::warn!(key, fence, "not the leader any more: the write was refused");
                }
                Ok(written)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_write_nothing_and_a_shared_store_is_written_fenced() {
        let follower = Role::Follower { leader: None };
        let leader = Role::Leader { revision: 42 };
        assert_eq!(write_kind(&follower, true), WriteKind::Skip);
        assert_eq!(write_kind(&follower, false), WriteKind::Skip);
        assert_eq!(write_kind(&leader, true), WriteKind::Fenced(42));
        // The sole scheduler of an embedded store has nobody to be fenced from.
        assert_eq!(
            write_kind(&Role::Leader { revision: 0 }, false),
            WriteKind::Plain
        );
    }

    /// A scheduler on `store`, with the settings that matter nowhere here.
    fn scheduler_on(store: std::sync::Arc<dyn crate::store::Store>) -> std::sync::Arc<Scheduler> {
        use std::time::Duration;
        let settings = crate::state::Settings {
            token: "t".into(),
            report_interval: Duration::from_secs(1),
            down_after: 3,
            policy: crate::placement::Policy::Spread,
            headroom: 0.05,
            load_timeout: Duration::from_secs(1),
            target_ongoing_requests: 2.0,
            upscale_delay: Duration::from_secs(5),
            model_defaults: Default::default(),
            rescan_interval: Duration::ZERO,
            max_message_size: herd_core::limits::MAX_MESSAGE,
            max_in_flight_bytes: usize::MAX,
            wake_timeout: Duration::from_secs(1),
            tls: None,
            advertise: Default::default(),
            immich_models: None,
        };
        let model =
            crate::model::ClusterModel::new(tokio::time::Instant::now(), Duration::from_secs(1), 3);
        Scheduler::new(model, settings, store, std::path::PathBuf::new())
    }

    #[tokio::test]
    async fn on_etcd_a_deposed_leader_writes_nothing_and_a_follower_nothing_at_all() {
        let store = crate::store::etcd_tests::etcd_stores_for_test(1)
            .await
            .pop()
            .expect("a store");
        let store: std::sync::Arc<dyn crate::store::Store> = std::sync::Arc::new(store);
        let scheduler = scheduler_on(store.clone());
        let (roles, follow) = tokio::sync::watch::channel(Role::Follower { leader: None });
        let following = {
            let scheduler = scheduler.clone();
            tokio::spawn(async move { scheduler.follow_roles(follow).await })
        };
        let wait_for = |want: Role| {
            let scheduler = scheduler.clone();
            async move {
                while scheduler.role() != want {
                    tokio::task::yield_now().await;
                }
            }
        };
        wait_for(Role::Follower { leader: None }).await;
        assert!(!scheduler
            .write_state("/herd/x", b"follower".to_vec())
            .await
            .expect("no error"));
        assert!(store.get("/herd/x").await.expect("get").is_none());

        let first = store
            .put_if(leader::KEY, b"me".to_vec(), 0, None)
            .await
            .expect("put")
            .expect("created");
        roles.send_replace(Role::Leader { revision: first });
        wait_for(Role::Leader { revision: first }).await;
        assert!(scheduler
            .write_state("/herd/x", b"leader".to_vec())
            .await
            .expect("written"));

        // Another took the lead (the key made again): the old token writes nothing.
        store.delete(leader::KEY).await.expect("delete");
        store
            .put_if(leader::KEY, b"other".to_vec(), 0, None)
            .await
            .expect("put")
            .expect("created");
        assert!(!scheduler
            .write_state("/herd/x", b"deposed".to_vec())
            .await
            .expect("no error"));
        assert!(!scheduler.delete_state("/herd/x").await.expect("no error"));
        let kept = store.get("/herd/x").await.expect("get").expect("kept");
        assert_eq!(kept.value, b"leader".to_vec());
        drop(roles);
        following.await.expect("follows until the election ends");
    }
}
