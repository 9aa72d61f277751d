-- Shared by the stream scripts (see stream.rs): a room's stream is two keys with one
-- hash tag, so that a Redis Cluster keeps them on one shard:
--   KEYS[1] the messages, a Redis stream whose entry ids are `<offset>-<ms>`: ordered
--           by offset, and each with the Redis time it was added (for max_age);
--   KEYS[2] its meta, a hash: `e` the epoch (16 hex digits), `o` the newest offset.

-- The stream's epoch; `candidate` when it has none (new, or its meta was lost: Redis
-- lost its data, evicted or expired the key) or one that is not what these scripts
-- write (16 hex digits, and an offset of at most 15 digits: taken as lost too, rather
-- than fail a script midway or frame envelopes wrong), its offsets then starting again
-- from 0 and whatever the old epoch left in the stream deleted, so that no offset of
-- one epoch is ever read as one of another.
local function current_epoch(stream, meta, candidate)
  local kept = redis.call('HMGET', meta, 'e', 'o')
  local epoch, offset = kept[1], kept[2]
  if epoch and offset and string.match(epoch, '^' .. string.rep('%x', 16) .. '$')
      and string.match(offset, '^%d+$') and #offset <= 15 then
    return epoch
  end
  redis.call('DEL', stream, meta)
  redis.call('HSET', meta, 'e', candidate, 'o', 0)
  return candidate
end

-- Sets `key` to expire in `ttl` ms unless it already lives longer: an expiry only ever
-- grows, so that a publish or read with a shorter history (another hub's config, a
-- read's) never cuts a stream's life short. PTTL first rather than `PEXPIRE GT`, which
-- needs Redis 7: streams need only Redis 5.
local function extend(key, ttl)
  local left = redis.call('PTTL', key)
  if left == -1 or left < tonumber(ttl) then
    redis.call('PEXPIRE', key, ttl)
  end
end

-- Redis's clock, in milliseconds: one clock for every hub.
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local function offset_of(id)
  return tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1))
end

local function time_of(id)
  return tonumber(string.sub(id, string.find(id, '-', 1, true) + 1))
end

-- An integer as a decimal without exponent (Lua prints 1e+15 otherwise).
local function int(n)
  return string.format('%d', n)
end

-- Fails the script, before its first write, unless ARGV[i] is a decimal integer of at
-- most 15 digits: exact in Lua's numbers, and accepted by every Redis command it goes
-- to (the Rust side caps what it sends below that; see stream.rs).
local function check_int(i)
  local arg = ARGV[i]
  if not string.match(arg, '^%d+$') or #arg > 15 then
    error('ARGV[' .. i .. '] is not an integer of at most 15 digits: ' .. arg)
  end
  return tonumber(arg)
end

-- Fails the script, before its first write, unless ARGV[i] is an epoch (16 hex digits).
local function check_epoch(i)
  if not string.match(ARGV[i], '^' .. string.rep('%x', 16) .. '$') then
    error('ARGV[' .. i .. '] is not 16 hex digits')
  end
  return ARGV[i]
end
