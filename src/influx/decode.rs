//! Streaming decoders of query results: chunked MessagePack (InfluxDB 1.x) and
//! chunked CSV (every generation), both delivering rows one at a time with
//! memory bounded by one response chunk.

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

    pub(super) fn f64(&self, i: usize, name: &str) -> Result<f64, InfluxError> {
        self.value(i, name, "a number", |v| v.as_f64())
    }

    pub(super) fn i64(&self, i: usize, name: &str) -> Result<i64, InfluxError> {
        self.value(i, name, "an integer", |v| v.as_i64())
    }
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
                    if columns.0.len() != cols.len()
                        || columns.0.iter().zip(cols).any(|(a, b)| a != b)
                    {
                        columns = Columns(cols.to_vec());
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

    /// Streams a query answered as chunked CSV. CSV answers an empty 200 for a
    /// missing database, which is why the engine checks the database first.
    async fn stream_csv(
        &self,
        q: &str,
        on_row: &mut impl FnMut(&Columns, Row<'_>) -> Result<(), InfluxError>,
    ) -> Result<u64, InfluxError> {
        let resp = self.send_streaming(q, "application/csv").await?;
        let body = resp
            .bytes_stream()
            .map_err(|e| std::io::Error::other(root_cause(&e)));
        let reader = tokio_util::io::StreamReader::new(body);
        let mut csv = csv_async::AsyncReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .create_reader(reader);
        let mut rec = csv_async::ByteRecord::new();
        let mut columns: Option<Columns> = None;
        let mut rows = 0u64;
        let timeout_secs = self.timeout_secs;
        loop {
            let more = csv.read_byte_record(&mut rec).await.map_err(|e| {
                let msg = e.to_string();
                if msg.contains("timed out") || msg.contains("TimedOut") {
                    InfluxError::Timeout {
                        url: self.url.clone(),
                        secs: timeout_secs,
                    }
                } else {
                    InfluxError::Stream(msg)
                }
            })?;
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
