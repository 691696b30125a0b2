//! Candle line protocol: small pure encoders, and the request bodies of a
//! write of many candles ([`super::write`] sends them).

use bytes::Bytes;

use super::InfluxError;
use super::layout::candle_head;
use crate::candle::{Candle, Resolution};
use crate::schema::layout::Layout;

/// Candles of one symbol at one resolution, to be written.
#[derive(Debug, Clone, Copy)]
pub struct CandleSet<'a> {
    /// Their resolution (measurement).
    pub resolution: Resolution,
    /// Their symbol (tag).
    pub symbol: &'a str,
    /// The candles.
    pub candles: &'a [Candle],
}

/// Request bodies of at most `lines` candle lines each, encoded one at a time
/// as they are asked for, each candle under its measurement and tags in
/// `layout`.
pub(super) struct Bodies<'s, 'a> {
    sets: &'s [CandleSet<'a>],
    layout: &'s Layout,
    set: usize,
    offset: usize,
    lines: usize,
    head: Option<(usize, Vec<u8>)>,
}

impl<'s, 'a> Bodies<'s, 'a> {
    pub(super) fn new(sets: &'s [CandleSet<'a>], layout: &'s Layout, lines: usize) -> Self {
        Bodies {
            sets,
            layout,
            set: 0,
            offset: 0,
            lines: lines.max(1),
            head: None,
        }
    }
}

impl Iterator for Bodies<'_, '_> {
    type Item = Result<Bytes, InfluxError>;

    fn next(&mut self) -> Option<Result<Bytes, InfluxError>> {
        let mut body = Vec::new();
        let mut room = self.lines;
        while room > 0 && self.set < self.sets.len() {
            let set = &self.sets[self.set];
            if set.candles.is_empty() {
                self.set += 1;
                continue;
            }
            if self.head.as_ref().is_none_or(|(i, _)| *i != self.set) {
                let Some(head) = candle_head(self.layout, set.resolution, set.symbol) else {
                    self.set = self.sets.len();
                    return Some(Err(InfluxError::Schema(format!(
                        "{:?} names no instrument of this schema ({}): its candles cannot be written",
                        set.symbol,
                        self.layout.name_form()
                    ))));
                };
                self.head = Some((self.set, head));
            }
            let head = &self.head.as_ref().expect("set above").1;
            let take = (set.candles.len() - self.offset).min(room);
            body.extend_from_slice(&encode_candle_lines(
                head,
                &set.candles[self.offset..self.offset + take],
            ));
            room -= take;
            self.offset += take;
            if self.offset == set.candles.len() {
                self.set += 1;
                self.offset = 0;
            }
        }
        (!body.is_empty()).then(|| Ok(body.into()))
    }
}

/// Line protocol for candles of one symbol and resolution in ohlcd's own
/// schema: `ohlc_1m,symbol=… open=…,high=…,…,trades=…i,buy_volume=… <ns>`.
pub fn encode_candles(res: Resolution, symbol: &str, candles: &[Candle]) -> Vec<u8> {
    let mut head = Vec::with_capacity(32);
    head.extend_from_slice(res.measurement().as_bytes());
    head.extend_from_slice(b",symbol=");
    push_tag_value(&mut head, symbol);
    encode_candle_lines(&head, candles)
}

/// Line protocol for candles under one line head (measurement and tags,
/// [`super::layout::candle_head`]): `head open=…,high=…,…,trades=…i,buy_volume=… <ns>`.
///
/// A backfill encodes every candle it computes, so this is written directly
/// (ryu, itoa) rather than through `influxdb_line_protocol::LineProtocolBuilder`,
/// whose `fmt`-based escaping and float formatting were a third of ohlcd's CPU
/// in a 5,000-symbol backfill (perf). A test checks both produce the same lines.
pub fn encode_candle_lines(head: &[u8], candles: &[Candle]) -> Vec<u8> {
    let mut out = Vec::with_capacity(candles.len() * (head.len() + 140));
    let mut floats = ryu::Buffer::new();
    let mut ints = itoa::Buffer::new();
    for c in candles {
        out.extend_from_slice(head);
        let fields = [
            (&b" open="[..], c.open),
            (b",high=", c.high),
            (b",low=", c.low),
            (b",close=", c.close),
            (b",volume=", c.volume),
            (b",quote_volume=", c.quote_volume),
        ];
        for (name, value) in fields {
            out.extend_from_slice(name);
            push_float(&mut out, &mut floats, value);
        }
        out.extend_from_slice(b",trades=");
        out.extend_from_slice(ints.format(c.trades).as_bytes());
        out.extend_from_slice(b"i,buy_volume=");
        push_float(&mut out, &mut floats, c.buy_volume);
        out.push(b' ');
        out.extend_from_slice(ints.format(c.start).as_bytes());
        out.push(b'\n');
    }
    out
}

/// Appends `value` with line-protocol tag escaping (comma, equals sign, space).
pub fn push_tag_value(out: &mut Vec<u8>, value: &str) {
    for b in value.bytes() {
        if matches!(b, b',' | b'=' | b' ') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// Appends the shortest text that reads back as `x`, as Rust's `Display`
/// writes it (`100.5`, `3`), which is what the line-protocol builder produces
/// too. Non-finite values (which InfluxDB refuses) are spelled as `Display`
/// spells them, so the write fails with InfluxDB's own message.
pub fn push_float(out: &mut Vec<u8>, buf: &mut ryu::Buffer, x: f64) {
    if !x.is_finite() {
        out.extend_from_slice(x.to_string().as_bytes());
        return;
    }
    let s = buf.format_finite(x);
    // ryu writes integral values as `3.0`; Display (and the builder) as `3`.
    out.extend_from_slice(s.strip_suffix(".0").unwrap_or(s).as_bytes());
}

/// Line protocol parsed line by line (tests: two encoders agree on the values
/// whatever the spelling of a float).
#[cfg(test)]
pub(crate) fn parsed_lines(text: &str) -> Vec<String> {
    influxdb_line_protocol::parse_lines(text)
        .map(|l| format!("{:?}", l.expect("valid line protocol")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_hold_at_most_the_batch_and_every_candle_exactly_once() {
        let c = |start| Candle {
            start,
            open: 1.0,
            high: 1.0,
            low: 1.0,
            close: 1.0,
            volume: 1.0,
            quote_volume: 1.0,
            trades: 1,
            buy_volume: 0.0,
        };
        let a: Vec<Candle> = (0..7).map(c).collect();
        let b: Vec<Candle> = (100..103).map(c).collect();
        let sets = [
            CandleSet {
                resolution: Resolution::M1,
                symbol: "A",
                candles: &a,
            },
            CandleSet {
                resolution: Resolution::M1,
                symbol: "B",
                candles: &[],
            },
            CandleSet {
                resolution: Resolution::M5,
                symbol: "B",
                candles: &b,
            },
        ];
        let layout = Layout::default();
        let bodies: Vec<String> = Bodies::new(&sets, &layout, 4)
            .map(|b| String::from_utf8(b.unwrap().to_vec()).unwrap())
            .collect();
        let counts: Vec<usize> = bodies.iter().map(|b| b.lines().count()).collect();
        assert_eq!(counts, vec![4, 4, 2]);
        let all: Vec<&str> = bodies.iter().flat_map(|b| b.lines()).collect();
        assert_eq!(all.len(), 10);
        assert!(all[7].starts_with("ohlc_5m,symbol=B ") && all[7].ends_with(" 100"));
    }

    #[test]
    fn candles_encode_as_one_line_each_with_integer_trade_count() {
        let c = Candle {
            start: 60_000_000_000,
            open: 1.5,
            high: 2.0,
            low: 1.0,
            close: 1.25,
            volume: 3.0,
            quote_volume: 4.5,
            trades: 7,
            buy_volume: 0.1,
        };
        let lp = String::from_utf8(encode_candles(Resolution::M5, "BTC-USD", &[c, c])).unwrap();
        let first = lp.lines().next().unwrap();
        assert_eq!(
            first,
            "ohlc_5m,symbol=BTC-USD open=1.5,high=2,low=1,close=1.25,volume=3,quote_volume=4.5,trades=7i,buy_volume=0.1 60000000000"
        );
        assert_eq!(lp.lines().count(), 2);
    }

    #[test]
    fn the_direct_encoder_writes_what_the_line_protocol_builder_writes() {
        use influxdb_line_protocol::LineProtocolBuilder;
        let values = [0.1, 1.0, 3.0, 100.5, 1e-7, 123456789.123, 42000.01, 0.0];
        let candles: Vec<Candle> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Candle {
                start: 1_700_000_040_000_000_000 + i as i64 * 60_000_000_000,
                open: *v,
                high: v * 2.0,
                low: v / 3.0,
                close: v + 0.25,
                volume: v * 7.0,
                quote_volume: v * v,
                trades: i as i64 * 1_000_003,
                buy_volume: v / 7.0,
            })
            .collect();
        for (res, symbol) in [
            (Resolution::M1, "BTC-USD:X.1_a"),
            (Resolution::D1, "a,b=c d"),
        ] {
            let mut lp = LineProtocolBuilder::new();
            for c in &candles {
                lp = lp
                    .measurement(res.measurement())
                    .tag("symbol", symbol)
                    .field("open", c.open)
                    .field("high", c.high)
                    .field("low", c.low)
                    .field("close", c.close)
                    .field("volume", c.volume)
                    .field("quote_volume", c.quote_volume)
                    .field("trades", c.trades)
                    .field("buy_volume", c.buy_volume)
                    .timestamp(c.start)
                    .close_line();
            }
            let ours = String::from_utf8(encode_candles(res, symbol, &candles)).unwrap();
            let theirs = String::from_utf8(lp.build()).unwrap();
            // Extreme magnitudes differ in spelling only (`1e-7` against
            // `0.0000001`; InfluxDB reads both exactly): parsed, they are equal.
            assert_eq!(parsed_lines(&ours), parsed_lines(&theirs));
            assert_eq!(ours.lines().count(), candles.len());
            // Ordinary values come out byte for byte the same.
            for (i, (a, b)) in ours.lines().zip(theirs.lines()).enumerate() {
                if values[i] != 1e-7 && values[i] != 123456789.123 {
                    assert_eq!(a, b);
                }
            }
        }
    }
}
