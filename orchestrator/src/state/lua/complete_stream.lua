local s = redis.call('HMGET', KEYS[1], 'state', 'total', 'resolved')
if s[1] ~= 'active' or not s[2] or tonumber(s[3]) < tonumber(s[2]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'complete', 'master', ARGV[1])
return 1
