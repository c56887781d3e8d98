//! The fault-injection test bed's history and its checker.

pub mod checker;
pub mod history;
pub mod record;
pub mod schedule;

#[cfg(test)]
mod tests {
    use super::checker::{check, AnomalyKind};
    use super::history::*;

    /// Builds a history one operation at a time, each taking 10 µs after the previous.
    #[derive(Default)]
    struct Builder {
        ops: Vec<Op>,
        clock: u64,
    }

    impl Builder {
        fn op(&mut self, client: u32, outcome: Outcome, kind: OpKind) -> u64 {
            let id = self.ops.len() as u64 + 1;
            self.clock += 10;
            self.ops.push(Op {
                id,
                client,
                invoked_us: self.clock,
                completed_us: self.clock + 5,
                outcome,
                kind,
            });
            id
        }

        fn put(&mut self, outcome: Outcome, key: &str, value: i64) -> u64 {
            self.op(
                1,
                outcome,
                OpKind::Put {
                    key: key.into(),
                    value,
                },
            )
        }

        fn scan(&mut self, client: u32, key: &str, rows: &[i64]) -> u64 {
            self.op(
                client,
                Outcome::Ok,
                OpKind::Scan {
                    key: key.into(),
                    rows: rows.to_vec(),
                },
            )
        }
    }

    fn end(rows: &[(&str, &[i64])]) -> FinalState {
        FinalState {
            rows: rows
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            partitions: vec![PartitionEnd {
                pid: 0,
                leaders: vec!["a".into()],
                log_ends: vec![("a".into(), 2, 9), ("b".into(), 2, 9)],
            }],
        }
    }

    /// Puts (acknowledged, failed, unknown), a delete, scans, a follower read and a
    /// count that all fit: nothing to report.
    fn clean() -> (Builder, FinalState) {
        let mut h = Builder::default();
        h.put(Outcome::Ok, "k", 1);
        h.put(Outcome::Ok, "k", 2);
        h.put(Outcome::Failed, "k", 3);
        h.put(Outcome::Unknown, "k", 4);
        h.scan(2, "k", &[1, 2]);
        h.scan(2, "k", &[1, 2, 4]);
        h.op(
            3,
            Outcome::Ok,
            OpKind::FollowerScan {
                key: "k".into(),
                min_offset: 3,
                offset: 4,
                rows: vec![1, 2],
            },
        );
        h.op(
            3,
            Outcome::Ok,
            OpKind::Count {
                key: "k".into(),
                count: 3,
            },
        );
        h.put(Outcome::Ok, "j", 10);
        h.op(1, Outcome::Ok, OpKind::Delete { key: "j".into() });
        h.put(Outcome::Ok, "j", 11);
        (h, end(&[("k", &[1, 2, 4]), ("j", &[11])]))
    }

    #[test]
    fn a_clean_history_passes() {
        let (h, end) = clean();
        let report = check(&h.ops, &end);
        assert!(report.is_clean(), "{}", report.render());
        let table = report.render();
        assert!(
            table.contains("put ok") && table.contains("none"),
            "{table}"
        );
    }

    #[test]
    fn a_lost_acknowledged_put_is_caught() {
        let (h, _) = clean();
        let report = check(&h.ops, &end(&[("k", &[1, 4]), ("j", &[11])]));
        assert_eq!(
            report.count(AnomalyKind::LostWrite),
            1,
            "{}",
            report.render()
        );
        assert!(report.anomalies[0].ops.contains(&2));
    }

    #[test]
    fn a_row_stored_twice_is_caught() {
        let (h, _) = clean();
        let report = check(&h.ops, &end(&[("k", &[1, 2, 2, 4]), ("j", &[11])]));
        assert_eq!(
            report.count(AnomalyKind::DuplicateRow),
            1,
            "{}",
            report.render()
        );
    }

    #[test]
    fn a_failed_put_that_shows_up_is_caught() {
        let (h, _) = clean();
        let report = check(&h.ops, &end(&[("k", &[1, 2, 3, 4]), ("j", &[11])]));
        assert_eq!(
            report.count(AnomalyKind::FailedWriteVisible),
            1,
            "{}",
            report.render()
        );
    }

    #[test]
    fn a_value_nobody_wrote_is_caught() {
        let (mut h, end) = clean();
        h.scan(4, "k", &[1, 2, 99]);
        let report = check(&h.ops, &end);
        assert_eq!(
            report.count(AnomalyKind::PhantomValue),
            1,
            "{}",
            report.render()
        );
        // A value read before its put was invoked is a phantom too.
        let mut h = Builder::default();
        h.scan(1, "k", &[5]);
        h.put(Outcome::Ok, "k", 5);
        let report = check(&h.ops, &super::history::FinalState::default());
        assert!(
            report.count(AnomalyKind::PhantomValue) >= 1,
            "{}",
            report.render()
        );
    }

    #[test]
    fn scans_in_different_orders_are_caught() {
        let (mut h, end) = clean();
        h.scan(4, "k", &[2, 1, 4]);
        let report = check(&h.ops, &end);
        assert_eq!(
            report.count(AnomalyKind::OrderDisagreement),
            1,
            "{}",
            report.render()
        );
    }

    /// Three reads, no two of which disagree on a pair, that no single order fits.
    #[test]
    fn reads_that_fit_no_single_order_are_caught() {
        let mut h = Builder::default();
        for v in [1, 2, 3] {
            h.put(Outcome::Unknown, "k", v);
        }
        h.scan(2, "k", &[1, 2]);
        h.scan(3, "k", &[2, 3]);
        h.scan(4, "k", &[3, 1]);
        let report = check(&h.ops, &FinalState::default());
        assert_eq!(
            report.count(AnomalyKind::OrderDisagreement),
            1,
            "{}",
            report.render()
        );
    }

    /// Keys with thousands of rows read hundreds of times are checked in linear time
    /// (this finishes at once; the pairwise check it replaced took minutes).
    #[test]
    fn long_reads_are_checked() {
        let mut h = Builder::default();
        let values: Vec<i64> = (1..=3000).collect();
        for &v in &values {
            h.put(Outcome::Ok, "k", v);
        }
        for client in 0..200 {
            h.scan(client, "k", &values);
        }
        let report = check(&h.ops, &end(&[("k", &values)]));
        assert!(report.is_clean(), "{}", report.render());
    }

    #[test]
    fn a_scan_missing_an_acknowledged_row_is_caught() {
        let (mut h, end) = clean();
        let scan = h.scan(4, "k", &[2, 4]);
        let report = check(&h.ops, &end);
        assert_eq!(
            report.count(AnomalyKind::StaleRead),
            1,
            "{}",
            report.render()
        );
        assert!(report.anomalies.iter().any(|a| a.ops == vec![1, scan]));
        // A delete of the key that may have come in between excuses it.
        let mut h = Builder::default();
        h.put(Outcome::Ok, "k", 1);
        h.op(1, Outcome::Unknown, OpKind::Delete { key: "k".into() });
        h.scan(2, "k", &[]);
        assert!(check(&h.ops, &FinalState::default()).is_clean());
    }

    #[test]
    fn a_read_going_back_in_time_is_caught() {
        let mut h = Builder::default();
        h.put(Outcome::Unknown, "k", 1);
        h.op(
            2,
            Outcome::Ok,
            OpKind::FollowerScan {
                key: "k".into(),
                min_offset: 1,
                offset: 2,
                rows: vec![1],
            },
        );
        h.op(
            2,
            Outcome::Ok,
            OpKind::FollowerScan {
                key: "k".into(),
                min_offset: 2,
                offset: 2,
                rows: vec![],
            },
        );
        let report = check(&h.ops, &end(&[("k", &[1])]));
        assert_eq!(
            report.count(AnomalyKind::NonMonotonicRead),
            1,
            "{}",
            report.render()
        );
    }

    /// Another client's delete ends; a stale follower scan still shows the row, and a
    /// later leader scan does not: newer, not going back in time.
    #[test]
    fn a_stale_follower_read_before_a_delete_is_no_anomaly() {
        let mut h = Builder::default();
        h.put(Outcome::Ok, "k", 1);
        h.op(1, Outcome::Ok, OpKind::Delete { key: "k".into() });
        let follower = |rows: Vec<i64>| OpKind::FollowerScan {
            key: "k".into(),
            min_offset: 1,
            offset: 1,
            rows,
        };
        h.op(2, Outcome::Ok, follower(vec![1]));
        h.scan(2, "k", &[]);
        let report = check(&h.ops, &end(&[("k", &[])]));
        assert!(report.is_clean(), "{}", report.render());

        // Once the client's own leader scan showed the delete, its follower reads must too.
        let mut h = Builder::default();
        h.put(Outcome::Ok, "k", 1);
        h.op(1, Outcome::Ok, OpKind::Delete { key: "k".into() });
        h.scan(2, "k", &[]);
        h.op(2, Outcome::Ok, follower(vec![1]));
        h.scan(2, "k", &[]);
        let report = check(&h.ops, &end(&[("k", &[])]));
        assert_eq!(
            report.count(AnomalyKind::NonMonotonicRead),
            1,
            "{}",
            report.render()
        );
    }

    #[test]
    fn a_get_missing_an_acknowledged_row_or_showing_a_failed_one_is_caught() {
        let mut h = Builder::default();
        h.put(Outcome::Ok, "k", 1);
        h.put(Outcome::Failed, "k", 2);
        let get = |value| OpKind::Get {
            key: "k".into(),
            value,
        };
        h.op(2, Outcome::Ok, get(Some(1)));
        assert!(check(&h.ops, &end(&[("k", &[1])])).is_clean());
        h.op(2, Outcome::Ok, get(None));
        h.op(2, Outcome::Ok, get(Some(2)));
        let report = check(&h.ops, &end(&[("k", &[1])]));
        assert_eq!(
            report.count(AnomalyKind::StaleRead),
            1,
            "{}",
            report.render()
        );
        assert_eq!(
            report.count(AnomalyKind::FailedWriteVisible),
            1,
            "{}",
            report.render()
        );
    }

    #[test]
    fn a_follower_read_behind_its_min_offset_is_caught() {
        let (mut h, end) = clean();
        h.op(
            5,
            Outcome::Ok,
            OpKind::FollowerScan {
                key: "k".into(),
                min_offset: 7,
                offset: 6,
                rows: vec![1, 2, 4],
            },
        );
        let report = check(&h.ops, &end);
        assert_eq!(
            report.count(AnomalyKind::FollowerBehind),
            1,
            "{}",
            report.render()
        );
    }

    #[test]
    fn an_impossible_count_is_caught() {
        let (mut h, end) = clean();
        h.op(
            5,
            Outcome::Ok,
            OpKind::Count {
                key: "k".into(),
                count: 1,
            },
        );
        h.op(
            5,
            Outcome::Ok,
            OpKind::Count {
                key: "k".into(),
                count: 9,
            },
        );
        let report = check(&h.ops, &end);
        assert_eq!(
            report.count(AnomalyKind::WrongCount),
            2,
            "{}",
            report.render()
        );
    }

    #[test]
    fn leaders_and_divergent_logs_after_the_heal_are_caught() {
        let (h, mut end) = clean();
        end.partitions[0].leaders.push("b".into());
        end.partitions[0].log_ends[1].2 = 8;
        end.partitions.push(PartitionEnd {
            pid: 1,
            leaders: Vec::new(),
            log_ends: Vec::new(),
        });
        let report = check(&h.ops, &end);
        assert_eq!(
            report.count(AnomalyKind::LeaderCount),
            2,
            "{}",
            report.render()
        );
        assert_eq!(
            report.count(AnomalyKind::Divergence),
            1,
            "{}",
            report.render()
        );
    }

    #[test]
    fn histories_round_trip_through_json_lines() {
        let (h, _) = clean();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        write_history(&path, &h.ops).unwrap();
        assert_eq!(read_history(&path).unwrap(), h.ops);
        std::fs::write(&path, "{\"id\": 1}\n").unwrap();
        let err = read_history(&path).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
