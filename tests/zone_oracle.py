#!/usr/bin/env python3
"""An oracle for bars counted in a time zone, written apart from ohlcd with
Python's own time zone database reader (zoneinfo) and datetime arithmetic.

Reads one JSON object on stdin and writes one on stdout:

  {"bars": [{"zone": "Asia/Hong_Kong", "unit": "day"|"week"|"month"|"intraday",
             "n": 1, "len_secs": 14400,
             "trades": [[time_ns, id, price, amount], ...]}, ...],
   "windows": [{"zone": ..., "unit": ..., "n": ..., "len_secs": ..., "t": time_ns}, ...]}

  -> {"bars": [[[start_ns, stamp_ns, open, high, low, close, volume, trades], ...], ...],
      "windows": [[start_ns, end_ns] or null (zone unknown here), ...],
      "local_dates": [["YYYY-MM-DD" per trade] per bars case]}

The definition it checks: local day D starts at the first instant whose local
date is D (its midnight, the first of two, or the first instant after a
skipped one); n-day windows count local days from 1970-01-01, weeks start on
Monday (counted from 1970-01-05), months on the 1st; intraday bars start at
day_start + k * len, the last one of a day ending at the next day start. A
daily, weekly or monthly bar's stamp is its start's local date at 00:00 UTC.
"""

import json
import sys
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, available_timezones

NS = 1_000_000_000
EPOCH = date(1970, 1, 1)
KNOWN = available_timezones()


def local_date(zone, secs):
    return datetime.fromtimestamp(secs, zone).date()


def day_start_secs(zone, d, memo):
    """First whole second whose local date is d (transitions fall on whole seconds)."""
    key = (zone.key, d)
    if key in memo:
        return memo[key]
    utc_midnight = int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp())
    lo, hi = utc_midnight - 2 * 86400, utc_midnight + 2 * 86400
    assert local_date(zone, lo) < d <= local_date(zone, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if local_date(zone, mid) >= d:
            hi = mid
        else:
            lo = mid
    memo[key] = hi
    return hi


def window(case, t_ns, memo):
    zone = ZoneInfo(case["zone"])
    secs = t_ns // NS
    d = local_date(zone, secs)
    # The day containing t: [day_start(d), day_start(d + 1)).
    if t_ns < day_start_secs(zone, d, memo) * NS:
        d -= timedelta(days=1)
    elif t_ns >= day_start_secs(zone, d + timedelta(days=1), memo) * NS:
        d += timedelta(days=1)
    start = lambda day: day_start_secs(zone, day, memo) * NS
    unit, n = case["unit"], case.get("n", 1)
    if unit == "intraday":
        length = case["len_secs"] * NS
        first, nxt = start(d), start(d + timedelta(days=1))
        s = first + (t_ns - first) // length * length
        return s, min(s + length, nxt)
    if unit == "day":
        number = (d - EPOCH).days
        g = EPOCH + timedelta(days=number // n * n)
        return start(g), start(g + timedelta(days=n))
    if unit == "week":
        number = (d - EPOCH).days
        g = EPOCH + timedelta(days=4 + (number - 4) // (7 * n) * (7 * n))
        return start(g), start(g + timedelta(days=7 * n))
    if unit == "month":
        index = (d.year - 1970) * 12 + d.month - 1
        g = index // n * n
        first = date(1970 + g // 12, g % 12 + 1, 1)
        following = date(1970 + (g + n) // 12, (g + n) % 12 + 1, 1)
        return start(first), start(following)
    raise ValueError(unit)


def stamp(zone_name, start_ns):
    d = local_date(ZoneInfo(zone_name), start_ns // NS)
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()) * NS


def bars(case, memo):
    grouped = {}
    for t_ns, trade_id, price, amount in sorted(case["trades"], key=lambda x: (x[0], x[1])):
        s, _ = window(case, t_ns, memo)
        grouped.setdefault(s, []).append((price, amount))
    out = []
    for s in sorted(grouped):
        prices = [p for p, _ in grouped[s]]
        out.append([s, stamp(case["zone"], s), prices[0], max(prices), min(prices), prices[-1],
                    sum(a for _, a in grouped[s]), len(prices)])
    return out


def main():
    request = json.load(sys.stdin)
    memo = {}
    answer = {"bars": [], "windows": [], "local_dates": []}
    for case in request.get("bars", []):
        answer["bars"].append(bars(case, memo))
        zone = ZoneInfo(case["zone"])
        answer["local_dates"].append(
            [local_date(zone, t[0] // NS).isoformat() for t in case["trades"]])
    for case in request.get("windows", []):
        if case["zone"] not in KNOWN:
            answer["windows"].append(None)
            continue
        answer["windows"].append(list(window(case, case["t"], memo)))
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
