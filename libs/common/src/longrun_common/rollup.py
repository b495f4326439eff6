"""Workflow progress roll-up: the Lua that the publisher's script runs after a child's event.

A child job's hash names its `parent`. After the child's event is written, this Lua folds the child's new
fraction into the parent's running sums (`{prefix}:rollup:{parent}`, one hash per parent node) and publishes
the parent's own event (own seq, same hash/stream/channel layout as any job). O(1) per level: one HMGET and one
HSET of the sums, never a read of the siblings. A parent that is itself a child is folded into its own parent
the same way, up to MAX_DEPTH levels, all in the same atomic script as the child's event.

Sums per parent: `W` total weight, `D` done weight, `P` the highest percent published (the bar never moves
backwards except when a child is requeued from scratch: its `queued` event, which the parent's event then
names as `requeued`), `t0` when the first progress was seen (for the ETA); per child `w:` weight, `k:` weight
fixed (given in the spec, or a node's leaf count), `f:` last fraction, `s:` last status. A weight that is not
fixed becomes the child's `total` once it reports one.

A parent event names the child that moved: each time a child's fraction (or weight) changes, and when it ends.
A move that changes neither and does not end the child (queued -> running, a retry's wait) is only recorded
in `s:`: an event there would repeat the parent's percent (a fan-out of short steps made ~3 parent events per
child, each one waking every live reader of the parent, for ~1 that moved its bar).
"""

from __future__ import annotations

MAX_DEPTH = 16

# Needs, from the surrounding script: `prefix`, `maxlen`, and the child's id, fraction ('' unknown), total
# ('' unknown), status and event time.
LUA = """
local function rollup_one(child, frac, total, cstatus, ts)
  local parent = redis.call('HGET', prefix .. ':job:' .. child, 'parent')
  if not parent then return nil end
  local rk = prefix .. ':rollup:' .. parent
  local pk = prefix .. ':job:' .. parent
  local pstatus = redis.call('HGET', pk, 'status')
  if redis.call('EXISTS', rk) == 0 or not pstatus or pstatus == 'succeeded' or pstatus == 'failed'
     or pstatus == 'cancelled' then
    return nil
  end
  local r = redis.call('HMGET', rk, 'f:' .. child, 's:' .. child, 'w:' .. child, 'k:' .. child, 'W', 'D', 'P', 't0')
  local oldf = tonumber(r[1] or '0')
  local olds = r[2]
  local w = tonumber(r[3] or '1')
  local W = tonumber(r[5] or '0')
  local D = tonumber(r[6] or '0')
  local P = tonumber(r[7] or '0')
  local t0 = tonumber(r[8] or '0')
  local newf = oldf
  if frac ~= '' then newf = tonumber(frac) end
  local requeued = false
  if newf < oldf then
    if cstatus == 'queued' then requeued = true else newf = oldf end
  end
  local neww = w
  if not r[4] and total ~= '' and tonumber(total) > 0 then neww = tonumber(total) end
  local ended = cstatus == 'succeeded' or cstatus == 'failed' or cstatus == 'cancelled'
  if newf == oldf and neww == w and not requeued and (olds == cstatus or not olds or not ended) then
    if olds ~= cstatus then redis.call('HSET', rk, 's:' .. child, cstatus) end
    return nil
  end
  W = W - w + neww
  D = D - w * oldf + neww * newf
  local pct = 0
  if W > 0 then pct = math.min(100, 100 * D / W) end
  if requeued or pct > P then P = pct else pct = P end
  if t0 == 0 and pct > 0 then t0 = ts end
  local progress = {percent = math.floor(pct * 100 + 0.5) / 100, current = D, total = W}
  if pct > 0 and pct < 100 and ts > t0 then progress.eta_seconds = (ts - t0) * (100 - pct) / pct end
  redis.call('HSET', rk, 'f:' .. child, newf, 's:' .. child, cstatus, 'w:' .. child, neww, 'W', W, 'D', D,
             'P', P, 't0', t0)
  local pseq = redis.call('HINCRBY', pk, 'seq', 1)
  local body = {type = 'progress', job_id = parent, ts = ts, status = pstatus, progress = progress,
                attempt = tonumber(redis.call('HGET', pk, 'attempt') or '1'),
                child = {id = child, status = cstatus, percent = newf * 100}}
  if requeued then body.requeued = child end
  local event = '{"seq":' .. pseq .. ',' .. string.sub(cjson.encode(body), 2)
  local encoded = cjson.encode(progress)
  redis.call('HSET', pk, 'event', event, 'progress', encoded, 'updated_at', ts, 'ts', ts)
  redis.call('XADD', prefix .. ':job:' .. parent .. ':events', 'MAXLEN', '~', maxlen, pseq .. '-0', 'e', event)
  redis.call('PUBLISH', prefix .. ':live:' .. parent, event)
  return {parent, pct / 100, pstatus}
end

local function rollup(child, frac, total, cstatus, ts)
  for _ = 1, """ + str(MAX_DEPTH) + """ do
    local moved = rollup_one(child, frac, total, cstatus, ts)
    if not moved then return end
    child, frac, total, cstatus = moved[1], tostring(moved[2]), '', moved[3]
  end
end
"""
