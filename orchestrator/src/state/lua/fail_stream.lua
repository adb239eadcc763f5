-- KEYS: stream, received set, active streams, ended streams, live set.
-- ARGV: segment key prefix, stream name, session, reason, now (ms).
-- Fails an active stream of that session for good: its pending segments give back what
-- they reserved, and it moves to the ended index (where the retention finds it). Returns 1
-- when failed, 0 when there is no such active stream of that session.
local h = redis.call('HMGET', KEYS[1], 'state', 'session')
if h[1] ~= 'active' or h[2] ~= ARGV[3] then return 0 end
local seqs = redis.call('ZRANGE', KEYS[2], 0, -1)
for i = 1, #seqs do
  local seg = ARGV[1] .. seqs[i]
  if redis.call('HGET', seg, 'state') == 'pending' then release(seg, KEYS[1]) end
end
redis.call('HSET', KEYS[1], 'state', 'failed', 'reason', ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[2])
redis.call('SREM', KEYS[5], ARGV[2])
return 1
