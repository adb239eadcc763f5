local list = redis.call('HGET', KEYS[1], 'bad_workers') or ''
local n
if string.find(',' .. list .. ',', ',' .. ARGV[1] .. ',', 1, true) then
  -- Already counted for this segment (a redelivered result).
  n = tonumber(redis.call('GET', KEYS[2]) or '0')
else
  redis.call('HSET', KEYS[1], 'bad_workers', list == '' and ARGV[1] or (list .. ',' .. ARGV[1]))
  n = redis.call('INCR', KEYS[2])
  -- A worker's count of bad results is kept for the retention after its latest one.
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
if n >= tonumber(ARGV[3]) then
  redis.call('SET', KEYS[3], ARGV[2])
  return {n, 1}
end
return {n, 0}
