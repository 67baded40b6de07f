//! What Flight SQL clients ask about the server: SQL info and XDBC type info.

use std::sync::LazyLock;

use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlSupportedCaseSensitivity,
    SqlSupportedTransaction, SupportedSqlGrammar, XdbcDataType,
};

pub static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Imprint");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    b.append(SqlInfo::SqlKeywords, KEYWORDS);
    b.append(SqlInfo::SqlNumericFunctions, NUMERIC_FUNCTIONS);
    b.append(SqlInfo::SqlStringFunctions, STRING_FUNCTIONS);
    b.append(
        SqlInfo::SqlSystemFunctions,
        &["current_date", "current_time", "now", "version"][..],
    );
    b.append(SqlInfo::SqlDatetimeFunctions, DATETIME_FUNCTIONS);
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(SqlInfo::SqlSupportedGroupBy, 3i32); // unrelated | beyond select
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(
        SqlInfo::SqlSupportedGrammar,
        SupportedSqlGrammar::SqlCoreGrammar as i32 | SupportedSqlGrammar::SqlMinimumGrammar as i32,
    );
    b.append(SqlInfo::SqlAnsi92SupportedLevel, 1i32); // entry level
    b.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    b.append(SqlInfo::SqlOuterJoinsSupportLevel, 2i32); // full outer joins
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSchemasSupportedActions, 0i32);
    b.append(SqlInfo::SqlCatalogsSupportedActions, 0i32);
    b.append(SqlInfo::SqlSupportedPositionedCommands, 0i32);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(SqlInfo::SqlSupportedSubqueries, 15i32); // comparisons, EXISTS, IN, quantified
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(SqlInfo::SqlSupportedUnions, 3i32); // UNION, UNION ALL
    b.append(SqlInfo::SqlMaxBinaryLiteralLength, 0i64);
    b.append(SqlInfo::SqlMaxCharLiteralLength, 0i64);
    b.append(SqlInfo::SqlMaxColumnNameLength, 0i64);
    b.append(SqlInfo::SqlMaxColumnsInGroupBy, 0i64);
    b.append(SqlInfo::SqlMaxColumnsInIndex, 0i64);
    b.append(SqlInfo::SqlMaxColumnsInOrderBy, 0i64);
    b.append(SqlInfo::SqlMaxColumnsInSelect, 0i64);
    b.append(SqlInfo::SqlMaxColumnsInTable, 0i64);
    b.append(SqlInfo::SqlMaxConnections, 0i64);
    b.append(SqlInfo::SqlMaxCursorNameLength, 0i64);
    b.append(SqlInfo::SqlMaxIndexLength, 0i64);
    b.append(SqlInfo::SqlDbSchemaNameLength, 0i64);
    b.append(SqlInfo::SqlMaxProcedureNameLength, 0i64);
    b.append(SqlInfo::SqlMaxCatalogNameLength, 0i64);
    b.append(SqlInfo::SqlMaxRowSize, 0i64);
    b.append(SqlInfo::SqlMaxRowSizeIncludesBlobs, true);
    b.append(SqlInfo::SqlMaxStatementLength, 0i64);
    b.append(SqlInfo::SqlMaxStatements, 0i64);
    b.append(SqlInfo::SqlMaxTableNameLength, 0i64);
    b.append(SqlInfo::SqlMaxTablesInSelect, 0i64);
    b.append(SqlInfo::SqlMaxUsernameLength, 0i64);
    b.append(SqlInfo::SqlDefaultTransactionIsolation, 0i64);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlSupportedTransactionsIsolationLevels, 0i32);
    b.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, false);
    b.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, true);
    b.append(SqlInfo::SqlSupportedResultSetTypes, 0i32);
    b.append(SqlInfo::SqlBatchUpdatesSupported, false);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build().expect("a valid SQL info set")
});

const KEYWORDS: &[&str] = &[
    "absolute",
    "action",
    "add",
    "all",
    "allocate",
    "alter",
    "and",
    "any",
    "are",
    "as",
    "asc",
    "between",
    "by",
    "case",
    "cast",
    "create",
    "cross",
    "current",
    "date",
    "delete",
    "desc",
    "distinct",
    "drop",
    "else",
    "end",
    "except",
    "exists",
    "explain",
    "false",
    "from",
    "full",
    "group",
    "having",
    "in",
    "inner",
    "insert",
    "intersect",
    "interval",
    "into",
    "is",
    "join",
    "left",
    "like",
    "limit",
    "not",
    "null",
    "offset",
    "on",
    "or",
    "order",
    "outer",
    "over",
    "partition",
    "right",
    "select",
    "show",
    "table",
    "then",
    "timestamp",
    "true",
    "union",
    "update",
    "using",
    "values",
    "when",
    "where",
    "with",
];
const NUMERIC_FUNCTIONS: &[&str] = &[
    "abs", "acos", "asin", "atan", "atan2", "ceil", "cos", "exp", "floor", "ln", "log", "log10",
    "log2", "pi", "power", "random", "round", "signum", "sin", "sqrt", "tan", "trunc",
];
const STRING_FUNCTIONS: &[&str] = &[
    "ascii",
    "btrim",
    "character_length",
    "concat",
    "concat_ws",
    "initcap",
    "left",
    "length",
    "lower",
    "lpad",
    "ltrim",
    "octet_length",
    "regexp_like",
    "regexp_match",
    "regexp_replace",
    "repeat",
    "replace",
    "reverse",
    "right",
    "rpad",
    "rtrim",
    "split_part",
    "starts_with",
    "strpos",
    "substr",
    "translate",
    "trim",
    "upper",
];
const DATETIME_FUNCTIONS: &[&str] = &[
    "current_date",
    "current_time",
    "date_bin",
    "date_part",
    "date_trunc",
    "datepart",
    "datetrunc",
    "from_unixtime",
    "now",
    "to_timestamp",
    "to_timestamp_micros",
    "to_timestamp_millis",
    "to_timestamp_seconds",
];

fn type_info(
    name: &str,
    data_type: XdbcDataType,
    column_size: Option<i32>,
    radix: Option<i32>,
) -> XdbcTypeInfo {
    let is_text = matches!(data_type, XdbcDataType::XdbcVarchar);
    XdbcTypeInfo {
        type_name: name.into(),
        data_type,
        column_size,
        literal_prefix: is_text.then(|| "'".into()),
        literal_suffix: is_text.then(|| "'".into()),
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: is_text,
        searchable: Searchable::Full,
        unsigned_attribute: radix.map(|_| name.contains("UNSIGNED")),
        fixed_prec_scale: false,
        auto_increment: Some(false),
        local_type_name: Some(name.into()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type: data_type,
        datetime_subcode: None,
        num_prec_radix: radix,
        interval_precision: None,
    }
}

/// The SQL types Imprint's tables and results use.
pub static XDBC_TYPES: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    let mut b = XdbcTypeInfoDataBuilder::new();
    b.append(type_info("BOOLEAN", XdbcDataType::XdbcBit, Some(1), None));
    b.append(type_info(
        "TINYINT",
        XdbcDataType::XdbcTinyint,
        Some(8),
        Some(2),
    ));
    b.append(type_info(
        "SMALLINT",
        XdbcDataType::XdbcSmallint,
        Some(16),
        Some(2),
    ));
    b.append(type_info(
        "INTEGER",
        XdbcDataType::XdbcInteger,
        Some(32),
        Some(2),
    ));
    b.append(type_info(
        "BIGINT",
        XdbcDataType::XdbcBigint,
        Some(64),
        Some(2),
    ));
    b.append(type_info(
        "BIGINT UNSIGNED",
        XdbcDataType::XdbcBigint,
        Some(64),
        Some(2),
    ));
    b.append(type_info("REAL", XdbcDataType::XdbcReal, Some(24), Some(2)));
    b.append(type_info(
        "DOUBLE",
        XdbcDataType::XdbcDouble,
        Some(53),
        Some(2),
    ));
    b.append(type_info("DATE", XdbcDataType::XdbcDate, None, None));
    b.append(type_info(
        "TIMESTAMP",
        XdbcDataType::XdbcTimestamp,
        None,
        None,
    ));
    b.append(type_info("VARCHAR", XdbcDataType::XdbcVarchar, None, None));
    b.build().expect("valid type info")
});
