//! The one symbol rule. A [`Symbol`] (an instrument's name, e.g. `BTCUSD`) is
//! built only by parsing, so code that holds one never checks it again: every
//! symbol that enters ohlcd (a query parameter, a posted trade, a
//! command-line argument, a tag value found in InfluxDB) is parsed here.
//!
//! A symbol is 1 to 32 characters of `A-Z a-z 0-9 . _ -`. Anything else could
//! not be used safely as a tag, in InfluxQL or in a URL. `:` is not a symbol
//! character: it joins the parts of a symbol named by several tags
//! ([`Symbol::parse_parts`], e.g. `binance:BTCUSDT`), and it separates the
//! exchange from the symbol in a chart's `EXCHANGE:SYMBOL`.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Most characters of a symbol, or of one part of it.
pub const MAX_SYMBOL_LEN: usize = 32;

/// What joins the parts of a symbol named by several tags.
pub const PART_SEPARATOR: char = ':';

/// An instrument's name, checked: see the module docs for the rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Symbol(String);

/// Why a text is not a symbol; the message names the rule broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSymbol {
    /// Empty, or longer than [`MAX_SYMBOL_LEN`].
    #[error("symbol must be 1 to {MAX_SYMBOL_LEN} characters, got {0}")]
    Length(usize),
    /// A character outside `A-Z a-z 0-9 . _ -`.
    #[error("symbol {text:?} has character {bad:?}; allowed are letters, digits and . _ -")]
    Character {
        /// The text given.
        text: String,
        /// Its first character that is not allowed.
        bad: char,
    },
    /// Not as many `:`-separated parts as the symbol's tags.
    #[error("symbol {text:?} has {got} parts separated by ':', expected {expected}")]
    Parts {
        /// The text given.
        text: String,
        /// Parts expected (the tags that name an instrument).
        expected: usize,
        /// Parts found.
        got: usize,
    },
}

impl Symbol {
    /// Parses a symbol named by one tag: the rule of the module docs.
    pub fn parse(text: &str) -> Result<Symbol, BadSymbol> {
        check_part(text)?;
        Ok(Symbol(text.to_string()))
    }

    /// Parses a symbol named by `parts` tags, their values joined by
    /// [`PART_SEPARATOR`] (`binance:BTCUSDT` for two); each part follows the
    /// one-tag rule. With one part this is [`Symbol::parse`].
    pub fn parse_parts(text: &str, parts: usize) -> Result<Symbol, BadSymbol> {
        if parts <= 1 {
            return Symbol::parse(text);
        }
        let got = text.split(PART_SEPARATOR).count();
        if got != parts {
            return Err(BadSymbol::Parts {
                text: text.to_string(),
                expected: parts,
                got,
            });
        }
        text.split(PART_SEPARATOR).try_for_each(check_part)?;
        Ok(Symbol(text.to_string()))
    }

    /// The symbol's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag values it is made of, in order (one for a one-tag symbol).
    pub fn parts(&self) -> impl Iterator<Item = &str> {
        self.0.split(PART_SEPARATOR)
    }

    /// The symbol's text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// The one-tag rule: 1 to [`MAX_SYMBOL_LEN`] characters of `A-Z a-z 0-9 . _ -`.
fn check_part(text: &str) -> Result<(), BadSymbol> {
    if text.is_empty() || text.len() > MAX_SYMBOL_LEN {
        return Err(BadSymbol::Length(text.chars().count()));
    }
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(bad) => Err(BadSymbol::Character {
            text: text.to_string(),
            bad,
        }),
        None => Ok(()),
    }
}

impl FromStr for Symbol {
    type Err = BadSymbol;

    fn from_str(s: &str) -> Result<Symbol, BadSymbol> {
        Symbol::parse(s)
    }
}

impl TryFrom<String> for Symbol {
    type Error = BadSymbol;

    fn try_from(s: String) -> Result<Symbol, BadSymbol> {
        check_part(&s)?;
        Ok(Symbol(s))
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

/// A symbol hashes and compares as its text, so maps keyed by symbols are
/// looked up by `&str`.
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

    #[test]
    fn letters_digits_dot_underscore_and_dash_make_a_symbol() {
        for ok in ["BTCUSD", "btc-usd", "X.1_a", "A", &"Z".repeat(32)] {
            assert_eq!(Symbol::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_rule_it_breaks() {
        let err = |s: &str| Symbol::parse(s).unwrap_err().to_string();
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
            assert!(Symbol::parse(bad).is_err(), "{bad:?}");
        }
        // ':' joins the parts of a multi-tag symbol, never one part.
        assert!(err("ohlcd:FAKE").contains("':'"), "{}", err("ohlcd:FAKE"));
    }

    #[test]
    fn a_symbol_of_several_tags_has_exactly_that_many_valid_parts() {
        let two = Symbol::parse_parts("binance:BTCUSDT", 2).unwrap();
        assert_eq!(two.parts().collect::<Vec<_>>(), ["binance", "BTCUSDT"]);
        assert_eq!(
            Symbol::parse_parts("BTCUSDT", 2).unwrap_err(),
            BadSymbol::Parts {
                text: "BTCUSDT".into(),
                expected: 2,
                got: 1
            }
        );
        assert!(Symbol::parse_parts("a:b:c", 2).is_err());
        assert!(Symbol::parse_parts("binance:BTC USDT", 2).is_err());
        assert!(Symbol::parse_parts(":BTCUSDT", 2).is_err());
        assert_eq!(
            Symbol::parse_parts("BTCUSD", 1),
            Symbol::parse("BTCUSD"),
            "one part is the one-tag rule"
        );
    }

    #[test]
    fn a_symbol_is_read_back_from_json_only_if_it_parses() {
        let s: Symbol = serde_json::from_str("\"BTCUSD\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"BTCUSD\"");
        assert!(serde_json::from_str::<Symbol>("\"BTC USD\"").is_err());
    }
}
