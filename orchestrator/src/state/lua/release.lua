local function release(seg, stream)
  local r = redis.call('HGET', seg, 'reserved')
  if r then
    local acct = redis.call('HGET', stream, 'broadcaster')
    if acct then redis.call('DECRBY', 'cw:reserved:' .. acct, r) end
    redis.call('HDEL', seg, 'reserved')
  end
end
