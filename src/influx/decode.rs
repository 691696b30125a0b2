//! Streaming decoders of query results: chunked MessagePack (InfluxDB 1.x),
//! chunked CSV (every generation) and the CSV of InfluxDB 3's SQL endpoint,
//! all delivering rows one at a time with memory bounded by one response chunk.

use futures_util::TryStreamExt;

use super::msgpack::{ChunkDecoder, DecodeError, Decoded, Val};
use super::{InfluxClient, InfluxError, ReadFormat, root_cause};

/// Column positions of a result, found from its header.
#[derive(Debug, Default)]
pub(super) struct Columns(Vec<String>);

impl Columns {
    pub(super) fn index(&self, name: &str) -> Result<usize, InfluxError> {
        self.0
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| InfluxError::Protocol(format!("result has no column {name:?}")))
    }
}

/// One row of a result, whichever wire format it came in.
pub(super) enum Row<'r> {
    Csv(&'r csv_async::ByteRecord),
    Pack(&'r [Val<'r>]),
}

impl Row<'_> {
    /// The symbol in column `i`, or "" when the query did not select it
    /// (`i == usize::MAX`).
    pub(super) fn symbol(&self, i: usize) -> Result<&str, InfluxError> {
        if i == usize::MAX {
            return Ok("");
        }
        self.bytes(i)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| InfluxError::Protocol("row without a symbol".into()))
    }

    pub(super) fn bytes(&self, i: usize) -> Option<&[u8]> {
        match self {
            Row::Csv(rec) => rec.get(i),
            Row::Pack(vals) => match vals.get(i) {
                Some(Val::Str(s)) => Some(s),
                _ => None,
            },
        }
    }

    /// Column `i` as a `T`: parsed from CSV text, or taken from the msgpack value.
    pub(super) fn value<T: std::str::FromStr>(
        &self,
        i: usize,
        name: &str,
        what: &str,
        from_pack: impl Fn(&Val) -> Option<T>,
    ) -> Result<T, InfluxError> {
        let v = match self {
            Row::Csv(rec) => rec
                .get(i)
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse().ok()),
            Row::Pack(vals) => vals.get(i).and_then(from_pack),
        };
        v.ok_or_else(|| InfluxError::Protocol(format!("column {name} is not {what}")))
    }

    /// Column `i` as a number, for a trade's price or amount: `None` when the
    /// row has no value there, `Some(Err(()))` when it holds something that is
    /// not a number (text, a boolean). Integers read as numbers.
    pub(super) fn number(&self, i: usize) -> Option<Result<f64, ()>> {
        match self {
            Row::Csv(rec) => {
                let b = rec.get(i).filter(|b| !b.is_empty())?;
                Some(
                    std::str::from_utf8(b)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or(()),
                )
            }
            Row::Pack(vals) => match vals.get(i) {
                None | Some(Val::Nil) => None,
                // Text fields (old collectors wrote numbers as strings) parse.
                Some(Val::Str(b)) => Some(
                    std::str::from_utf8(b)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or(()),
                ),
                Some(v) => Some(v.as_f64().ok_or(())),
            },
        }
    }

    /// Column `i` as text: a tag or string field, or a boolean spelled
    /// `true` / `false` (as CSV spells it); `None` when missing.
    pub(super) fn text(&self, i: usize) -> Option<&[u8]> {
        match self {
            Row::Csv(rec) => rec.get(i).filter(|b| !b.is_empty()),
            Row::Pack(vals) => match vals.get(i) {
                Some(Val::Str(s)) => Some(s),
                Some(Val::Bool(true)) => Some(b"true"),
                Some(Val::Bool(false)) => Some(b"false"),
                _ => None,
            },
        }
    }

    /// Column `i` as a trade's order key: an integer, or text that is one
    /// (string ids); 0 for anything else.
    pub(super) fn order_key(&self, i: usize) -> i64 {
        match self {
            Row::Pack(vals) => match vals.get(i) {
                Some(Val::Int(n)) => *n,
                Some(Val::Str(b)) => parse_key(b),
                _ => 0,
            },
            Row::Csv(rec) => rec.get(i).map_or(0, parse_key),
        }
    }

    pub(super) fn f64(&self, i: usize, name: &str) -> Result<f64, InfluxError> {
        self.value(i, name, "a number", |v| v.as_f64())
    }

    pub(super) fn i64(&self, i: usize, name: &str) -> Result<i64, InfluxError> {
        self.value(i, name, "an integer", |v| v.as_i64())
    }
}

/// Text holding a whole number (an id stored as a string) as that number; 0
/// otherwise.
fn parse_key(b: &[u8]) -> i64 {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

impl InfluxClient {
    /// Sends a streaming query (chunked) asking for `accept`.
    async fn send_streaming(
        &self,
        q: &str,
        accept: &str,
    ) -> Result<reqwest::Response, InfluxError> {
        let mut form = self.db_params();
        form.push(("q", q.to_string()));
        form.push(("epoch", "ns".to_string()));
        form.push(("chunked", "true".to_string()));
        form.push(("chunk_size", self.chunk_size.to_string()));
        self.send("query", || {
            self.request(reqwest::Method::POST, "/query")
                .header(reqwest::header::ACCEPT, accept)
                .form(&form)
        })
        .await
    }

    fn stream_error(&self, e: reqwest::Error) -> InfluxError {
        if e.is_timeout() {
            InfluxError::Timeout {
                url: self.url.clone(),
                secs: self.timeout_secs,
            }
        } else {
            InfluxError::Stream(root_cause(&e))
        }
    }

    /// Streams a query's rows in the configured format, calling `on_row` with the
    /// columns and each row. Returns the number of rows. Memory stays at one
    /// response chunk, whatever the result size.
    pub(super) async fn stream_rows(
        &self,
        q: &str,
        mut on_row: impl FnMut(&Columns, Row<'_>) -> Result<(), InfluxError>,
    ) -> Result<u64, InfluxError> {
        match self.read_format {
            ReadFormat::Csv => self.stream_csv(q, &mut on_row).await,
            ReadFormat::Msgpack => self.stream_msgpack(q, &mut on_row).await,
        }
    }

    async fn stream_msgpack(
        &self,
        q: &str,
        on_row: &mut impl FnMut(&Columns, Row<'_>) -> Result<(), InfluxError>,
    ) -> Result<u64, InfluxError> {
        let mut resp = self.send_streaming(q, "application/x-msgpack").await?;
        let mut decoder = ChunkDecoder::new();
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
        let mut start = 0usize;
        let mut rows = 0u64;
        let mut columns = Columns::default();
        let mut columns_read = 0u64;
        let mut failure: Option<InfluxError> = None;
        let mut at_failpoint = false;
        let mut retry_at = 0usize;
        loop {
            let more = resp.chunk().await.map_err(|e| self.stream_error(e))?;
            let done = more.is_none();
            if let Some(bytes) = more {
                // Keep the unconsumed tail only; the buffer holds about one chunk.
                if start > 0 && start >= buf.len() / 2 {
                    buf.drain(..start);
                    start = 0;
                }
                buf.extend_from_slice(&bytes);
            }
            // Re-decoding an incomplete chunk starts over from its first byte, so
            // only retry once the pending bytes have doubled: total work stays
            // within about twice one pass, whatever size the network reads are.
            while start < buf.len() && (done || buf.len() - start >= retry_at) {
                let decoded = decoder.decode(&buf[start..], &mut |cols, vals| {
                    if cols.read != columns_read {
                        columns_read = cols.read;
                        if columns.0 != cols.names {
                            columns = Columns(cols.names.clone());
                        }
                    }
                    match on_row(&columns, Row::Pack(vals)) {
                        Ok(()) => {
                            rows += 1;
                            if rows == 100 {
                                at_failpoint = true;
                            }
                            Ok(())
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            failure = Some(e);
                            Err(msg)
                        }
                    }
                });
                match decoded {
                    Ok(Decoded::Chunk(n)) => {
                        start += n;
                        retry_at = 0;
                    }
                    Ok(Decoded::NeedMore) if done => {
                        return Err(InfluxError::Stream("msgpack result ends mid-chunk".into()));
                    }
                    Ok(Decoded::NeedMore) => {
                        retry_at = (buf.len() - start) * 2;
                        break;
                    }
                    Err(DecodeError::Server(message)) => {
                        return Err(if message.contains("database not found") {
                            self.database_not_found()
                        } else {
                            InfluxError::Query {
                                message,
                                query: q.to_string(),
                            }
                        });
                    }
                    Err(DecodeError::Invalid(m)) => {
                        return Err(failure.take().unwrap_or_else(|| {
                            InfluxError::Protocol(format!("msgpack result: {m}"))
                        }));
                    }
                    Err(DecodeError::NeedMore) => unreachable!("decode reports NeedMore as Ok"),
                }
            }
            if std::mem::take(&mut at_failpoint) {
                crate::failpoint::hit("mid_read").await;
            }
            if done {
                if start < buf.len() {
                    return Err(InfluxError::Stream("msgpack result ends mid-chunk".into()));
                }
                return Ok(rows);
            }
        }
    }

    /// Streams an SQL query sent to InfluxDB 3's `/api/v3/query_sql`, answered
    /// as CSV: one header line, then rows, decoded as the body arrives. A
    /// table that does not exist yet (no trades written) reads as no rows,
    /// as it does over InfluxQL.
    pub(super) async fn stream_sql_csv(
        &self,
        sql: &str,
        mut on_row: impl FnMut(&Columns, Row<'_>) -> Result<(), InfluxError>,
    ) -> Result<u64, InfluxError> {
        let body = serde_json::json!({"db": self.database, "q": sql, "format": "csv"});
        let resp = match self
            .send("query", || {
                self.request(reqwest::Method::POST, "/api/v3/query_sql")
                    .json(&body)
            })
            .await
        {
            Err(InfluxError::Status { message, .. })
                if message.contains("table") && message.contains("not found") =>
            {
                return Ok(0);
            }
            Err(InfluxError::Status { message, .. }) => {
                return Err(InfluxError::Query {
                    message,
                    query: sql.to_string(),
                });
            }
            other => other?,
        };
        let csv = csv_reader(resp);
        decode_sql_csv(csv, |e| self.csv_error(e), &mut on_row).await
    }

    fn csv_error(&self, e: csv_async::Error) -> InfluxError {
        let msg = e.to_string();
        if msg.contains("timed out") || msg.contains("TimedOut") {
            InfluxError::Timeout {
                url: self.url.clone(),
                secs: self.timeout_secs,
            }
        } else {
            InfluxError::Stream(msg)
        }
    }

    /// Reads the next CSV record into `rec`; false at the end of the body.
    async fn next_record(
        &self,
        csv: &mut CsvReader,
        rec: &mut csv_async::ByteRecord,
    ) -> Result<bool, InfluxError> {
        csv.read_byte_record(rec)
            .await
            .map_err(|e| self.csv_error(e))
    }

    /// Streams a query answered as chunked CSV. CSV answers an empty 200 for a
    /// missing database, which is why the engine checks the database first.
    async fn stream_csv(
        &self,
        q: &str,
        on_row: &mut impl FnMut(&Columns, Row<'_>) -> Result<(), InfluxError>,
    ) -> Result<u64, InfluxError> {
        let resp = self.send_streaming(q, "application/csv").await?;
        let mut csv = csv_reader(resp);
        let mut rec = csv_async::ByteRecord::new();
        let mut columns: Option<Columns> = None;
        let mut rows = 0u64;
        loop {
            let more = self.next_record(&mut csv, &mut rec).await?;
            if !more {
                break;
            }
            if rows == 100 {
                crate::failpoint::hit("mid_read").await;
            }
            let first = rec.get(0).unwrap_or_default();
            if first == b"error" && rec.len() == 1 {
                // InfluxDB reports a failed statement as a header `error` and a row
                // with the message.
                let message = if csv.read_byte_record(&mut rec).await.unwrap_or(false) {
                    String::from_utf8_lossy(rec.get(0).unwrap_or_default()).into_owned()
                } else {
                    "unknown error".to_string()
                };
                return Err(InfluxError::Query {
                    message,
                    query: q.to_string(),
                });
            }
            if first == b"name" {
                columns = Some(Columns(
                    rec.iter()
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect(),
                ));
                continue;
            }
            let cols = columns
                .as_ref()
                .ok_or_else(|| InfluxError::Protocol("CSV row before header".into()))?;
            on_row(cols, Row::Csv(&rec))?;
            rows += 1;
        }
        Ok(rows)
    }
}

/// A CSV reader over a response body as it arrives.
type CsvReader = csv_async::AsyncReader<
    tokio_util::io::StreamReader<
        std::pin::Pin<Box<dyn futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send>>,
        bytes::Bytes,
    >,
>;

/// Reads `resp`'s body as CSV records (headers handled by the caller),
/// chunk by chunk.
fn csv_reader(resp: reqwest::Response) -> CsvReader {
    let body: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send>,
    > = Box::pin(
        resp.bytes_stream()
            .map_err(|e| std::io::Error::other(root_cause(&e))),
    );
    csv_async::AsyncReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .create_reader(tokio_util::io::StreamReader::new(body))
}

/// Decodes the CSV of an SQL answer (a header line naming the columns, then
/// one line per row) as it arrives, calling `on_row` with each row; returns
/// the number of rows. Holds one record at a time.
async fn decode_sql_csv<R: tokio::io::AsyncRead + Unpin + Send>(
    mut csv: csv_async::AsyncReader<R>,
    map_err: impl Fn(csv_async::Error) -> InfluxError,
    on_row: &mut impl FnMut(&Columns, Row<'_>) -> Result<(), InfluxError>,
) -> Result<u64, InfluxError> {
    let mut rec = csv_async::ByteRecord::new();
    if !csv.read_byte_record(&mut rec).await.map_err(&map_err)? {
        return Ok(0);
    }
    let columns = Columns(
        rec.iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect(),
    );
    let mut rows = 0u64;
    while csv.read_byte_record(&mut rec).await.map_err(&map_err)? {
        if rows == 100 {
            crate::failpoint::hit("mid_read").await;
        }
        on_row(&columns, Row::Csv(&rec))?;
        rows += 1;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `body` as a reader that hands it out `piece` bytes at a time, as a
    /// network response arrives.
    fn pieces(
        body: &'static [u8],
        piece: usize,
    ) -> csv_async::AsyncReader<impl tokio::io::AsyncRead + Unpin + Send> {
        let chunks: Vec<std::io::Result<bytes::Bytes>> = body
            .chunks(piece)
            .map(|c| Ok(bytes::Bytes::from_static(c)))
            .collect();
        csv_async::AsyncReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .create_reader(tokio_util::io::StreamReader::new(
                futures_util::stream::iter(chunks),
            ))
    }

    #[tokio::test]
    async fn sql_csv_rows_decode_the_same_whatever_the_chunk_boundaries() {
        // As InfluxDB 3 answers `SELECT CAST(time AS BIGINT) AS time, price,
        // amount, id, side, symbol …` with format=csv.
        let body: &[u8] = b"time,price,amount,id,side,symbol\n\
1709251200123456789,1.5,2.0,1,buy,BTCUSD\n\
1709251100000000000,3.0,0.25,3,sell,ETHUSD\n";
        for piece in [1, 7, 1024] {
            let mut got = Vec::new();
            let n = decode_sql_csv(
                pieces(body, piece),
                |e| InfluxError::Stream(e.to_string()),
                &mut |cols, row| {
                    got.push((
                        row.i64(cols.index("time")?, "time")?,
                        row.f64(cols.index("price")?, "price")?,
                        row.f64(cols.index("amount")?, "amount")?,
                        row.i64(cols.index("id")?, "id")?,
                        row.bytes(cols.index("side")?).map(<[u8]>::to_vec),
                        row.symbol(cols.index("symbol")?)?.to_string(),
                    ));
                    Ok(())
                },
            )
            .await
            .unwrap();
            assert_eq!(n, 2, "pieces of {piece}");
            assert_eq!(
                got,
                vec![
                    (
                        1709251200123456789,
                        1.5,
                        2.0,
                        1,
                        Some(b"buy".to_vec()),
                        "BTCUSD".into()
                    ),
                    (
                        1709251100000000000,
                        3.0,
                        0.25,
                        3,
                        Some(b"sell".to_vec()),
                        "ETHUSD".into()
                    ),
                ],
                "pieces of {piece}"
            );
        }
    }

    #[tokio::test]
    async fn an_empty_sql_answer_has_no_rows_and_a_bad_value_is_an_error() {
        let mut never =
            |_: &Columns, _: Row<'_>| -> Result<(), InfluxError> { panic!("no row expected") };
        let map = |e: csv_async::Error| InfluxError::Stream(e.to_string());
        assert_eq!(
            decode_sql_csv(pieces(b"", 4), map, &mut never)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            decode_sql_csv(pieces(b"time,price\n", 4), map, &mut never)
                .await
                .unwrap(),
            0
        );
        let err = decode_sql_csv(pieces(b"time,price\n12,abc\n", 4), map, &mut |cols, row| {
            row.f64(cols.index("price")?, "price").map(|_| ())
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("price"), "{err}");
    }
}
