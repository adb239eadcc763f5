-- KEYS: stream, received set, listing, failures, active streams, ended streams, live set.
-- ARGV: segment key prefix, stream name, '1' to delete an active stream too, the session
-- it must be ('' for any).
-- Returns 0 when there is no such stream (of that session), -1 when it is active (and not
-- forced), 1 when deleted. Deletes the segments that exist, 500 keys a command.
local h = redis.call('HMGET', KEYS[1], 'state', 'session')
local state = h[1]
if state and ARGV[4] ~= '' and h[2] ~= ARGV[4] then return 0 end
if not state then
  redis.call('ZREM', KEYS[5], ARGV[2])
  redis.call('ZREM', KEYS[6], ARGV[2])
  return 0
end
if state == 'active' and ARGV[3] ~= '1' then
  -- An active stream is never in the ended index (which the retention walks).
  redis.call('ZREM', KEYS[6], ARGV[2])
  return -1
end
local seqs = redis.call('ZRANGE', KEYS[2], 0, -1)
for i = 1, #seqs, 500 do
  local batch = {}
  for j = i, math.min(i + 499, #seqs) do batch[#batch + 1] = ARGV[1] .. seqs[j] end
  redis.call('DEL', unpack(batch))
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[2])
redis.call('ZREM', KEYS[6], ARGV[2])
redis.call('SREM', KEYS[7], ARGV[2])
return 1
