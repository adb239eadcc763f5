-- KEYS: stream, active streams, ended streams. Moves the stream from the active index to
-- the ended one (scored by now, ARGV[2]: when its retention starts).
local s = redis.call('HMGET', KEYS[1], 'state', 'total', 'resolved')
if s[1] ~= 'active' or not s[2] or tonumber(s[3]) < tonumber(s[2]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'complete', 'master', ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return 1
