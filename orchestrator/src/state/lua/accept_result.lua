if redis.call('HGET', KEYS[2], 'state') == 'failed' then return {0, redis.call('HGETALL', KEYS[2])} end
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return {0, redis.call('HGETALL', KEYS[2])} end
if tonumber(ARGV[2]) ~= tonumber(redis.call('HGET', KEYS[1], 'attempt')) then
  return {-1, redis.call('HGETALL', KEYS[2])}
end
redis.call('HSET', KEYS[1], 'state', 'done', 'accepted', ARGV[1], 'accepted_attempt', ARGV[2],
  'transcode_ms', ARGV[3], 'result_ms', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSETNX', KEYS[1], 'started_ms', ARGV[5]) end
local ready = tonumber(redis.call('HGET', KEYS[1], 'ready_ms') or ARGV[4])
redis.call('LPUSH', KEYS[3], cjson.encode({unix_ms = tonumber(ARGV[4]), stream = ARGV[6],
  seq = tonumber(ARGV[7]), latency_ms = tonumber(ARGV[4]) - ready,
  transcode_ms = tonumber(ARGV[3])}))
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[8]) - 1)
redis.call('HINCRBY', KEYS[2], 'done', 1)
-- Per rendition too ('done:RUNG'), for each rung's own progress.
for _, r in ipairs(cjson.decode(ARGV[1])) do
  redis.call('HINCRBY', KEYS[2], 'done:' .. r.rung, 1)
end
redis.call('HINCRBY', KEYS[2], 'resolved', 1)
release(KEYS[1], KEYS[2])
redis.call('HINCRBY', KEYS[2], 'pixels', ARGV[9])
if tonumber(ARGV[10]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'fee', ARGV[10])
  redis.call('DECRBY', KEYS[4], ARGV[10])
end
return {1, redis.call('HGETALL', KEYS[2])}
