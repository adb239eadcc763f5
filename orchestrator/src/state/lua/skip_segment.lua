if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
release(KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'state', 'skipped', 'message', ARGV[1])
redis.call('HINCRBY', KEYS[2], 'skipped', 1)
redis.call('HINCRBY', KEYS[2], 'resolved', 1)
return 1
