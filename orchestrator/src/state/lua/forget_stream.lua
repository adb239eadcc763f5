-- KEYS: stream, its received set, listing, failures. Deletes the segments that exist
-- (never a range of numbers a client chose).
local h = redis.call('HMGET', KEYS[1], 'session', 'state')
if h[1] ~= ARGV[2] or h[2] ~= 'complete' then return 0 end
local seqs = redis.call('ZRANGE', KEYS[2], 0, -1)
for i = 1, #seqs, 500 do
  local batch = {}
  for j = i, math.min(i + 499, #seqs) do batch[#batch + 1] = ARGV[1] .. seqs[j] end
  redis.call('DEL', unpack(batch))
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return 1
