local st = redis.call('HGET', KEYS[1], 'state')
if not st then return -2 end
if st ~= 'pending' then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[1], 'attempt'))
local a = tonumber(ARGV[1])
if a ~= cur then
  if tonumber(redis.call('HGET', KEYS[1], 'retry_of') or '-1') == a then return 1000 + cur end
  return -1
end
local final = ARGV[3] == '1' or cur >= tonumber(ARGV[4])
redis.call('LPUSH', KEYS[4], cjson.encode({unix_ms = tonumber(ARGV[7]), stream = ARGV[6],
  seq = tonumber(ARGV[5]), attempt = cur, message = ARGV[2], final = final}))
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[8]) - 1)
if final then
  release(KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'state', 'failed', 'message', ARGV[2])
  redis.call('HINCRBY', KEYS[2], 'failed', 1)
  redis.call('HINCRBY', KEYS[2], 'resolved', 1)
  redis.call('HSET', KEYS[3], ARGV[5], ARGV[2])
  return 1
end
redis.call('HSET', KEYS[1], 'retry_of', cur)
return 1000 + redis.call('HINCRBY', KEYS[1], 'attempt', 1)
