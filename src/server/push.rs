//! Live bars pushed to subscribers (`GET /api/live`, Server-Sent Events).
//!
//! One *feed* per subscribed (symbol, resolution) computes the newest bars and
//! publishes them on a `watch` channel; every subscriber of that pair reads the
//! same value. So the cost follows subscribed pairs, not subscribers, and a
//! subscriber that does not read holds one value, the newest, never a queue.
//!
//! A feed recomputes when something may have changed its bars:
//! - trades of its symbol were accepted by `POST /api/trades` (right after
//!   InfluxDB acknowledged the write): [`PushHub::trades_written`];
//! - the engine ticks, which catches trades written straight into InfluxDB:
//!   [`PushHub::refresh_all`].
//!
//! Each computation asks [`Datafeed::bars`] for the windows from the feed's
//! cursor to the end of the open window, exactly as `/udf/history` computes
//! them. The cursor follows the open window, but stays on a closed window for
//! `engine.settle_secs` after it closed, so trades that arrive a little late
//! still reach the bar's final version; older bars are final for the feed.
//!
//! Subscribers keep what they last sent per bar and send only bars that
//! changed. Bars older than the feed's cursor that a subscriber never saw in
//! their final state (it resumed with `Last-Event-ID`, or it read too slowly
//! to see every value) are read once for that subscriber, the same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tokio_util::sync::CancellationToken;

use super::limits::QueryLimits;
use crate::candle::{Candle, NANOS_PER_SEC};
use crate::chart::ZonedResolution;
use crate::clock::Clock;
use crate::datafeed::{Datafeed, DatafeedError, History};

/// A feed's newest computation, shared by all its subscribers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedState {
    /// Bumped on every change; 0 until the first computation succeeded.
    pub version: u64,
    /// Start of the range computed (Unix ns): bars before it are final.
    pub from: i64,
    /// Bars starting in `[from, end of the open window)`, oldest first.
    pub bars: Vec<Candle>,
    /// The newest bar of the symbol (may be older than `from`).
    pub latest: Option<Candle>,
}

/// The shared part of one (symbol, resolution) feed.
#[derive(Debug)]
struct Feed {
    wake: Notify,
    state: watch::Sender<Arc<FeedState>>,
}

type FeedKey = (String, ZonedResolution);

/// Live bars for every subscribed (symbol, resolution).
#[derive(Debug, Clone)]
pub struct PushHub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    datafeed: Arc<Datafeed>,
    clock: Arc<dyn Clock>,
    limits: QueryLimits,
    settle: i64,
    feeds: Mutex<HashMap<String, HashMap<ZonedResolution, Arc<Feed>>>>,
    streams: Arc<Semaphore>,
    max_streams: usize,
    closing: CancellationToken,
}

/// Every stream slot is taken (`server.max_streams`).
#[derive(Debug, thiserror::Error)]
#[error("too many live streams open (server.max_streams = {0}); retry later or poll /udf/history")]
pub struct TooManyStreams(pub usize);

impl warp::reject::Reject for TooManyStreams {}

/// Held by an open stream; frees its slot on drop.
#[derive(Debug)]
pub struct StreamSlot {
    _permit: OwnedSemaphorePermit,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        ::metrics::gauge!("ohlcd_push_streams").decrement(1.0);
    }
}

impl PushHub {
    /// A hub computing bars with `datafeed` on `clock`; closed windows are
    /// followed for `settle_secs`, at most `max_streams` streams are open.
    pub fn new(
        datafeed: Arc<Datafeed>,
        clock: Arc<dyn Clock>,
        limits: QueryLimits,
        settle_secs: u64,
        max_streams: usize,
    ) -> PushHub {
        PushHub {
            inner: Arc::new(Inner {
                datafeed,
                clock,
                limits,
                settle: i64::try_from(settle_secs)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(NANOS_PER_SEC),
                feeds: Mutex::new(HashMap::new()),
                streams: Arc::new(Semaphore::new(max_streams)),
                max_streams,
                closing: CancellationToken::new(),
            }),
        }
    }

    /// Takes a stream slot, or says that all are in use.
    pub fn open_stream(&self) -> Result<StreamSlot, TooManyStreams> {
        match self.inner.streams.clone().try_acquire_owned() {
            Ok(permit) => {
                ::metrics::gauge!("ohlcd_push_streams").increment(1.0);
                Ok(StreamSlot { _permit: permit })
            }
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                ::metrics::counter!("ohlcd_push_streams_refused_total").increment(1);
                Err(TooManyStreams(self.max_streams()))
            }
        }
    }

    fn max_streams(&self) -> usize {
        self.inner.max_streams
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.inner.max_streams - self.inner.streams.available_permits()
    }

    /// (symbol, resolution) pairs with at least one subscriber.
    pub fn feeds(&self) -> usize {
        let feeds = self.inner.feeds.lock().expect("feeds lock");
        feeds.values().map(HashMap::len).sum()
    }

    /// Recompute the feeds of these symbols (their trades were just written).
    pub fn trades_written<'a>(&self, symbols: impl IntoIterator<Item = &'a str>) {
        let feeds = self.inner.feeds.lock().expect("feeds lock");
        for symbol in symbols {
            for feed in feeds.get(symbol).into_iter().flat_map(HashMap::values) {
                feed.wake.notify_one();
            }
        }
    }

    /// Recompute every feed (the engine ticked: trades written straight into
    /// InfluxDB become visible this way).
    pub fn refresh_all(&self) {
        let feeds = self.inner.feeds.lock().expect("feeds lock");
        for feed in feeds.values().flat_map(HashMap::values) {
            feed.wake.notify_one();
        }
    }

    /// Ends every stream and feed (the server is shutting down).
    pub fn close(&self) {
        self.inner.closing.cancel();
    }

    /// Resolves once [`PushHub::close`] was called.
    pub async fn closed(&self) {
        self.inner.closing.cancelled().await;
    }

    /// A receiver of the (symbol, resolution) feed, starting the feed if it
    /// has no other subscriber. Dropping every receiver stops the feed.
    pub fn subscribe(&self, symbol: &str, res: ZonedResolution) -> watch::Receiver<Arc<FeedState>> {
        let mut feeds = self.inner.feeds.lock().expect("feeds lock");
        let by_res = feeds.entry(symbol.to_string()).or_default();
        if let Some(feed) = by_res.get(&res) {
            return feed.state.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(FeedState::default()));
        let feed = Arc::new(Feed {
            wake: Notify::new(),
            state: tx,
        });
        by_res.insert(res, feed.clone());
        ::metrics::gauge!("ohlcd_push_feeds").increment(1.0);
        tokio::spawn(self.clone().run_feed((symbol.to_string(), res), feed));
        rx
    }

    /// The feed's loop: compute, then wait for a reason to compute again; ends
    /// when its last subscriber is gone or the hub closes.
    async fn run_feed(self, key: FeedKey, feed: Arc<Feed>) {
        let mut follow = Follow::default();
        loop {
            match self.compute(&key, &mut follow).await {
                Ok(state) => {
                    feed.state.send_if_modified(|current| {
                        if current.from == state.from
                            && current.bars == state.bars
                            && current.latest == state.latest
                        {
                            return false;
                        }
                        *current = Arc::new(FeedState {
                            version: current.version + 1,
                            ..state
                        });
                        true
                    });
                }
                Err(e) => {
                    tracing::warn!(symbol = %key.0, resolution = %key.1, error = %e, "live bars not computed; next trade or tick retries");
                }
            }
            tokio::select! {
                () = feed.wake.notified() => continue,
                () = self.inner.closing.cancelled() => {}
                () = feed.state.closed() => {}
            }
            // Subscribing happens under the same lock, so nobody can join
            // between this check and the removal.
            let mut feeds = self.inner.feeds.lock().expect("feeds lock");
            if !self.inner.closing.is_cancelled() && feed.state.receiver_count() > 0 {
                continue;
            }
            if let Some(by_res) = feeds.get_mut(&key.0) {
                by_res.remove(&key.1);
                if by_res.is_empty() {
                    feeds.remove(&key.0);
                }
            }
            ::metrics::gauge!("ohlcd_push_feeds").decrement(1.0);
            return;
        }
    }

    /// One computation of a feed's bars.
    async fn compute(
        &self,
        key: &FeedKey,
        follow: &mut Follow,
    ) -> Result<FeedState, DatafeedError> {
        let (symbol, res) = (key.0.as_str(), key.1);
        let _slot = self
            .inner
            .limits
            .admit(1)
            .await
            .map_err(|_| DatafeedError::BadRequest("server busy: no query slot".into()))?;
        ::metrics::counter!("ohlcd_push_refreshes_total").increment(1);
        let now = self.inner.clock.now();
        let bucketing = res.bucketing();
        let end = open_end(res, now);
        // Windows that closed less than `settle` ago are still followed.
        let settled = bucketing.window_start(now.saturating_sub(self.inner.settle));
        let from = follow.cursor.unwrap_or(settled).min(settled);
        let bars = self.inner.datafeed.bars(symbol, res, from..end).await?;
        let latest = match bars.last() {
            Some(b) => Some(*b),
            None => match follow.latest {
                Some(b) => Some(b),
                // First computation, nothing in the followed windows.
                None => match self
                    .inner
                    .datafeed
                    .history(symbol, res, 0, from, Some(1))
                    .await?
                {
                    History::Bars(b) => b.last().copied(),
                    History::NoData { .. } => None,
                },
            },
        };
        follow.cursor = Some(settled);
        follow.latest = latest;
        Ok(FeedState {
            version: 0,
            from,
            bars,
            latest,
        })
    }

    /// Bars in `[from, to)` for one subscriber (its resume or catch-up),
    /// computed as `/udf/history` computes them.
    async fn bars_for(
        &self,
        symbol: &str,
        res: ZonedResolution,
        from: i64,
        to: i64,
    ) -> Result<Vec<Candle>, DatafeedError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let _slot = self
            .inner
            .limits
            .admit(1)
            .await
            .map_err(|_| DatafeedError::BadRequest("server busy: no query slot".into()))?;
        self.inner.datafeed.bars(symbol, res, from..to).await
    }

    /// Starts a subscriber of (symbol, resolution) holding `slot`: waits (at
    /// most `wait`) for the feed's first computation and returns the first
    /// updates. With `since` (Unix ns, from `Last-Event-ID` or `?since=`) they
    /// are every bar from the window containing `since` on, each once in its
    /// current state; without, the newest bars. More than `max_resume` bars
    /// back is a [`Update::Reset`] followed by the newest bars.
    pub async fn start(
        &self,
        symbol: &str,
        res: ZonedResolution,
        since: Option<i64>,
        max_resume: u64,
        wait: Duration,
        slot: StreamSlot,
    ) -> Result<(Subscriber, Vec<Update>), StartError> {
        let mut rx = self.subscribe(symbol, res);
        let state = match tokio::time::timeout(wait, rx.wait_for(|s| s.version > 0)).await {
            Ok(Ok(state)) => state.clone(),
            Ok(Err(_)) => return Err(StartError::Closing),
            Err(_) => return Err(StartError::Timeout(wait)),
        };
        rx.mark_unchanged();
        let mut sub = Subscriber {
            hub: self.clone(),
            symbol: symbol.to_string(),
            res,
            rx,
            sent: BTreeMap::new(),
            last_id: None,
            _slot: slot,
        };
        let mut updates = Vec::new();
        let since = since.map(|t| res.bucketing().window_start(t));
        let bars = match since {
            Some(t) if t < state.from && resume_bars(res, t, state.from) > max_resume => {
                updates.push(Update::Reset);
                sub.newest(&state)
            }
            Some(t) => {
                let mut bars = self.bars_for(symbol, res, t, state.from).await?;
                bars.extend(state.bars.iter().filter(|b| b.start >= t));
                bars
            }
            None => sub.newest(&state),
        };
        sub.send(bars, &mut updates);
        sub.forget_final(state.from);
        Ok((sub, updates))
    }
}

/// How many bars of `res` lie in `[from, to)`, as an estimate.
fn resume_bars(res: ZonedResolution, from: i64, to: i64) -> u64 {
    ((to - from).max(0) / res.nominal_nanos()) as u64
}

/// Why a stream could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The feed's first computation did not finish in time.
    #[error("live bars not computed within {0:?}; InfluxDB may be slow or down")]
    Timeout(Duration),
    /// The server is shutting down.
    #[error("server shutting down")]
    Closing,
    /// Reading bars failed.
    #[error(transparent)]
    Datafeed(#[from] DatafeedError),
}

/// One message of a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A bar, new or changed.
    Bar {
        /// The bar.
        bar: Candle,
        /// Its window has ended.
        closed: bool,
        /// The newest bar start sent so far (Unix ns): the event id, from
        /// which a reconnect resumes.
        id: i64,
    },
    /// The resume point was too far back: reload the history, then follow.
    Reset,
    /// The stream ends after this (bars could not be read); reconnect.
    Error(String),
}

/// One subscriber: the feed it reads and what it has sent.
#[derive(Debug)]
pub struct Subscriber {
    hub: PushHub,
    symbol: String,
    res: ZonedResolution,
    rx: watch::Receiver<Arc<FeedState>>,
    /// Bars sent that the feed may still change, by start.
    sent: BTreeMap<i64, Candle>,
    /// Newest bar start sent.
    last_id: Option<i64>,
    _slot: StreamSlot,
}

impl Subscriber {
    /// The next updates: waits for the feed to change and returns the bars
    /// that differ from what this subscriber sent; `None` when the stream is
    /// over (server closing). Only the newest feed state is ever read.
    pub async fn next(&mut self) -> Option<Vec<Update>> {
        loop {
            tokio::select! {
                changed = self.rx.changed() => changed.ok()?,
                () = self.hub.closed() => return None,
            }
            let state = self.rx.borrow_and_update().clone();
            let mut updates = Vec::new();
            // Bars that became final for the feed while this subscriber was
            // not looking: read them once, so no final value is skipped.
            if let Some(last) = self.last_id
                && last < state.from
            {
                match self
                    .hub
                    .bars_for(&self.symbol, self.res, last, state.from)
                    .await
                {
                    Ok(bars) => self.send(bars, &mut updates),
                    Err(e) => return Some(vec![Update::Error(e.to_string())]),
                }
            }
            self.send(state.bars.clone(), &mut updates);
            self.forget_final(state.from);
            if !updates.is_empty() {
                return Some(updates);
            }
        }
    }

    fn newest(&self, state: &FeedState) -> Vec<Candle> {
        if state.bars.is_empty() {
            state.latest.into_iter().collect()
        } else {
            state.bars.clone()
        }
    }

    /// Appends an update for each of `bars` not already sent as it is.
    fn send(&mut self, bars: Vec<Candle>, updates: &mut Vec<Update>) {
        let now = self.hub.inner.clock.now();
        let bucketing = self.res.bucketing();
        for bar in bars {
            if self.sent.get(&bar.start) == Some(&bar) {
                continue;
            }
            self.sent.insert(bar.start, bar);
            let id = self.last_id.map_or(bar.start, |l| l.max(bar.start));
            self.last_id = Some(id);
            updates.push(Update::Bar {
                bar,
                closed: bucketing.next_start(bar.start) <= now,
                id,
            });
        }
    }

    /// Forgets bars the feed no longer follows, except the newest sent (a
    /// catch-up starts there).
    fn forget_final(&mut self, from: i64) {
        let keep = self.last_id.map_or(from, |l| l.min(from));
        self.sent = self.sent.split_off(&keep);
    }
}

/// What a feed remembers between computations.
#[derive(Debug, Default)]
struct Follow {
    /// Windows before this are final; `None` before the first computation.
    cursor: Option<i64>,
    latest: Option<Candle>,
}

/// End of the window open at `now`.
fn open_end(res: ZonedResolution, now: i64) -> i64 {
    let b = res.bucketing();
    b.next_start(b.window_start(now))
}
