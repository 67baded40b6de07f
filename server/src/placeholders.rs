//! `?` placeholders, as ADBC, JDBC and ODBC clients write them, numbered for DataFusion.
//!
//! DataFusion binds `$1`, `$2`, …; a bare `?` fails with "Failed to parse placeholder id". Each
//! bare `?` becomes `$1`, `$2`, … in order of appearance, and `?N` becomes `$N`. Only real
//! placeholder tokens are rewritten: the text is split by DataFusion's own SQL tokenizer (the
//! generic dialect the server plans with), so a `?` inside a string literal, a quoted identifier
//! or a comment stays as it is. Mixing bare `?` with numbered placeholders (`$1` or `?1`) is
//! refused: which value goes where would be a guess.

use std::borrow::Cow;

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// `sql` with its `?` placeholders numbered (`Cow::Borrowed` when it has none); `Err` with a
/// message for the client when bare and numbered placeholders are mixed.
pub fn number_question_marks(sql: &str) -> Result<Cow<'_, str>, String> {
    if !sql.contains('?') {
        return Ok(Cow::Borrowed(sql));
    }
    // A statement the tokenizer cannot split is left to the planner, whose error says more.
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        return Ok(Cow::Borrowed(sql));
    };
    let line_starts = line_starts(sql);
    let mut bare = Vec::new();
    let mut numbered = Vec::new();
    let mut question_marks = Vec::new();
    for token in &tokens {
        let Token::Placeholder(text) = &token.token else {
            continue;
        };
        if text == "?" {
            bare.push(token.span.start);
        } else {
            numbered.push(text.clone());
        }
        if text.starts_with('?') {
            question_marks.push((token.span.start, text.clone()));
        }
    }
    if question_marks.is_empty() {
        return Ok(Cow::Borrowed(sql));
    }
    if !bare.is_empty() && !numbered.is_empty() {
        let at = bare[0];
        return Err(format!(
            "the statement mixes `?` placeholders (the first at line {}, column {}) with numbered \
             ones ({}): use only `?` (bound in order) or only `$1`, `$2`, …",
            at.line,
            at.column,
            numbered.join(", ")
        ));
    }
    let mut out = String::with_capacity(sql.len() + question_marks.len());
    let mut copied = 0;
    let mut next = 0;
    for (at, text) in question_marks {
        let Some(offset) = byte_offset(sql, &line_starts, at.line, at.column) else {
            return Ok(Cow::Borrowed(sql));
        };
        out.push_str(&sql[copied..offset]);
        if text == "?" {
            next += 1;
            out.push_str(&format!("${next}"));
        } else {
            out.push('$');
            out.push_str(&text[1..]);
        }
        copied = offset + text.len();
    }
    out.push_str(&sql[copied..]);
    Ok(Cow::Owned(out))
}

/// Byte offsets where each line of `sql` starts.
fn line_starts(sql: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// The byte offset of a tokenizer location (1-based line, 1-based column in characters).
fn byte_offset(sql: &str, line_starts: &[usize], line: u64, column: u64) -> Option<usize> {
    let start = *line_starts.get(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let column = usize::try_from(column).ok()?.checked_sub(1)?;
    sql[start..]
        .char_indices()
        .nth(column)
        .map(|(i, _)| start + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(sql: &str) -> String {
        number_question_marks(sql).expect("numbered").into_owned()
    }

    #[test]
    fn bare_question_marks_are_numbered_in_order() {
        assert_eq!(
            numbered("SELECT * FROM t WHERE a = ? AND b IN (?, ?)"),
            "SELECT * FROM t WHERE a = $1 AND b IN ($2, $3)"
        );
    }

    #[test]
    fn strings_identifiers_and_comments_keep_their_question_marks() {
        let sql = "SELECT 'a?''?b', \"c?\" -- d?\nFROM t /* e? */ WHERE x = ? AND y LIKE '%?%'";
        assert_eq!(
            numbered(sql),
            "SELECT 'a?''?b', \"c?\" -- d?\nFROM t /* e? */ WHERE x = $1 AND y LIKE '%?%'"
        );
    }

    #[test]
    fn positions_count_characters_not_bytes_across_lines() {
        assert_eq!(
            numbered("SELECT 'é✓' AS ü,\n  ? AS x, '?' AS y, ?"),
            "SELECT 'é✓' AS ü,\n  $1 AS x, '?' AS y, $2"
        );
    }

    #[test]
    fn numbered_question_marks_become_dollars_and_the_rest_is_untouched() {
        assert_eq!(numbered("SELECT ?2, ?1"), "SELECT $2, $1");
        assert_eq!(numbered("SELECT $1, '?'"), "SELECT $1, '?'");
        assert_eq!(numbered("SELECT 1"), "SELECT 1");
        // Unterminated string: left to the planner, whose error names it.
        assert_eq!(numbered("SELECT '?"), "SELECT '?");
    }

    #[test]
    fn mixing_styles_is_refused_with_where() {
        let err = number_question_marks("SELECT $1,\n ?").expect_err("mixed");
        assert!(err.contains("line 2, column 2"), "{err}");
        assert!(err.contains("$1"), "{err}");
    }
}
