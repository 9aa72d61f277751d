-- Reads a room's stream after an offset, in one atomic step with its epoch (created
-- when absent, as a publish would) and its newest offset, so that the entries are
-- exactly those up to that offset.
--   ARGV[1] a new epoch, used if the stream has none    ARGV[2] the offset to read after
--   ARGV[3] the most entries (the history's max_len)    ARGV[4] max_age in ms (0: none)
--   ARGV[5] the meta's expiry in ms, once the stream has had a message; before, the
--   meta lives a minute past its last read (so that clients reading rooms that never
--   get a message, any name they like, do not fill Redis), and the first publish gives
--   it its full expiry. Expiries are only ever extended.
-- Returns {epoch, top, {offset, field, payload, ...}}, oldest first: the newest
-- ARGV[3] entries after the offset, less the leading run of those older than max_age
-- (only a leading run: an old entry after a young one, which a clock that stepped back
-- could leave, is kept rather than make a hole that a reader would not see).

local stream, meta = KEYS[1], KEYS[2]
local candidate = check_epoch(1)
local after, max_age = check_int(2), check_int(4)
check_int(3)
check_int(5)
if ARGV[3] == '0' or ARGV[5] == '0' then
  error('the count and the expiry must be at least 1')
end
local epoch = current_epoch(stream, meta, candidate)
local top = tonumber(redis.call('HGET', meta, 'o'))
if top > 0 then
  extend(meta, ARGV[5])
else
  extend(meta, math.min(60000, tonumber(ARGV[5])))
end
local cutoff = 0
if max_age > 0 then
  cutoff = now_ms() - max_age
end
-- The newest first, so that the count keeps the newest: a stream longer than max_len
-- (its history just shortened) reads as trimmed, not as cut short at the top.
local newest = redis.call('XREVRANGE', stream, '+', int(after + 1), 'COUNT', ARGV[3])
local entries = {}
local young = false
for i = #newest, 1, -1 do
  local id, fields = newest[i][1], newest[i][2]
  young = young or time_of(id) >= cutoff
  if young then
    table.insert(entries, offset_of(id))
    table.insert(entries, fields[1])
    table.insert(entries, fields[2])
  end
end
return {epoch, top, entries}
