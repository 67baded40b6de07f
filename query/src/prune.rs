//! Partition pruning: which (image, hour) partitions a query's filters can touch.
//!
//! Only simple conjuncts are understood — `image = '…'`, `image IN (…)`, and
//! comparisons or `BETWEEN` of `time` with constants — which is what profile and
//! time-range queries use. Anything else leaves the partition set unrestricted; the
//! filters are still applied to the rows, so pruning can only skip work, never
//! change a result.

use std::collections::BTreeSet;

use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use datafusion::scalar::ScalarValue;

use crate::layout::HOUR_MICROS;

/// What a scan may touch. `None` means unrestricted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionFilter {
    /// Image digests the rows can have.
    pub images: Option<BTreeSet<String>>,
    /// Inclusive bounds on `time`, microseconds since the epoch.
    pub time_min: Option<i64>,
    pub time_max: Option<i64>,
}

impl PartitionFilter {
    /// Everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Derives the filter from a scan's conjuncts.
    pub fn from_exprs(filters: &[Expr]) -> Self {
        let mut f = Self::default();
        for e in filters {
            f.narrow(e);
        }
        f
    }

    pub fn allows_image(&self, image: &str) -> bool {
        self.images.as_ref().is_none_or(|s| s.contains(image))
    }

    /// Whether rows with `time` in `[min, max]` may match.
    pub fn allows_times(&self, min: i64, max: i64) -> bool {
        self.time_min.is_none_or(|lo| max >= lo) && self.time_max.is_none_or(|hi| min <= hi)
    }

    /// Whether any row of the partition starting at `hour` may match.
    pub fn allows_partition(&self, image: &str, hour: i64) -> bool {
        self.allows_image(image) && self.allows_times(hour, hour + HOUR_MICROS - 1)
    }

    fn narrow(&mut self, e: &Expr) {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                self.narrow(left);
                self.narrow(right);
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if let (Some(col), Some(v)) = (column_name(left), literal(right)) {
                    self.narrow_cmp(col, *op, v);
                } else if let (Some(v), Some(col), Some(op)) =
                    (literal(left), column_name(right), op.swap())
                {
                    self.narrow_cmp(col, op, v);
                }
            }
            Expr::InList(list) if !list.negated && column_name(&list.expr) == Some("image") => {
                let values: Option<BTreeSet<String>> = list
                    .list
                    .iter()
                    .map(|v| literal(v).and_then(as_string))
                    .collect();
                if let Some(values) = values {
                    self.intersect_images(values);
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if column_name(expr) == Some("time") => {
                if let Some(lo) = literal(low).and_then(as_micros) {
                    self.raise_min(lo);
                }
                if let Some(hi) = literal(high).and_then(as_micros) {
                    self.lower_max(hi);
                }
            }
            _ => {}
        }
    }

    fn narrow_cmp(&mut self, col: &str, op: Operator, v: &ScalarValue) {
        match (col, op) {
            ("image", Operator::Eq) => {
                if let Some(s) = as_string(v) {
                    self.intersect_images(BTreeSet::from([s]));
                }
            }
            ("time", _) => {
                let Some(t) = as_micros(v) else { return };
                match op {
                    Operator::Eq => {
                        self.raise_min(t);
                        self.lower_max(t);
                    }
                    Operator::Gt => self.raise_min(t.saturating_add(1)),
                    Operator::GtEq => self.raise_min(t),
                    Operator::Lt => self.lower_max(t.saturating_sub(1)),
                    Operator::LtEq => self.lower_max(t),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn intersect_images(&mut self, values: BTreeSet<String>) {
        self.images = Some(match self.images.take() {
            Some(have) => have.intersection(&values).cloned().collect(),
            None => values,
        });
    }

    fn raise_min(&mut self, t: i64) {
        self.time_min = Some(self.time_min.map_or(t, |m| m.max(t)));
    }

    fn lower_max(&mut self, t: i64) {
        self.time_max = Some(self.time_max.map_or(t, |m| m.min(t)));
    }
}

fn column_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(c.name.as_str()),
        Expr::Cast(c) => column_name(&c.expr),
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

fn as_string(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s.clone()),
        ScalarValue::Dictionary(_, inner) => as_string(inner),
        _ => None,
    }
}

/// A timestamp literal in microseconds (rounding outward is not needed: the
/// bounds are only used to skip whole partitions and files).
fn as_micros(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampSecond(Some(s), _) => s.checked_mul(1_000_000),
        ScalarValue::TimestampMillisecond(Some(ms), _) => ms.checked_mul(1_000),
        ScalarValue::TimestampMicrosecond(Some(us), _) => Some(*us),
        ScalarValue::TimestampNanosecond(Some(ns), _) => Some(ns.div_euclid(1_000)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    #[test]
    fn image_and_time_conjuncts_narrow_the_filter() {
        let ts = |us| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(us),
                Some("UTC".into()),
            ))
        };
        let f = PartitionFilter::from_exprs(&[
            col("image").eq(lit("sha256:a")),
            col("time").gt_eq(ts(HOUR_MICROS)),
            col("time").lt(ts(3 * HOUR_MICROS)),
        ]);
        assert!(f.allows_partition("sha256:a", HOUR_MICROS));
        assert!(f.allows_partition("sha256:a", 2 * HOUR_MICROS));
        assert!(!f.allows_partition("sha256:a", 3 * HOUR_MICROS));
        assert!(!f.allows_partition("sha256:a", 0));
        assert!(!f.allows_partition("sha256:b", HOUR_MICROS));
    }

    #[test]
    fn unknown_filters_leave_everything() {
        let f = PartitionFilter::from_exprs(&[col("key").like(lit("/usr/%"))]);
        assert_eq!(f, PartitionFilter::all());
        let f = PartitionFilter::from_exprs(&[col("image")
            .eq(lit("sha256:a"))
            .or(col("image").eq(lit("sha256:b")))]);
        assert_eq!(f, PartitionFilter::all());
    }

    #[test]
    fn in_list_and_reversed_comparisons() {
        let f = PartitionFilter::from_exprs(&[
            col("image").in_list(vec![lit("sha256:a"), lit("sha256:b")], false),
            lit("sha256:b").eq(col("image")),
        ]);
        assert_eq!(f.images, Some(BTreeSet::from(["sha256:b".to_string()])));
    }
}
