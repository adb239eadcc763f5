if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return {1} end
if redis.call('HGET', KEYS[1], 'reserved') then return {1} end
local bal = tonumber(redis.call('GET', KEYS[2]) or '0')
local res = tonumber(redis.call('GET', KEYS[3]) or '0')
if bal - res < tonumber(ARGV[1]) then return {0, bal, res} end
redis.call('INCRBY', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'reserved', ARGV[1])
return {1}
