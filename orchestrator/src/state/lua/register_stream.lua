-- KEYS: stream, the active streams (sorted by start), the live set.
local cur = redis.call('HGET', KEYS[1], 'session')
if cur then
  if cur == ARGV[1] and redis.call('HGET', KEYS[1], 'secret') == ARGV[8] then return 2 end
  local old = redis.call('HMGET', KEYS[1], 'mode', 'state')
  -- A live stream key may broadcast again once its last broadcast ended, however it went.
  local ended = old[2] == 'complete' or old[2] == 'incomplete'
  if old[1] == 'live' and ended and ARGV[2] == 'live' then return 3 end
  -- A failed stream's name may be used again (its objects are gone already).
  if old[2] == 'failed' then return 4 end
  return 0
end
-- A new live stream past the most at once (ARGV[10], 0: no limit) is refused.
local most = tonumber(ARGV[10])
if ARGV[2] == 'live' and most > 0 and redis.call('SCARD', KEYS[3]) >= most then return 5 end
redis.call('HSET', KEYS[1], 'session', ARGV[1], 'mode', ARGV[2], 'plan', ARGV[3],
  'source', ARGV[4], 'state', 'active', 'received', 0, 'done', 0, 'failed', 0, 'resolved', 0,
  'skipped', 0)
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'target_duration', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'broadcaster', ARGV[7]) end
redis.call('HSET', KEYS[1], 'secret', ARGV[8])
redis.call('ZADD', KEYS[2], ARGV[9], ARGV[5])
if ARGV[2] == 'live' then redis.call('SADD', KEYS[3], ARGV[5]) end
return 1
