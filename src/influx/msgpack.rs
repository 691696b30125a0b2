//! Incremental decoder of InfluxDB 1.x query results in MessagePack
//! (`Accept: application/x-msgpack`, `chunked=true`).
//!
//! Each chunk of the response is one top-level map:
//! `{"results": [{"statement_id": 0, "series": [{"name", "tags"?, "columns",
//! "values": [[...], ...], "partial"?}], "partial"?}]}` or `{"error": "..."}`.
//! Rows are handed out while a chunk is decoded; when the buffered bytes end
//! mid-chunk the decoder reports [`Decoded::NeedMore`] and, once more bytes have
//! arrived, decodes that chunk again from its start, skipping the rows it already
//! handed out. Chunks are small (`chunk_size` rows), so re-decoding costs little.
//!
//! Pure: no I/O. The marker table comes from the `rmp` crate.

use rmp::Marker;

/// One decoded scalar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val<'a> {
    /// `nil`.
    Nil,
    /// A boolean.
    Bool(bool),
    /// Any integer that fits i64.
    Int(i64),
    /// A float (32-bit ones are widened).
    Float(f64),
    /// A string or binary, as bytes.
    Str(&'a [u8]),
}

impl Val<'_> {
    /// The value as f64 (integers are converted).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Val::Float(f) => Some(f),
            Val::Int(i) => Some(i as f64),
            _ => None,
        }
    }

    /// The value as i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Val::Int(i) => Some(i),
            _ => None,
        }
    }
}

/// Receives `(columns, row)`; an `Err` stops decoding with that message.
pub type OnRow<'f> = dyn FnMut(&SeriesColumns, &[Val]) -> Result<(), String> + 'f;

/// The column names of the current series, and how many times column names
/// have been read so far: a consumer compares names only when that changes,
/// not at every row.
#[derive(Debug, Default)]
pub struct SeriesColumns {
    /// The column names, in row order.
    pub names: Vec<String>,
    /// How many times column names were read (a new series' header).
    pub read: u64,
}

/// Why decoding stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// The buffer ends inside the current chunk.
    NeedMore,
    /// InfluxDB reported an error.
    Server(String),
    /// The bytes are not what InfluxDB sends.
    Invalid(String),
}

/// The result of decoding from the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// One whole chunk was decoded; it took this many bytes.
    Chunk(usize),
    /// The buffer ends mid-chunk; call again with more bytes.
    NeedMore,
}

type Res<T> = Result<T, DecodeError>;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::NeedMore)?;
        let bytes = self.buf.get(self.pos..end).ok_or(DecodeError::NeedMore)?;
        self.pos = end;
        Ok(bytes)
    }

    fn be(&mut self, n: usize) -> Res<u64> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn marker(&mut self) -> Res<Marker> {
        Ok(Marker::from_u8(self.take(1)?[0]))
    }

    fn value(&mut self) -> Res<Val<'a>> {
        let m = self.marker()?;
        self.value_after(m)
    }

    fn value_after(&mut self, m: Marker) -> Res<Val<'a>> {
        Ok(match m {
            Marker::Null => Val::Nil,
            Marker::True => Val::Bool(true),
            Marker::False => Val::Bool(false),
            Marker::FixPos(n) => Val::Int(i64::from(n)),
            Marker::FixNeg(n) => Val::Int(i64::from(n)),
            Marker::U8 => Val::Int(self.be(1)? as i64),
            Marker::U16 => Val::Int(self.be(2)? as i64),
            Marker::U32 => Val::Int(self.be(4)? as i64),
            Marker::U64 => Val::Int(
                i64::try_from(self.be(8)?)
                    .map_err(|_| DecodeError::Invalid("integer above i64".into()))?,
            ),
            Marker::I8 => Val::Int(i64::from(self.be(1)? as u8 as i8)),
            Marker::I16 => Val::Int(i64::from(self.be(2)? as u16 as i16)),
            Marker::I32 => Val::Int(i64::from(self.be(4)? as u32 as i32)),
            Marker::I64 => Val::Int(self.be(8)? as i64),
            Marker::F32 => Val::Float(f64::from(f32::from_bits(self.be(4)? as u32))),
            Marker::F64 => Val::Float(f64::from_bits(self.be(8)?)),
            Marker::FixStr(n) => Val::Str(self.take(usize::from(n))?),
            Marker::Str8 | Marker::Bin8 => {
                let n = self.be(1)? as usize;
                Val::Str(self.take(n)?)
            }
            Marker::Str16 | Marker::Bin16 => {
                let n = self.be(2)? as usize;
                Val::Str(self.take(n)?)
            }
            Marker::Str32 | Marker::Bin32 => {
                let n = self.be(4)? as usize;
                Val::Str(self.take(n)?)
            }
            other => {
                return Err(DecodeError::Invalid(format!(
                    "unexpected msgpack marker {other:?} for a scalar"
                )));
            }
        })
    }

    fn str(&mut self) -> Res<&'a [u8]> {
        match self.value()? {
            Val::Str(s) => Ok(s),
            other => Err(DecodeError::Invalid(format!(
                "expected a string, got {other:?}"
            ))),
        }
    }

    /// The message of an `"error"` entry, as the error to stop with.
    fn server_error(&mut self) -> DecodeError {
        match self.str() {
            Ok(msg) => DecodeError::Server(String::from_utf8_lossy(msg).into_owned()),
            Err(e) => e,
        }
    }

    fn map_len(&mut self) -> Res<usize> {
        match self.marker()? {
            Marker::FixMap(n) => Ok(usize::from(n)),
            Marker::Map16 => Ok(self.be(2)? as usize),
            Marker::Map32 => Ok(self.be(4)? as usize),
            other => Err(DecodeError::Invalid(format!(
                "expected a map, got {other:?}"
            ))),
        }
    }

    fn array_len(&mut self) -> Res<usize> {
        match self.marker()? {
            Marker::FixArray(n) => Ok(usize::from(n)),
            Marker::Array16 => Ok(self.be(2)? as usize),
            Marker::Array32 => Ok(self.be(4)? as usize),
            other => Err(DecodeError::Invalid(format!(
                "expected an array, got {other:?}"
            ))),
        }
    }

    /// Skips any value, nested ones included.
    fn skip(&mut self) -> Res<()> {
        match self.marker()? {
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                self.pos -= 1;
                for _ in 0..self.map_len()? * 2 {
                    self.skip()?;
                }
            }
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                self.pos -= 1;
                for _ in 0..self.array_len()? {
                    self.skip()?;
                }
            }
            m => {
                self.value_after(m)?;
            }
        }
        Ok(())
    }
}

/// Decodes InfluxDB msgpack chunks; keeps what it needs between calls.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    /// Rows of the current chunk already handed out.
    emitted: usize,
    /// Column names of the current series.
    columns: SeriesColumns,
}

impl ChunkDecoder {
    /// A decoder at the start of a response.
    pub fn new() -> ChunkDecoder {
        ChunkDecoder::default()
    }

    /// Decodes the chunk at the start of `buf`, calling `on_row(columns, row)`
    /// for each row not handed out before. `on_row` may stop decoding with an
    /// error message.
    pub fn decode(&mut self, buf: &[u8], on_row: &mut OnRow) -> Result<Decoded, DecodeError> {
        let mut cur = Cursor { buf, pos: 0 };
        let mut row: Vec<Val> = Vec::with_capacity(8);
        let mut index = 0usize;
        match self.chunk(&mut cur, &mut row, &mut index, on_row) {
            Ok(()) => {
                self.emitted = 0;
                Ok(Decoded::Chunk(cur.pos))
            }
            Err(DecodeError::NeedMore) => {
                self.emitted = self.emitted.max(index);
                Ok(Decoded::NeedMore)
            }
            Err(e) => Err(e),
        }
    }

    fn chunk<'a>(
        &mut self,
        cur: &mut Cursor<'a>,
        row: &mut Vec<Val<'a>>,
        index: &mut usize,
        on_row: &mut OnRow,
    ) -> Res<()> {
        for _ in 0..cur.map_len()? {
            match cur.str()? {
                b"error" => return Err(cur.server_error()),
                b"results" => {
                    for _ in 0..cur.array_len()? {
                        self.result(cur, row, index, on_row)?;
                    }
                }
                _ => cur.skip()?,
            }
        }
        Ok(())
    }

    fn result<'a>(
        &mut self,
        cur: &mut Cursor<'a>,
        row: &mut Vec<Val<'a>>,
        index: &mut usize,
        on_row: &mut OnRow,
    ) -> Res<()> {
        for _ in 0..cur.map_len()? {
            match cur.str()? {
                b"error" => return Err(cur.server_error()),
                b"series" => {
                    for _ in 0..cur.array_len()? {
                        self.series(cur, row, index, on_row)?;
                    }
                }
                _ => cur.skip()?,
            }
        }
        Ok(())
    }

    fn series<'a>(
        &mut self,
        cur: &mut Cursor<'a>,
        row: &mut Vec<Val<'a>>,
        index: &mut usize,
        on_row: &mut OnRow,
    ) -> Res<()> {
        for _ in 0..cur.map_len()? {
            match cur.str()? {
                b"columns" => {
                    let n = cur.array_len()?;
                    let mut columns = Vec::with_capacity(n);
                    for _ in 0..n {
                        columns.push(String::from_utf8_lossy(cur.str()?).into_owned());
                    }
                    self.columns.names = columns;
                    self.columns.read += 1;
                }
                b"values" => {
                    for _ in 0..cur.array_len()? {
                        row.clear();
                        for _ in 0..cur.array_len()? {
                            row.push(cur.value()?);
                        }
                        // Rows handed out before the buffer ran dry are skipped.
                        if *index >= self.emitted {
                            on_row(&self.columns, row).map_err(DecodeError::Invalid)?;
                        }
                        *index += 1;
                    }
                }
                _ => cur.skip()?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk as InfluxDB's formatter writes it (maps in its key order).
    fn chunk(rows: &[(i64, f64, i64, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        let w = &mut b;
        rmp::encode::write_map_len(w, 1).unwrap();
        rmp::encode::write_str(w, "results").unwrap();
        rmp::encode::write_array_len(w, 1).unwrap();
        rmp::encode::write_map_len(w, 3).unwrap();
        rmp::encode::write_str(w, "statement_id").unwrap();
        rmp::encode::write_sint(w, 0).unwrap();
        rmp::encode::write_str(w, "series").unwrap();
        rmp::encode::write_array_len(w, 1).unwrap();
        rmp::encode::write_map_len(w, 4).unwrap();
        rmp::encode::write_str(w, "name").unwrap();
        rmp::encode::write_str(w, "trades").unwrap();
        rmp::encode::write_str(w, "columns").unwrap();
        rmp::encode::write_array_len(w, 4).unwrap();
        for c in ["time", "price", "id", "side"] {
            rmp::encode::write_str(w, c).unwrap();
        }
        rmp::encode::write_str(w, "values").unwrap();
        rmp::encode::write_array_len(w, rows.len() as u32).unwrap();
        for (t, p, id, side) in rows {
            rmp::encode::write_array_len(w, 4).unwrap();
            rmp::encode::write_sint(w, *t).unwrap();
            rmp::encode::write_f64(w, *p).unwrap();
            rmp::encode::write_sint(w, *id).unwrap();
            rmp::encode::write_str(w, side).unwrap();
        }
        rmp::encode::write_str(w, "partial").unwrap();
        rmp::encode::write_bool(w, true).unwrap();
        rmp::encode::write_str(w, "partial").unwrap();
        rmp::encode::write_bool(w, true).unwrap();
        b
    }

    fn rows() -> Vec<(i64, f64, i64, &'static str)> {
        (0..50)
            .map(|i| {
                (
                    1_700_000_000_000_000_000 + i * 1_000_003,
                    100.0 + i as f64 / 8.0,
                    i * 300 - 70,
                    if i % 2 == 0 { "buy" } else { "sell" },
                )
            })
            .collect()
    }

    fn collect(
        buf: &[u8],
        dec: &mut ChunkDecoder,
        out: &mut Vec<(i64, f64, i64, String)>,
    ) -> Result<Decoded, DecodeError> {
        dec.decode(buf, &mut |cols, row| {
            assert_eq!(cols.names, ["time", "price", "id", "side"]);
            let side = match row[3] {
                Val::Str(s) => String::from_utf8(s.to_vec()).unwrap(),
                _ => return Err("side".into()),
            };
            out.push((
                row[0].as_i64().unwrap(),
                row[1].as_f64().unwrap(),
                row[2].as_i64().unwrap(),
                side,
            ));
            Ok(())
        })
    }

    #[test]
    fn a_whole_chunk_decodes_to_its_rows_and_reports_its_length() {
        let bytes = chunk(&rows());
        let mut out = Vec::new();
        let got = collect(&bytes, &mut ChunkDecoder::new(), &mut out).unwrap();
        assert_eq!(got, Decoded::Chunk(bytes.len()));
        let expected: Vec<_> = rows()
            .into_iter()
            .map(|(t, p, i, s)| (t, p, i, s.to_string()))
            .collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn a_chunk_fed_byte_by_byte_yields_every_row_exactly_once() {
        let mut bytes = chunk(&rows());
        let second = chunk(&rows()[..3]);
        bytes.extend_from_slice(&second);
        let mut dec = ChunkDecoder::new();
        let mut out = Vec::new();
        let (mut start, mut end) = (0, 0);
        while start < bytes.len() {
            end = (end + 1).min(bytes.len());
            match collect(&bytes[start..end], &mut dec, &mut out).unwrap() {
                Decoded::Chunk(n) => start += n,
                Decoded::NeedMore => assert!(end < bytes.len(), "ran out of input"),
            }
        }
        assert_eq!(out.len(), 53);
        assert_eq!(out[50].0, rows()[0].0);
    }

    #[test]
    fn server_errors_and_garbage_are_reported() {
        let mut b = Vec::new();
        rmp::encode::write_map_len(&mut b, 1).unwrap();
        rmp::encode::write_str(&mut b, "error").unwrap();
        rmp::encode::write_str(&mut b, "database not found: x").unwrap();
        let err = ChunkDecoder::new()
            .decode(&b, &mut |_, _| Ok(()))
            .unwrap_err();
        assert_eq!(err, DecodeError::Server("database not found: x".into()));
        let err = ChunkDecoder::new()
            .decode(&[0x93, 1, 2, 3], &mut |_, _| Ok(()))
            .unwrap_err();
        assert!(matches!(err, DecodeError::Invalid(_)));
    }
}
