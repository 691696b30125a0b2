//! What a server needs to serve one symbol's closed candles from memory: its
//! watermarks and its candle epoch, read together in one statement.
//!
//! The epoch (table `candle_epochs`) moves whenever stored candles below a
//! watermark are rewritten: a trigger on `progress_runs` bumps it for every
//! repair or rebuild row, in the transaction that commits that step (see the
//! `candle_epochs` migrations). So a server of any process or host learns of a
//! rewrite from the shared store, not from the process that did it.

use std::collections::HashMap;

use super::db::{Arg, Sql};
use super::{ProgressError, ProgressStore, opt_time, parse_resolution};
use crate::candle::Resolution;

/// A symbol's watermarks and candle epoch as read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServingState {
    /// Watermarks of the tasks that have one.
    pub watermarks: HashMap<Resolution, i64>,
    /// Generation of the stored candles below the watermarks (0: never rewritten).
    pub epoch: i64,
}

const SERVING_STATE: Sql = Sql {
    sqlite: "SELECT '' AS resolution, NULL AS watermark,
                    COALESCE((SELECT epoch FROM candle_epochs WHERE symbol = ?1), 0) AS epoch
             UNION ALL
             SELECT resolution, watermark, 0 AS epoch FROM progress
             WHERE symbol = ?1 AND watermark IS NOT NULL",
    postgres: "SELECT '' AS resolution, NULL::text AS watermark,
                      COALESCE((SELECT epoch FROM candle_epochs WHERE symbol = $1), 0)::bigint AS epoch
               UNION ALL
               SELECT resolution, watermark, 0::bigint AS epoch FROM progress
               WHERE symbol = $1 AND watermark IS NOT NULL",
};

impl ProgressStore {
    /// `symbol`'s watermarks and candle epoch, in one statement (so the epoch
    /// is never newer than the watermarks it is read with).
    pub async fn serving_state(&self, symbol: &str) -> Result<ServingState, ProgressError> {
        let rows = self
            .db
            .fetch_all(SERVING_STATE, &[Arg::Text(symbol.into())])
            .await?;
        let mut state = ServingState::default();
        for r in &rows {
            let res = r.text("resolution")?;
            if res.is_empty() {
                state.epoch = r.int("epoch")?;
                continue;
            }
            let w = opt_time(r, "watermark")?.expect("filtered on NOT NULL");
            state.watermarks.insert(parse_resolution(&res)?, w);
        }
        Ok(state)
    }
}
