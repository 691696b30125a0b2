//! The one symbol rule. An instrument's name is a [`Symbol`], built only by
//! parsing it against the [`NameForm`] of the trade schema, so code that
//! holds one never checks it again: a symbol that enters ohlcd (a query
//! parameter, a command-line argument) is parsed here, and a posted trade's
//! symbol is checked by the same rule ([`NameForm::check`]).
//!
//! Each part of a name is 1 to 32 characters of `A-Z a-z 0-9 . _ -`, so a
//! name is safe as a tag value, in InfluxQL, in SQL and in a URL. `:` is
//! never part of one: it joins the parts of a name whose instrument several
//! tags identify (`binance:BTCUSDT` for tags `exchange`, `symbol`), and it
//! separates the exchange from the symbol in a chart's `EXCHANGE:SYMBOL`.
//!
//! Pure: nothing of the project below it.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::Serialize;

/// Most characters of one part of a name.
pub const MAX_PART_LEN: usize = 32;

/// What joins the parts of an instrument's name.
pub const NAME_SEPARATOR: char = ':';

/// How instruments are named: the parts of a name, joined with `:` (`symbol`;
/// `exchange:symbol` for two symbol tags; `EXCHANGE:symbol` where the
/// exchange comes from the measurement name). It holds the symbol rule (see
/// the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameForm {
    parts: Vec<String>,
}

impl Default for NameForm {
    /// ohlcd's own schema: one part, the `symbol` tag.
    fn default() -> NameForm {
        NameForm::new(vec!["symbol".into()])
    }
}

impl NameForm {
    /// A form of these parts, labelled as messages name them (`exchange`,
    /// `symbol`); at least one.
    pub fn new(parts: Vec<String>) -> NameForm {
        assert!(!parts.is_empty(), "a name has at least one part");
        NameForm { parts }
    }

    /// How many parts a name has.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// Checks a name against the symbol rule and this form, naming what is
    /// wrong.
    pub fn check(&self, name: &str) -> Result<(), String> {
        if self.parts.len() == 1 {
            return check_part("symbol", name);
        }
        let given = name.split(NAME_SEPARATOR).count();
        if given != self.parts.len() {
            return Err(format!(
                "symbol {name:?} is not of the form {self}: instruments here are named by {} parts joined by ':', got {given}",
                self.parts.len()
            ));
        }
        for (part, label) in name.split(NAME_SEPARATOR).zip(&self.parts) {
            check_part(&format!("symbol {name:?}: {label}"), part)?;
        }
        Ok(())
    }

    /// `name` as a [`Symbol`] of this form, or why it is not one.
    pub fn parse(&self, name: &str) -> Result<Symbol, BadSymbol> {
        self.check(name).map_err(BadSymbol)?;
        Ok(Symbol(name.to_string()))
    }
}

impl fmt::Display for NameForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts.join(":"))
    }
}

/// One part of a name: 1 to [`MAX_PART_LEN`] characters of `A-Z a-z 0-9 . _ -`.
fn check_part(what: &str, part: &str) -> Result<(), String> {
    if part.is_empty() || part.len() > MAX_PART_LEN {
        return Err(format!(
            "{what} must be 1 to {MAX_PART_LEN} characters, got {}",
            part.chars().count()
        ));
    }
    if let Some(bad) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{what} {part:?} has character {bad:?}; allowed are letters, digits and . _ -"
        ));
    }
    Ok(())
}

/// Whether `part` follows the symbol rule (see [`NameForm`]).
pub fn is_name_part(part: &str) -> bool {
    check_part("", part).is_ok()
}

/// An instrument's name, checked against a [`NameForm`]: see the module docs.
/// It hashes and compares as its text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Symbol(String);

/// Why a text is not a symbol of the form asked; the message names the rule
/// broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSymbol(String);

impl Symbol {
    /// Parses `name` as a symbol of `form` (see [`NameForm::parse`]).
    pub fn parse(name: &str, form: &NameForm) -> Result<Symbol, BadSymbol> {
        form.parse(name)
    }

    /// The symbol's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag values it is made of, in order (one for a one-part name).
    pub fn parts(&self) -> impl Iterator<Item = &str> {
        self.0.split(NAME_SEPARATOR)
    }

    /// The symbol's text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<Symbol> for String {
    fn from(s: Symbol) -> String {
        s.0
    }
}

impl Deref for Symbol {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Symbol {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by symbols are looked up by `&str`.
impl Borrow<str> for Symbol {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Symbol {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Symbol {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> NameForm {
        NameForm::new(vec!["exchange".into(), "symbol".into()])
    }

    #[test]
    fn letters_digits_dot_underscore_and_dash_make_a_symbol() {
        for ok in ["BTCUSD", "btc-usd", "X.1_a", "A", &"Z".repeat(32)] {
            assert_eq!(
                Symbol::parse(ok, &NameForm::default()).unwrap().as_str(),
                ok
            );
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_rule_it_breaks() {
        let err = |s: &str| {
            Symbol::parse(s, &NameForm::default())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err(""), "symbol must be 1 to 32 characters, got 0");
        assert_eq!(
            err(&"Z".repeat(33)),
            "symbol must be 1 to 32 characters, got 33"
        );
        assert_eq!(
            err("BTC USD"),
            "symbol \"BTC USD\" has character ' '; allowed are letters, digits and . _ -"
        );
        for bad in ["x'; DROP", "a\"b", "a/b", "a,b", "a=b", "é", "a\nb"] {
            assert!(Symbol::parse(bad, &NameForm::default()).is_err(), "{bad:?}");
        }
        // ':' joins the parts of a multi-part name, never one part.
        assert!(err("ohlcd:FAKE").contains("':'"), "{}", err("ohlcd:FAKE"));
    }

    #[test]
    fn a_name_of_several_tags_has_exactly_that_many_valid_parts() {
        let s = Symbol::parse("binance:BTCUSDT", &two()).unwrap();
        assert_eq!(s.parts().collect::<Vec<_>>(), ["binance", "BTCUSDT"]);
        let why = Symbol::parse("BTCUSDT", &two()).unwrap_err().to_string();
        assert!(
            why.contains("exchange:symbol") && why.contains("got 1"),
            "{why}"
        );
        assert!(Symbol::parse("a:b:c", &two()).is_err());
        let why = Symbol::parse("binance:BTC USDT", &two())
            .unwrap_err()
            .to_string();
        assert!(
            why.contains(": symbol \"BTC USDT\" has character ' '"),
            "{why}"
        );
        assert!(Symbol::parse(":BTCUSDT", &two()).is_err());
    }

    #[test]
    fn a_symbol_is_written_to_json_as_its_text() {
        let s = Symbol::parse("binance:BTCUSDT", &two()).unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"binance:BTCUSDT\"");
    }

    #[test]
    fn a_symbol_reads_as_its_text_through_every_view() {
        assert_eq!((NameForm::default().parts(), two().parts()), (1, 2));
        assert!(is_name_part("BTC-USD.P_1"));
        assert!(!is_name_part("binance:BTCUSDT") && !is_name_part(""));
        let s = two().parse("binance:BTCUSDT").unwrap();
        assert_eq!(s.parts().collect::<Vec<_>>(), ["binance", "BTCUSDT"]);
        assert_eq!(&*s, "binance:BTCUSDT");
        assert_eq!(AsRef::<str>::as_ref(&s), "binance:BTCUSDT");
        assert_eq!(s.to_string(), "binance:BTCUSDT");
        assert!(s == *"binance:BTCUSDT" && s != *"binance:ETHUSDT");
        assert!(s == "binance:BTCUSDT" && s != "binance:ETHUSDT");
        let by_symbol = std::collections::HashMap::from([(s.clone(), 7)]);
        assert_eq!(by_symbol.get("binance:BTCUSDT"), Some(&7));
        assert_eq!(s.into_string(), "binance:BTCUSDT");
    }
}
