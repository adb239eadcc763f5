-- A worker's report that attempt ARGV[1] of segment KEYS[1] cannot succeed anywhere, from
-- worker ARGV[2]; ARGV[3] lists the live workers' identities (comma-separated). One worker's
-- word is not enough while another could try: the first report excludes its worker from the
-- segment and is retried elsewhere; a second worker's report confirms it. Returns
-- {0, first reporter or ''}: take the report as final (confirmed, nobody else could try, or
-- not the current attempt: the failure path sorts that out); {1, ''}: retry on another
-- worker; {2, ''}: the reporter is excluded from this retry and others may take it: publish
-- it again.
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'pending' then return {0, ''} end
if tonumber(redis.call('HGET', KEYS[1], 'attempt') or '-1') ~= tonumber(ARGV[1]) then
  return {0, ''}
end
local list = redis.call('HGET', KEYS[1], 'bad_workers') or ''
local function excluded(w)
  return string.find(',' .. list .. ',', ',' .. w .. ',', 1, true) ~= nil
end
local others = false
for w in string.gmatch(ARGV[3], '[^,]+') do
  if w ~= ARGV[2] and not excluded(w) then others = true end
end
local first = redis.call('HGET', KEYS[1], 'permanent_by')
if excluded(ARGV[2]) then
  if others then return {2, ''} end
  return {0, first or ''}
end
if first and first ~= ARGV[2] then return {0, first} end
if not others then return {0, ''} end
redis.call('HSET', KEYS[1], 'permanent_by', ARGV[2])
redis.call('HSET', KEYS[1], 'bad_workers', list == '' and ARGV[2] or (list .. ',' .. ARGV[2]))
return {1, ''}
