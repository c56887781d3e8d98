//! Driving replicas through the tablet RPCs, as the nameserver will.

use std::time::Duration;

use tessera_common::wire_error::{detail_of, ErrorCode};
use tessera_common::Value;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::*;

use crate::wait::wait_until_async;
use crate::TabletProcess;

/// Sets a replica's role, retrying while the replica answers "unavailable" (it may be
/// reloading after a truncation), as the nameserver does.
pub async fn change_role(
    client: &mut TabletClient<tessera_common::auth::AuthChannel>,
    tid: u32,
    pid: u32,
    role: TableRole,
    term: u64,
    followers: &[&TabletProcess],
    leader: Option<&TabletProcess>,
) {
    let request = ChangeRoleRequest {
        tid,
        pid,
        role: role as i32,
        term,
        followers: followers.iter().map(|t| t.endpoint.clone()).collect(),
        leader: leader.map(|t| t.endpoint.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.change_role(request.clone()).await {
            Ok(_) => return,
            Err(e)
                if detail_of(&e).is_some_and(|d| d.code() == ErrorCode::PartitionUnavailable)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("change role to {role:?} in term {term}: {}", e.message()),
        }
    }
}

/// Creates a replica of `meta` on each of `tablets`, with no role given yet.
pub async fn create_replicas(tablets: &[&TabletProcess], meta: &TableMeta) {
    for tablet in tablets {
        tablet
            .client()
            .await
            .create_table(CreateTableRequest {
                meta: Some(meta.clone()),
            })
            .await
            .expect("create replica");
    }
}

/// Creates the replica on every tablet; the first leads the others in term 1.
pub async fn create_replicated(tablets: &[&TabletProcess], meta: TableMeta) {
    let (tid, pid) = (meta.tid, meta.pid);
    create_replicas(tablets, &meta).await;
    let (leader, followers) = tablets.split_first().expect("at least one tablet");
    for follower in followers {
        change_role(
            &mut follower.client().await,
            tid,
            pid,
            TableRole::Follower,
            1,
            &[],
            Some(leader),
        )
        .await;
    }
    change_role(
        &mut leader.client().await,
        tid,
        pid,
        TableRole::Leader,
        1,
        followers,
        None,
    )
    .await;
}

pub async fn status(tablet: &TabletProcess, tid: u32, pid: u32) -> TableStatus {
    tablet
        .client()
        .await
        .get_table_status(GetTableStatusRequest {
            tid: Some(tid),
            pid: Some(pid),
        })
        .await
        .expect("table status")
        .into_inner()
        .tables
        .remove(0)
}

/// Waits until every tablet's replica ends with the same record (same offset and term:
/// two logs may end at one offset with different records until the divergent one is
/// cut) and has applied as much (a follower learns the commit with its leader's next
/// message).
pub async fn wait_in_sync(tablets: &[&TabletProcess], tid: u32, pid: u32, timeout: Duration) {
    let what = format!("replicas of {tid}/{pid} to hold and apply the same log");
    wait_until_async(timeout, &what, || async {
        let mut ends = Vec::new();
        for tablet in tablets {
            let replica = status(tablet, tid, pid).await;
            let Ok(pair) = tablet
                .client()
                .await
                .get_term_pair(GetTermPairRequest { tid, pid })
                .await
            else {
                return false;
            };
            let pair = pair.into_inner();
            ends.push((pair.last_term, pair.last_offset, replica.applied_offset));
        }
        ends.windows(2).all(|w| w[0] == w[1])
    })
    .await;
}

/// (row count, order-independent checksum) of a replica's rows. A replica that does not
/// know yet that all it applied is committed (just loaded, or a follower waiting for its
/// leader's next message) is asked again until it does.
pub async fn rows_checksum(tablet: &TabletProcess, tid: u32, pid: u32) -> (usize, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut count, mut sum) = (0, 0u64);
    let mut after = Vec::new();
    loop {
        // A follower is read as a follower read of everything it applied.
        let replica = status(tablet, tid, pid).await;
        let min_offset = if replica.role == TableRole::Leader as i32 {
            0
        } else if replica.applied_offset == 0 {
            return (0, 0);
        } else {
            replica.applied_offset
        };
        let read = tablet
            .client()
            .await
            .preview(PreviewRequest {
                tid,
                pid,
                min_offset,
                after: after.clone(),
                ..Default::default()
            })
            .await;
        let page = match read {
            Ok(response) => response.into_inner(),
            Err(e)
                if detail_of(&e).is_some_and(|d| d.code() == ErrorCode::PartitionUnavailable)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(e) => panic!("preview of {tid}/{pid} on {}: {e}", tablet.endpoint),
        };
        for row in &page.rows {
            let text = format!("{:?}", Value::row_from_proto(row).unwrap());
            sum = sum.wrapping_add(tessera_common::key::fnv1a_64(text.as_bytes()));
        }
        count += page.rows.len();
        if page.next.is_empty() {
            return (count, sum);
        }
        after = page.next;
    }
}

/// Fences each replica in `term`; returns their (last term, last offset) in order.
pub async fn fence_all(
    tablets: &[&TabletProcess],
    tid: u32,
    pid: u32,
    term: u64,
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for tablet in tablets {
        let fenced = tablet
            .client()
            .await
            .fence(FenceRequest { tid, pid, term })
            .await
            .expect("fence")
            .into_inner();
        out.push((fenced.last_term, fenced.last_offset));
    }
    out
}
