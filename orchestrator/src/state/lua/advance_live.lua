-- KEYS: stream, listing, received set. At most ARGV[4] steps per call (the third value
-- returned is 1 when there is more to do); a run of segments that never arrived is one
-- step, so the work is bounded by the segments that exist, never by a sequence number.
local now, hold, prefix, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local info = redis.call('HMGET', KEYS[1], 'cursor', 'total', 'max_seq')
local cursor = tonumber(info[1] or '0')
local total = info[2] and tonumber(info[2])
local max_seq = tonumber(info[3] or '-1')
local listed, skipped, more = {}, {}, 0
while not total or cursor < total do
  if budget <= 0 then more = 1 break end
  budget = budget - 1
  local step = 1
  local sk = prefix .. cursor
  local seg = redis.call('HMGET', sk, 'state', 'deadline_ms', 'disc')
  local st = seg[1]
  if st == 'done' then
    redis.call('RPUSH', KEYS[2], seg[3] == '1' and (cursor .. ' d') or tostring(cursor))
    redis.call('HSET', sk, 'listed_ms', now)
    table.insert(listed, cursor)
  elseif st == 'failed' or st == 'skipped' then
    redis.call('RPUSH', KEYS[2], '-' .. cursor)
  else
    local skip = false
    local upto = nil
    if st == 'pending' then
      skip = seg[2] and tonumber(seg[2]) <= now
    elseif max_seq > cursor or total then
      local since = redis.call('HGET', KEYS[1], 'blocked_since')
      if not since then
        redis.call('HSET', KEYS[1], 'blocked_since', now)
      elseif now - tonumber(since) >= hold then
        -- Up to the next segment that exists, or the end.
        local nxt = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. cursor, '+inf', 'LIMIT', 0, 1)
        upto = nxt[1] and tonumber(nxt[1]) or total
        if total and upto and upto > total then upto = total end
        skip = upto ~= nil
      end
    end
    if not skip then
      if st then redis.call('HDEL', KEYS[1], 'blocked_since') end
      break
    end
    if st then
      release(sk, KEYS[1])
      redis.call('HSET', sk, 'state', 'skipped', 'message', 'missed its deadline')
    else
      step = upto - cursor
    end
    redis.call('HINCRBY', KEYS[1], 'skipped', step)
    redis.call('HINCRBY', KEYS[1], 'resolved', step)
    redis.call('RPUSH', KEYS[2], '-' .. cursor)
    table.insert(skipped, cursor)
  end
  -- A run of segments that never arrived is waited for once, not once each.
  if st then redis.call('HDEL', KEYS[1], 'blocked_since') end
  cursor = cursor + step
end
redis.call('HSET', KEYS[1], 'cursor', cursor)
return {listed, skipped, more}
