//! Model test: random puts, deletes, snapshots and reloads applied both to a table on
//! disk and to a plain in-memory model; after a final reload from disk the two agree.

mod common;

use common::*;
use proptest::prelude::*;
use tessera_common::Value;
use tessera_tablet::storage::Table;

#[derive(Debug, Clone)]
enum Op {
    Put {
        id: u8,
        ts: i64,
        v: Option<i64>,
        tag: u8,
    },
    DeleteById(u8),
    DeleteByTag(u8),
    Snapshot,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0u8..8, 0i64..6, prop::option::of(any::<i64>()), 0u8..3)
            .prop_map(|(id, ts, v, tag)| Op::Put { id, ts, v, tag }),
        2 => (0u8..8).prop_map(Op::DeleteById),
        1 => (0u8..3).prop_map(Op::DeleteByTag),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Reopen),
    ]
}

/// The model: live rows with the offset they were written at.
#[derive(Default)]
struct Model {
    rows: Vec<(u64, Vec<Value>)>,
}

impl Model {
    /// Rows of an id, as the table orders them: ts descending, then newest write first.
    fn by_id(&self, id: &str) -> Vec<Vec<Value>> {
        let mut rows: Vec<_> = self
            .rows
            .iter()
            .filter(|(_, r)| r[0] == Value::String(id.into()))
            .collect();
        rows.sort_by_key(|(offset, r)| match r[1] {
            Value::Int64(ts) => (std::cmp::Reverse(ts), std::cmp::Reverse(*offset)),
            _ => unreachable!(),
        });
        rows.into_iter().map(|(_, r)| r.clone()).collect()
    }

    fn count_tag(&self, tag: &str) -> u64 {
        self.rows
            .iter()
            .filter(|(_, r)| r[3] == Value::String(tag.into()))
            .count() as u64
    }
}

const SEGMENT: u64 = 600;

fn check(table: &Table, model: &Model) -> Result<(), TestCaseError> {
    for id in 0..8 {
        let id = format!("id{id}");
        let (_, rows) = scan(table, &id, 1000);
        let got: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        prop_assert_eq!(got, model.by_id(&id), "rows of {}", id);
    }
    for tag in 0..3 {
        let tag = format!("tag{tag}");
        prop_assert_eq!(
            table.count("tag", &key(&tag)).unwrap().1,
            model.count_tag(&tag)
        );
    }
    // Read in small pages by cursor: every row once.
    let mut paged: Vec<Vec<Value>> = read_all_pages(table, 7, false)
        .into_iter()
        .map(|r| r.values)
        .collect();
    let mut expected: Vec<Vec<Value>> = model.rows.iter().map(|(_, r)| r.clone()).collect();
    paged.sort_by_key(|r| format!("{r:?}"));
    expected.sort_by_key(|r| format!("{r:?}"));
    prop_assert_eq!(paged, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn table_agrees_with_model_across_reloads(ops in prop::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let mut table = create(&dir.path().join("1_0"), SEGMENT);
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Put { id, ts, v, tag } => {
                    let values = row(&format!("id{id}"), ts, v, &format!("tag{tag}"));
                    let version = table.put(&values).unwrap();
                    model.rows.push((version.offset, values));
                }
                Op::DeleteById(id) => {
                    let id = format!("id{id}");
                    let (_, deleted) = table.delete("", &key(&id)).unwrap();
                    let before = model.rows.len();
                    model.rows.retain(|(_, r)| r[0] != Value::String(id.clone()));
                    prop_assert_eq!(deleted as usize, before - model.rows.len());
                }
                Op::DeleteByTag(tag) => {
                    let tag = format!("tag{tag}");
                    table.delete("tag", &key(&tag)).unwrap();
                    model.rows.retain(|(_, r)| r[3] != Value::String(tag.clone()));
                }
                Op::Snapshot => {
                    table.make_snapshot().unwrap();
                }
                Op::Reopen => {
                    table = reopen(table, SEGMENT).0;
                }
            }
        }
        check(&table, &model)?;
        let (table, _) = reopen(table, SEGMENT);
        check(&table, &model)?;
    }
}
