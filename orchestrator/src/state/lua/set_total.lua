-- KEYS: stream. Sets a stream's segment count once it ended: refused (0) below the
-- highest sequence number received + 1, or more than ARGV[2] beyond it.
local max_seq = tonumber(redis.call('HGET', KEYS[1], 'max_seq') or '-1')
local total = tonumber(ARGV[1])
if total < max_seq + 1 or total > max_seq + 1 + tonumber(ARGV[2]) then
  return {0, max_seq}
end
redis.call('HSET', KEYS[1], 'total', ARGV[1])
return {1, max_seq}
