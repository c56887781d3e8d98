//! Where a new table's replicas go: a pure function over the healthy tablets.
//!
//! Each partition gets `replica_num` distinct tablets, on distinct hosts whenever the
//! tablets' hosts allow it. Leaders rotate over the tablets (starting after the tablet
//! that already leads the most), so leadership spreads evenly.

use std::collections::{BTreeMap, HashSet};

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error("replicanum {replica_num} is more than the {healthy} healthy tablets")]
    NotEnoughTablets { replica_num: u32, healthy: usize },
    #[error("partitionnum and replicanum must be at least 1")]
    Zero,
    #[error(
        "partitionnum {partition_num} is more than the most a table may have, {MAX_PARTITION_NUM}"
    )]
    TooManyPartitions { partition_num: u32 },
}

/// The most partitions a table may have. A table's metadata is one ZooKeeper node (at
/// most 1 MB), which this keeps well inside even with every partition carrying an
/// unavailable reason during an outage; it also bounds what a bad request can make the
/// nameserver allocate.
pub const MAX_PARTITION_NUM: u32 = 1024;

fn host_of(endpoint: &str) -> &str {
    endpoint.rsplit_once(':').map_or(endpoint, |(host, _)| host)
}

/// For each partition, its replicas' endpoints; the first is the leader.
///
/// `leading` counts the partitions each tablet already leads (for balance across tables).
pub fn place(
    healthy: &[String],
    partition_num: u32,
    replica_num: u32,
    leading: &BTreeMap<String, usize>,
) -> Result<Vec<Vec<String>>, PlacementError> {
    if partition_num == 0 || replica_num == 0 {
        return Err(PlacementError::Zero);
    }
    if partition_num > MAX_PARTITION_NUM {
        return Err(PlacementError::TooManyPartitions { partition_num });
    }
    if replica_num as usize > healthy.len() {
        return Err(PlacementError::NotEnoughTablets {
            replica_num,
            healthy: healthy.len(),
        });
    }
    let mut tablets: Vec<String> = healthy.to_vec();
    tablets.sort();
    // Tablets leading the fewest partitions lead first.
    let mut order: Vec<usize> = (0..tablets.len()).collect();
    order.sort_by_key(|&i| (leading.get(&tablets[i]).copied().unwrap_or(0), i));
    let mut partitions = Vec::with_capacity(partition_num as usize);
    for pid in 0..partition_num as usize {
        let leader = order[pid % order.len()];
        let mut chosen = vec![leader];
        let mut hosts: HashSet<&str> = HashSet::from([host_of(&tablets[leader])]);
        // Walk the ring after the leader: first tablets on new hosts, then any.
        let ring: Vec<usize> = (1..tablets.len())
            .map(|k| (leader + k) % tablets.len())
            .collect();
        for &candidate in &ring {
            if chosen.len() == replica_num as usize {
                break;
            }
            if hosts.insert(host_of(&tablets[candidate])) {
                chosen.push(candidate);
            }
        }
        for &candidate in &ring {
            if chosen.len() == replica_num as usize {
                break;
            }
            if !chosen.contains(&candidate) {
                chosen.push(candidate);
            }
        }
        partitions.push(chosen.into_iter().map(|i| tablets[i].clone()).collect());
    }
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(list: &[&str]) -> Vec<String> {
        list.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn replicas_are_distinct_and_leaders_spread() {
        let tablets = eps(&["h:1", "h:2", "h:3"]);
        let placed = place(&tablets, 6, 3, &BTreeMap::new()).unwrap();
        let mut leaders = BTreeMap::new();
        for replicas in &placed {
            let distinct: HashSet<_> = replicas.iter().collect();
            assert_eq!(distinct.len(), 3);
            *leaders.entry(replicas[0].clone()).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    }

    #[test]
    fn distinct_hosts_are_preferred() {
        let tablets = eps(&["a:1", "a:2", "b:1", "b:2"]);
        for replicas in place(&tablets, 4, 2, &BTreeMap::new()).unwrap() {
            assert_ne!(host_of(&replicas[0]), host_of(&replicas[1]), "{replicas:?}");
        }
    }

    #[test]
    fn existing_leadership_is_balanced() {
        let tablets = eps(&["h:1", "h:2", "h:3"]);
        let leading = BTreeMap::from([("h:1".to_string(), 5), ("h:2".to_string(), 1)]);
        let placed = place(&tablets, 1, 1, &leading).unwrap();
        assert_eq!(placed[0][0], "h:3");
    }

    #[test]
    fn too_few_tablets_is_a_clear_error() {
        let err = place(&eps(&["h:1", "h:2"]), 1, 3, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "replicanum 3 is more than the 2 healthy tablets"
        );
        assert_eq!(
            place(&eps(&["h:1"]), 0, 1, &BTreeMap::new()).unwrap_err(),
            PlacementError::Zero
        );
        assert_eq!(
            place(&eps(&["h:1"]), u32::MAX, 1, &BTreeMap::new()).unwrap_err(),
            PlacementError::TooManyPartitions {
                partition_num: u32::MAX
            }
        );
        assert_eq!(
            place(&eps(&["h:1"]), MAX_PARTITION_NUM, 1, &BTreeMap::new())
                .unwrap()
                .len(),
            MAX_PARTITION_NUM as usize
        );
    }
}
