//! The pieces every query is built from and every JSON answer is read
//! with: quoting of literals and identifiers, a condition ready to be joined
//! with `AND`, the rows of a result's series. Pure; the queries themselves
//! are sent from [`super::database`], [`super::edges`], [`super::trades`] and
//! [`super::candles`], with the names of the client's
//! [`Layout`](crate::schema::layout::Layout) taken through [`super::layout`].

use serde_json::Value;

/// Escapes a string for an InfluxQL single-quoted literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Escapes an identifier for InfluxQL double quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `cond` ready to be joined to others with `AND`: in parentheses when it is
/// a disjunction.
pub(super) fn grouped(cond: &str) -> std::borrow::Cow<'_, str> {
    if cond.contains(" OR ") {
        format!("({cond})").into()
    } else {
        cond.into()
    }
}

/// `(name, row)` of every series of a `GROUP BY` over `tags`: the name built
/// from the series' tags (after `exchange`, when the measurement names one).
pub(super) fn tagged_values<'v>(
    v: &'v Value,
    exchange: Option<&'v str>,
    tags: &'v [String],
) -> impl Iterator<Item = (String, &'v Vec<Value>)> {
    v.get("series")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(move |s| {
            let series_tags = s.get("tags")?;
            let mut name = String::new();
            if let Some(exchange) = exchange {
                name.push_str(exchange);
                name.push(crate::symbol::NAME_SEPARATOR);
            }
            for (k, tag) in tags.iter().enumerate() {
                if k > 0 {
                    name.push(crate::symbol::NAME_SEPARATOR);
                }
                name.push_str(series_tags.get(tag)?.as_str()?);
            }
            let values = s.get("values")?.as_array()?;
            Some(
                values
                    .iter()
                    .filter_map(Value::as_array)
                    .map(move |row| (name.clone(), row)),
            )
        })
        .flatten()
}

/// Rows of every series in one statement's JSON result.
pub(super) fn series_values(v: &Value) -> impl Iterator<Item = &Vec<Value>> {
    v.get("series")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("values").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_array)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disjunction_is_parenthesized_before_it_is_joined() {
        assert_eq!(grouped(r#""symbol" = 'A'"#), r#""symbol" = 'A'"#);
        assert_eq!(
            grouped(r#"("a" = 'x' AND "b" = 'y') OR ("a" = 'z' AND "b" = 'y')"#),
            r#"(("a" = 'x' AND "b" = 'y') OR ("a" = 'z' AND "b" = 'y'))"#
        );
    }

    #[test]
    fn literals_and_identifiers_cannot_break_out_of_their_quotes() {
        assert_eq!(quote_literal("BTC'USD"), r"'BTC\'USD'");
        assert_eq!(quote_literal(r"a\' OR 1=1"), r"'a\\\' OR 1=1'");
        assert_eq!(quote_ident("my\"db"), r#""my\"db""#);
    }
}
