-- KEYS: segment, stream, the stream's set of received sequence numbers.
-- Work is constant: a sequence number far ahead of the highest received is refused (-1),
-- one at or past the stream's announced end too (-2), and a live segment the listing has
-- already passed (left out as never arrived) counts as resolved (0).
local st = redis.call('HGET', KEYS[1], 'state')
if st then
  if st ~= 'pending' then return {0, redis.call('HGETALL', KEYS[1])} end
  return {tonumber(redis.call('HGET', KEYS[1], 'attempt')), redis.call('HGETALL', KEYS[1])}
end
local seq = tonumber(ARGV[10])
local info = redis.call('HMGET', KEYS[2], 'max_seq', 'cursor', 'total')
local max_seq = tonumber(info[1] or '-1')
if seq > max_seq + tonumber(ARGV[12]) then return {-1, {}} end
if info[3] and seq >= tonumber(info[3]) then return {-2, {}} end
if info[2] and seq < tonumber(info[2]) then return {0, {}} end
redis.call('HSET', KEYS[1], 'start_us', ARGV[1], 'duration_us', ARGV[2], 'frames', ARGV[3],
  'source', ARGV[4], 'has_audio', ARGV[5], 'last_pts_us', ARGV[6], 'attempt', 1,
  'state', 'pending', 'disc', ARGV[9])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'arrived_ms', ARGV[7]) end
redis.call('HSET', KEYS[1], 'ready_ms', ARGV[11])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'deadline_ms', ARGV[8]) end
redis.call('HINCRBY', KEYS[2], 'received', 1)
redis.call('ZADD', KEYS[3], seq, ARGV[10])
if seq > max_seq then
  redis.call('HSET', KEYS[2], 'max_seq', ARGV[10])
end
return {1, redis.call('HGETALL', KEYS[1])}
