//! Scalar functions whose output size a query chooses (`repeat('x', 1000000000)`,
//! `lpad(s, 1e9)`, `rpad`) are wrapped so one call cannot build more
//! than [`MAX_FUNCTION_OUTPUT_BYTES`]: such an allocation happens inside one poll of the
//! query, so neither the memory pool (it does not see function results) nor the query timeout
//! (it waits for the poll) would stop it. Found by the `sql` fuzz target.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result, exec_err};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// Most bytes one call of a size-choosing function may produce (`--max-function-output-bytes`).
/// Process-wide: the server sets it once at start.
pub static MAX_FUNCTION_OUTPUT_BYTES: AtomicU64 = AtomicU64::new(DEFAULT_MAX_FUNCTION_OUTPUT_BYTES);
pub const DEFAULT_MAX_FUNCTION_OUTPUT_BYTES: u64 = 64 << 20;

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Cost {
    /// `repeat(s, n)`: len(s) × n.
    Repeat,
    /// `lpad(s, n …)`, `rpad`: n characters, up to 4 bytes each.
    Pad,
}

const WRAPPED: &[(&str, Cost)] = &[
    ("repeat", Cost::Repeat),
    ("lpad", Cost::Pad),
    ("rpad", Cost::Pad),
];
// The nested (array) functions, `array_repeat` and `range` among them, are not built in
// (DataFusion's `nested_expressions` feature is off); wrap them here if that changes.

/// Replaces each of [`WRAPPED`] the session has with its bounded version.
pub fn bound_functions(ctx: &SessionContext) {
    for &(name, cost) in WRAPPED {
        if let Ok(inner) = ctx.udf(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded { inner, cost }));
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    cost: Cost,
}

fn ints(value: &ColumnarValue, rows: usize) -> Option<Vec<i64>> {
    let array = value.to_array(rows).ok()?;
    let array = cast(&array, &DataType::Int64).ok()?;
    let ints = array.as_primitive::<Int64Type>();
    Some(
        (0..ints.len())
            .map(|i| if ints.is_null(i) { 0 } else { ints.value(i) })
            .collect(),
    )
}

fn byte_lengths(value: &ColumnarValue, rows: usize) -> Option<Vec<i64>> {
    let array: ArrayRef = value.to_array(rows).ok()?;
    let array = cast(&array, &DataType::LargeUtf8).ok()?;
    let strings = array.as_string::<i64>();
    Some(
        (0..strings.len())
            .map(|i| {
                if strings.is_null(i) {
                    0
                } else {
                    strings.value(i).len() as i64
                }
            })
            .collect(),
    )
}

impl Bounded {
    /// Bytes the call would produce (saturating), or `None` when it cannot be told.
    fn output_bytes(&self, args: &[ColumnarValue], rows: usize) -> Option<u64> {
        let sum = |per_row: &mut dyn Iterator<Item = u128>| -> u64 {
            u64::try_from(per_row.sum::<u128>()).unwrap_or(u64::MAX)
        };
        let non_negative = |v: i64| v.max(0) as u128;
        match self.cost {
            Cost::Repeat => {
                let (lens, counts) = (
                    byte_lengths(args.first()?, rows)?,
                    ints(args.get(1)?, rows)?,
                );
                Some(sum(&mut lens
                    .iter()
                    .zip(&counts)
                    .map(|(&l, &n)| non_negative(l) * non_negative(n))))
            }
            Cost::Pad => Some(sum(&mut ints(args.get(1)?, rows)?
                .into_iter()
                .map(|n| 4 * non_negative(n)))),
        }
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let limit = MAX_FUNCTION_OUTPUT_BYTES.load(Ordering::Relaxed);
        if let Some(bytes) = self.output_bytes(&args.args, args.number_rows)
            && bytes > limit
        {
            return exec_err!(
                "{}() would produce {bytes} bytes, over the limit of {limit} bytes per call (--max-function-output-bytes)",
                self.name()
            );
        }
        self.inner.invoke_with_args(args)
    }
}
