//! Changing replicas and configuration through the nameserver's op pipeline, and
//! managing the ops themselves.

use tessera_proto::nameserver::*;

use super::{Call, Command, Flag, Reply};
use crate::shell::{parse_pid_group, Shell};

pub const COMMANDS: &[Command] = &[
    Command::new(
        "confset",
        "confset auto_failover true|false",
        "change the configuration",
        (2, 2),
        confset,
    ),
    Command::new(
        "offlineendpoint",
        "offlineendpoint endpoint",
        "take a tablet's replicas offline (new leaders where it led)",
        (1, 1),
        offlineendpoint,
    ),
    Command::new(
        "recoverendpoint",
        "recoverendpoint endpoint",
        "bring a returned tablet's replicas back",
        (1, 1),
        recoverendpoint,
    ),
    Command::new(
        "recovertable",
        "recovertable name pid endpoint",
        "bring one replica back",
        (3, 3),
        recovertable,
    ),
    Command::new(
        "changeleader",
        "changeleader name pid [endpoint|auto] [force]",
        "give a partition a new leader",
        (2, 4),
        changeleader,
    )
    .flags(&[Flag::Yes])
    .details(
        "Without force the new leader must hold every acknowledged write: in quorum mode \
         enough replicas must answer. `force` takes the chosen replica anyway, as Kafka's \
         unclean leader election does, and writes it lacks are lost; the interactive shell \
         asks first (--yes skips it).",
    ),
    Command::new(
        "migrate",
        "migrate src_endpoint name pid_group dst_endpoint",
        "move follower replicas to another tablet",
        (4, 4),
        migrate,
    ),
    Command::new(
        "addreplica",
        "addreplica name pid_group endpoint",
        "add a follower replica",
        (3, 3),
        addreplica,
    ),
    Command::new(
        "delreplica",
        "delreplica name pid_group endpoint",
        "remove a follower replica",
        (3, 3),
        delreplica,
    ),
    Command::new(
        "makesnapshot",
        "makesnapshot name pid",
        "snapshot a partition",
        (2, 2),
        makesnapshot,
    ),
    Command::new(
        "updatetablealive",
        "updatetablealive name pid|* endpoint yes|no",
        "mark replicas alive or dead in the metadata",
        (4, 4),
        updatetablealive,
    ),
    Command::new(
        "cancelop",
        "cancelop op_id",
        "cancel an unfinished op",
        (1, 1),
        cancelop,
    ),
    Command::new(
        "deleteop",
        "deleteop op_id",
        "delete an ended op from the pipeline's records",
        (1, 1),
        deleteop,
    ),
];

/// What an op-starting command prints: the ops it started.
fn started(ops: &[OpInfo]) -> String {
    let ids: Vec<String> = ops
        .iter()
        .map(|op| format!("{} ({} pid {})", op.op_id, op.op_type, op.pid))
        .collect();
    format!(
        "ok; ops started: {}",
        if ids.is_empty() {
            "none".into()
        } else {
            ids.join(", ")
        }
    )
}

fn confset(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let request = ConfSetRequest {
            key: call.arg(0).to_string(),
            value: call.arg(1).to_string(),
        };
        shell
            .ns(request, |mut c, r| async move { c.conf_set(r).await })
            .await?;
        Ok(format!("set {} ok", call.arg(0)))
    })
}

fn endpoint_request(call: &Call) -> EndpointRequest {
    EndpointRequest {
        endpoint: call.arg(0).to_string(),
    }
}

fn offlineendpoint(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let ops = shell
            .ns(endpoint_request(&call), |mut c, r| async move {
                c.offline_endpoint(r).await
            })
            .await?
            .ops;
        Ok(started(&ops))
    })
}

fn recoverendpoint(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let ops = shell
            .ns(endpoint_request(&call), |mut c, r| async move {
                c.recover_endpoint(r).await
            })
            .await?
            .ops;
        Ok(started(&ops))
    })
}

fn recovertable(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let request = RecoverTableRequest {
            db: shell.db.clone(),
            name: call.arg(0).to_string(),
            pid: call.pid(1)?,
            endpoint: call.arg(2).to_string(),
        };
        let ops = shell
            .ns(request, |mut c, r| async move { c.recover_table(r).await })
            .await?
            .ops;
        Ok(started(&ops))
    })
}

fn changeleader(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let mut candidate = String::new();
        let mut force = false;
        for word in &call.args[2..] {
            match word.as_str() {
                "force" => force = true,
                "auto" => {}
                endpoint => candidate = endpoint.to_string(),
            }
        }
        if force
            && !shell.confirmed(
                call.yes,
                "A forced leader change loses acknowledged writes the chosen replica lacks. Go on?",
            )
        {
            return Ok("changeleader cancelled".into());
        }
        let request = ChangeLeaderRequest {
            db: shell.db.clone(),
            name: call.arg(0).to_string(),
            pid: call.pid(1)?,
            candidate,
            force,
        };
        let ops = shell
            .ns(request, |mut c, r| async move { c.change_leader(r).await })
            .await?
            .ops;
        let mut text = started(&ops);
        if force {
            text.push_str("\nforced: acknowledged writes the chosen replica lacks are lost");
        }
        Ok(text)
    })
}

fn migrate(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let request = ReplicaRequest {
            db: shell.db.clone(),
            name: call.arg(1).to_string(),
            pids: parse_pid_group(call.arg(2))?,
            endpoint: call.arg(3).to_string(),
            source: call.arg(0).to_string(),
        };
        let ops = shell
            .ns(request, |mut c, r| async move { c.migrate(r).await })
            .await?
            .ops;
        Ok(started(&ops))
    })
}

fn replica_request(shell: &Shell, call: &Call) -> Result<ReplicaRequest, String> {
    Ok(ReplicaRequest {
        db: shell.db.clone(),
        name: call.arg(0).to_string(),
        pids: parse_pid_group(call.arg(1))?,
        endpoint: call.arg(2).to_string(),
        source: String::new(),
    })
}

fn addreplica(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let request = replica_request(shell, &call)?;
        let ops = shell
            .ns(request, |mut c, r| async move { c.add_replica(r).await })
            .await?
            .ops;
        Ok(started(&ops))
    })
}

fn delreplica(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let request = replica_request(shell, &call)?;
        let ops = shell
            .ns(request, |mut c, r| async move { c.del_replica(r).await })
            .await?
            .ops;
        Ok(started(&ops))
    })
}

fn makesnapshot(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let request = PartitionsRequest {
            db: shell.db.clone(),
            name: call.arg(0).to_string(),
            pids: vec![call.pid(1)?],
        };
        let ops = shell
            .ns(request, |mut c, r| async move { c.make_snapshot(r).await })
            .await?
            .ops;
        Ok(started(&ops))
    })
}

fn updatetablealive(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let pids = if call.arg(1) == "*" {
            Vec::new()
        } else {
            parse_pid_group(call.arg(1))?
        };
        let alive = match call.arg(3) {
            "yes" => true,
            "no" => false,
            other => {
                return Err(format!(
                    "`{other}` must be yes or no; {}",
                    call.usage_error()
                ))
            }
        };
        let request = UpdateTableAliveRequest {
            db: shell.db.clone(),
            name: call.arg(0).to_string(),
            pids,
            endpoint: call.arg(2).to_string(),
            alive,
        };
        let updated = shell
            .ns(
                request,
                |mut c, r| async move { c.update_table_alive(r).await },
            )
            .await?
            .updated;
        Ok(format!("update ok: {updated} partition(s)"))
    })
}

fn cancelop(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let op_id: u64 = call.number(0, "an op id")?;
        shell
            .ns(OpIdRequest { op_id }, |mut c, r| async move {
                c.cancel_op(r).await
            })
            .await?;
        Ok(format!("cancel op {op_id} ok"))
    })
}

fn deleteop(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let op_id: u64 = call.number(0, "an op id")?;
        shell
            .ns(OpIdRequest { op_id }, |mut c, r| async move {
                c.delete_op(r).await
            })
            .await?;
        Ok(format!("delete op {op_id} ok"))
    })
}
