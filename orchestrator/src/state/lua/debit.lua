-- KEYS: balance, reserved. Takes ARGV[1] wei from an account when what is not reserved by
-- segments in progress covers it: {1, new balance}, else {0, balance, reserved} (as
-- stored, so no figure shown loses precision).
local bal = redis.call('GET', KEYS[1]) or '0'
local res = redis.call('GET', KEYS[2]) or '0'
if tonumber(bal) - tonumber(res) < tonumber(ARGV[1]) then return {0, bal, res} end
return {1, redis.call('DECRBY', KEYS[1], ARGV[1])}
