//! Property tests of the full-sync merge, the engine's one streaming decision over a whole
//! bucket: over arbitrary sorted inputs it yields exactly one action per key, in order,
//! matching `plan_key`, never `Delete` for a key the listing has; disordered or duplicated
//! input is an error that ends the merge.
//!
//! The rest of the engine is property-tested through the real share shell, against in-memory
//! doubles with injected faults: `tests/shell_props.rs` (events alone converge; faults, lost
//! events and restarts converge after a full sync; a second sync changes nothing).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use sgw_agent::engine::SyncAction;
use sgw_agent::engine::plan::{FullSyncMerge, MergeError, Side, plan_key};
use sgw_agent::model::{ConsistencyCheck, LocalRecord, ObjectMeta};

type RemoteMap = BTreeMap<String, (u64, i64, Option<u8>, Option<u64>)>;
type LocalMap = BTreeMap<String, (u64, i64, Option<u8>, u64)>;

fn key_strategy() -> impl Strategy<Value = String> {
    "[aZ/é~]{0,3}"
}

fn remote_map() -> impl Strategy<Value = RemoteMap> {
    prop::collection::btree_map(
        key_strategy(),
        (
            0u64..3,
            0i64..3,
            prop::option::of(0u8..2),
            prop::option::of(0u64..2),
        ),
        0..12,
    )
}

fn local_map() -> impl Strategy<Value = LocalMap> {
    prop::collection::btree_map(
        key_strategy(),
        (0u64..3, 0i64..3, prop::option::of(0u8..2), 0u64..2),
        0..12,
    )
}

fn remote_items(map: &RemoteMap) -> Vec<ObjectMeta> {
    map.iter()
        .map(|(key, &(size, last_modified, etag, crc))| ObjectMeta {
            key: key.clone(),
            size,
            etag: etag.map(|e| format!("e{e}")),
            last_modified,
            crc64nvme: crc,
        })
        .collect()
}

fn local_items(map: &LocalMap) -> Vec<LocalRecord> {
    map.iter()
        .map(|(key, &(size, last_modified, etag, crc))| LocalRecord {
            key: key.clone(),
            size,
            etag: etag.map(|e| format!("e{e}")),
            last_modified,
            crc64nvme: crc,
            sequencer: None,
        })
        .collect()
}

fn mode_strategy() -> impl Strategy<Value = ConsistencyCheck> {
    prop_oneof![
        Just(ConsistencyCheck::SizeLastModified),
        Just(ConsistencyCheck::Crc64),
        Just(ConsistencyCheck::Transmission),
    ]
}

fn action_key(action: &SyncAction) -> &str {
    match action {
        SyncAction::Keep(record) | SyncAction::Delete(record) => &record.key,
        SyncAction::Download(meta, _) | SyncAction::Verify(meta, _) => &meta.key,
    }
}

type Outcome = Vec<Result<SyncAction, MergeError<String, String>>>;

fn run_merge(remote: Vec<ObjectMeta>, local: Vec<LocalRecord>, mode: ConsistencyCheck) -> Outcome {
    FullSyncMerge::new(
        remote.into_iter().map(Ok::<_, String>),
        local.into_iter().map(Ok::<_, String>),
        mode,
    )
    .collect()
}

/// Index of the first item whose key is not strictly greater than the one before.
fn first_disorder<T>(items: &[T], key: impl Fn(&T) -> &str) -> Option<usize> {
    (1..items.len()).find(|&i| key(&items[i]) <= key(&items[i - 1]))
}

/// Make a sorted list unsorted: swap two items with different keys, or repeat one.
fn disorder<T: Clone>(items: &mut Vec<T>, a: usize, b: usize, duplicate: bool) {
    let (a, b) = (a % items.len(), b % items.len());
    if duplicate || a == b {
        let copy = items[a].clone();
        items.insert(a + 1, copy);
    } else {
        items.swap(a, b);
    }
}

proptest! {
    // Default config: 256 cases, `PROPTEST_CASES` raises it for a soak run.

    #[test]
    fn merge_yields_one_planned_action_per_key_in_order(
        remote in remote_map(),
        local in local_map(),
        mode in mode_strategy(),
    ) {
        let remote_list = remote_items(&remote);
        let local_list = local_items(&local);
        let outcome = run_merge(remote_list.clone(), local_list.clone(), mode);
        let actions: Vec<SyncAction> = outcome.into_iter().map(|item| item.map_err(|e| e.to_string())).collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(format!("sorted input failed: {e}")))?;

        let union: BTreeSet<&str> = remote.keys().chain(local.keys()).map(String::as_str).collect();
        let keys: Vec<&str> = actions.iter().map(action_key).collect();
        prop_assert_eq!(keys, union.iter().copied().collect::<Vec<_>>());

        let remote_by_key: BTreeMap<&str, &ObjectMeta> = remote_list.iter().map(|m| (m.key.as_str(), m)).collect();
        let local_by_key: BTreeMap<&str, &LocalRecord> = local_list.iter().map(|r| (r.key.as_str(), r)).collect();
        for action in &actions {
            let key = action_key(action);
            let expected = plan_key(remote_by_key.get(key).copied(), local_by_key.get(key).copied(), mode);
            prop_assert_eq!(Some(action), expected.as_ref());
            if let SyncAction::Delete(record) = action {
                prop_assert!(!remote.contains_key(&record.key), "deleted listed key {}", record.key);
                prop_assert!(local.contains_key(&record.key));
            }
        }
    }

    #[test]
    fn disordered_listing_ends_the_merge_at_the_inversion(
        remote in remote_map().prop_filter("needs items", |m| !m.is_empty()),
        local in local_map(),
        (a, b, duplicate) in (any::<usize>(), any::<usize>(), any::<bool>()),
    ) {
        let mut remote_list = remote_items(&remote);
        disorder(&mut remote_list, a, b, duplicate);
        let bad_at = first_disorder(&remote_list, |m| m.key.as_str());
        prop_assume!(bad_at.is_some());
        let bad_at = bad_at.unwrap_or_default();
        let sorted_prefix: BTreeSet<&str> = remote_list[..bad_at].iter().map(|m| m.key.as_str()).collect();

        let outcome = run_merge(remote_list.clone(), local_items(&local), ConsistencyCheck::SizeLastModified);
        let last = outcome.last();
        let ends_with_order_error = matches!(
            last,
            Some(Err(MergeError::OutOfOrder { side: Side::Remote, .. } | MergeError::Duplicate { side: Side::Remote, .. }))
        );
        prop_assert!(ends_with_order_error, "last item {:?}", last);
        prop_assert_eq!(outcome.iter().filter(|item| item.is_err()).count(), 1);
        for item in &outcome {
            if let Ok(SyncAction::Delete(record)) = item {
                // Decided while the listing was still sorted: the key is not in that part.
                prop_assert!(!sorted_prefix.contains(record.key.as_str()));
            }
        }
    }

    #[test]
    fn disordered_local_state_never_deletes_a_listed_key(
        remote in remote_map(),
        local in local_map().prop_filter("needs items", |m| !m.is_empty()),
        (a, b, duplicate) in (any::<usize>(), any::<usize>(), any::<bool>()),
    ) {
        let mut local_list = local_items(&local);
        disorder(&mut local_list, a, b, duplicate);
        prop_assume!(first_disorder(&local_list, |r| r.key.as_str()).is_some());

        let outcome = run_merge(remote_items(&remote), local_list, ConsistencyCheck::SizeLastModified);
        let ends_with_order_error = matches!(
            outcome.last(),
            Some(Err(MergeError::OutOfOrder { side: Side::Local, .. } | MergeError::Duplicate { side: Side::Local, .. }))
        );
        prop_assert!(ends_with_order_error, "last item {:?}", outcome.last());
        prop_assert_eq!(outcome.iter().filter(|item| item.is_err()).count(), 1);
        for item in &outcome {
            if let Ok(SyncAction::Delete(record)) = item {
                prop_assert!(!remote.contains_key(&record.key), "deleted listed key {}", record.key);
            }
        }
    }

    #[test]
    fn input_errors_pass_through_and_end_the_merge(
        remote in remote_map(),
        local in local_map(),
        fail_remote_at in any::<usize>(),
    ) {
        let remote_list = remote_items(&remote);
        let cut = fail_remote_at % (remote_list.len() + 1);
        let listed_before_failure: BTreeSet<String> = remote_list[..cut].iter().map(|m| m.key.clone()).collect();
        let mut items: Vec<Result<ObjectMeta, String>> = remote_list.into_iter().take(cut).map(Ok).collect();
        items.push(Err("listing page 7 failed".into()));
        let outcome: Outcome = FullSyncMerge::new(
            items.into_iter(),
            local_items(&local).into_iter().map(Ok::<_, String>),
            ConsistencyCheck::SizeLastModified,
        )
        .collect();
        prop_assert_eq!(outcome.last(), Some(&Err(MergeError::Remote("listing page 7 failed".to_string()))));
        // A delete can only be for a key the listing had already passed without seeing it.
        let last_listed = listed_before_failure.iter().next_back();
        for item in &outcome {
            if let Ok(SyncAction::Delete(record)) = item {
                prop_assert!(!remote.contains_key(&record.key));
                prop_assert!(last_listed.is_some_and(|last| record.key < *last), "{} deleted past the listed part", record.key);
            }
        }
    }
}
