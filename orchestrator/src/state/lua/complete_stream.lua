-- KEYS: stream, active streams, ended streams. Once every segment is resolved, ends the
-- stream: 'complete' (returns 1) when every one was done, else 'incomplete' (returns 2)
-- with the reason counting the segments that failed or were skipped; either way the
-- stream moves from the active index to the ended one (scored by now, ARGV[2]: when its
-- retention starts). Returns 0 when it is not (or no longer) the caller's to end.
local s = redis.call('HMGET', KEYS[1], 'state', 'total', 'resolved', 'failed', 'skipped')
if s[1] ~= 'active' or not s[2] or tonumber(s[3]) < tonumber(s[2]) then return 0 end
local failed, skipped = tonumber(s[4] or '0'), tonumber(s[5] or '0')
local ended = 1
if failed + skipped > 0 then
  ended = 2
  redis.call('HSET', KEYS[1], 'state', 'incomplete', 'master', ARGV[1], 'reason',
    string.format('%d of %d segments failed and %d were skipped', failed, tonumber(s[2]),
      skipped))
else
  redis.call('HSET', KEYS[1], 'state', 'complete', 'master', ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return ended
