-- Publishes a message to a room's stream, in one atomic step: the next offset, the
-- epoch (created when absent), the message kept and the stream trimmed to its history,
-- the keys' expiry, and the message sent on the room's channel with its position.
--   ARGV[1] a new epoch, used if the stream has none    ARGV[2] max_len (>= 1)
--   ARGV[3] max_age in ms (0: none)     ARGV[4] the stream's expiry in ms
--   ARGV[5] the meta's expiry in ms (both only ever extended)    ARGV[6] the room's channel
--   ARGV[7] the envelope's head, ARGV[8] its route (see codec.rs: the position goes
--   between them), ARGV[9] the field that names the message's kind, ARGV[10] its payload
--   ARGV[11] how to publish: PUBLISH, or SPUBLISH on a Redis Cluster (the channel is on
--   this shard: it hashes like the keys)
-- Returns {offset, epoch}.
-- A script is not rolled back: every argument is checked before the first write, and
-- nothing after it can fail (the integers go to Redis as the strings they came as).

-- A u64, big-endian: offsets stay far below 2^53, exact in Lua's numbers.
local function u64(n)
  local bytes = {}
  for i = 8, 1, -1 do
    bytes[i] = n % 256
    n = math.floor(n / 256)
  end
  return string.char(unpack(bytes))
end

local function from_hex(hex)
  return (string.gsub(hex, '..', function(pair)
    return string.char(tonumber(pair, 16))
  end))
end

-- Trims the entries older than `cutoff` (ms): they are at the stream's start, so
-- counting them from there finds them all, each read once over all publishes. The
-- newest entry is never older, so the count ends.
local function trim_older(stream, cutoff)
  local old, from, count = 0, '-', 1
  while true do
    local batch = redis.call('XRANGE', stream, from, '+', 'COUNT', count)
    for _, entry in ipairs(batch) do
      if time_of(entry[1]) >= cutoff then
        if old > 0 then
          redis.call('XTRIM', stream, 'MAXLEN', redis.call('XLEN', stream) - old)
        end
        return
      end
      old = old + 1
    end
    if #batch < count then
      return
    end
    from = int(offset_of(batch[#batch][1]) + 1)
    count = 64
  end
end

local stream, meta = KEYS[1], KEYS[2]
local candidate = check_epoch(1)
local max_age = check_int(3)
for i = 2, 5 do
  check_int(i)
end
if ARGV[2] == '0' or ARGV[4] == '0' or ARGV[5] == '0' then
  error('max_len and the expiries must be at least 1')
end
if ARGV[9] ~= 't' and ARGV[9] ~= 'b' then
  error('ARGV[9] is not a kind of message')
end
if ARGV[11] ~= 'PUBLISH' and ARGV[11] ~= 'SPUBLISH' then
  error('ARGV[11] is not PUBLISH or SPUBLISH')
end
local epoch = current_epoch(stream, meta, candidate)
local offset = redis.call('HINCRBY', meta, 'o', 1)
-- Never before the newest entry's time, even if Redis's clock stepped back (or a
-- failover brought another's): ages then only grow with offsets, so that trimming
-- and reading by age drop a leading run and never leave a hole in the middle.
local now = now_ms()
local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
if newest and time_of(newest[1]) > now then
  now = time_of(newest[1])
end
redis.call('XADD', stream, 'MAXLEN', ARGV[2], int(offset) .. '-' .. int(now), ARGV[9], ARGV[10])
if max_age > 0 then
  trim_older(stream, now - max_age)
end
extend(stream, ARGV[4])
extend(meta, ARGV[5])
redis.call(ARGV[11], ARGV[6], ARGV[7] .. u64(offset) .. from_hex(epoch) .. ARGV[8] .. ARGV[10])
return {offset, epoch}
