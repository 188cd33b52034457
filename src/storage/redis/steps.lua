-- The algorithms, as in src/engine/algorithm, in milliseconds on Redis's
-- clock: each step, and each refund (a reservation settled for less,
-- released or expired). Every script that counts starts with this file
-- (see RedisStore: the script is this file followed by its own).

local KEYS, ARGV, tonumber = KEYS, ARGV, tonumber
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local floor, find, sub, format = math.floor, string.find, string.sub, string.format
local function num(x) return format('%.0f', x) end
local function pos(x) if x < 0 then return 0 end return x end
local function ceil_div(a, b) return floor((a + b - 1) / b) end
local EMPTY = {}
local function fields(v)
  if not v then return EMPTY end
  local out, from = {}, 1
  while true do
    local space = find(v, ' ', from, true)
    if not space then
      out[#out + 1] = tonumber(sub(v, from))
      return out
    end
    out[#out + 1] = tonumber(sub(v, from, space - 1))
    from = space + 1
  end
end

-- Each step reads a parsed state (never changing it) and returns: fits, the
-- state after counting, remaining before, remaining after, wait (-1: never),
-- free_at before, free_at after, expires_at.

local function fixed(s, amount, w, cost)
  local index = floor(now / w)
  local finish = (index + 1) * w
  local count = 0
  if s[1] == index then count = s[2] end
  local after = count + cost
  local fits = after <= amount
  local wait = 0
  if not fits then if cost > amount then wait = -1 else wait = finish - now end end
  return fits, { index, after }, pos(amount - count), pos(amount - after), wait, finish, finish, finish
end

local function sliding(s, amount, w, cost)
  local index = floor(now / w)
  local start = index * w
  local elapsed = now - start
  local prev, cur = 0, 0
  if s[1] == index then prev, cur = s[3], s[2]
  elseif s[1] ~= nil and s[1] + 1 == index then prev, cur = s[2], 0 end
  local cap = amount * w
  local wprev = prev * (w - elapsed)
  local after = cur + cost
  local fits = wprev + after * w <= cap
  local wait = 0
  if not fits then
    if cost > amount then wait = -1
    else
      if after <= amount and prev > 0 then
        -- Later in this window: prev * (w - e) <= (amount - cur - cost) * w.
        local e = pos(w - floor((amount - after) * w / prev))
        if e < elapsed + 1 then e = elapsed + 1 end
        wait = e - elapsed
      else
        -- In the next window, the current count is the weighted one.
        local overlap = w
        if cur > 0 then overlap = floor((amount - cost) * w / cur) end
        wait = w - elapsed + pos(w - overlap)
      end
      -- At least a millisecond; never over the -1 of a cost that can never fit.
      if wait < 1 then wait = 1 end
    end
  end
  -- Free when the last unit counted leaves the window's weight.
  local idle, busy = now, start + 2 * w
  if prev > 0 then idle = start + w end
  local free_before, free_after = idle, idle
  if cur > 0 then free_before = busy end
  if after > 0 then free_after = busy end
  return fits, { index, after, prev }, floor(pos(cap - wprev - cur * w) / w),
    floor(pos(cap - wprev - after * w) / w), wait, free_before, free_after, busy
end

local function bucket(s, amount, w, cost)
  -- State: the debt (outstanding units * window) as of a time. An amount
  -- change keeps the units owed: upgrades unblock, downgrades hand out nothing.
  -- The debt is paid off at the amount it was counted under (as in gcra.rs).
  local debt = 0
  if s[1] ~= nil then debt = pos(s[1] - (now - s[2]) * (s[3] or amount)) end
  local capacity = amount * w
  local after = debt + cost * w
  local fits = after <= capacity
  local wait = 0
  if not fits then
    if cost * w > capacity then wait = -1 else wait = ceil_div(after - capacity, amount) end
  end
  local at_after = now + ceil_div(after, amount)
  return fits, { after, now, amount }, floor(pos(capacity - debt) / w),
    floor(pos(capacity - after) / w), wait, now + ceil_div(debt, amount), at_after, at_after
end

local RING = 7
local function ring(s, amount, w, cost)
  -- Six buckets a window, the last seven summed: no window-long span ever
  -- holds more than the amount.
  local width = ceil_div(w, 6)
  local index = floor(now / width)
  local b = { 0, 0, 0, 0, 0, 0, 0 }
  if s[1] ~= nil and index - s[1] >= 0 and index - s[1] < RING then
    for i = 1, RING do b[i] = s[i + 1] end
    for i = s[1] + 1, index do b[(i % RING) + 1] = 0 end
  end
  local used = 0
  for i = 1, RING do used = used + b[i] end
  local fits = used + cost <= amount
  local wait = 0
  if not fits then
    if cost > amount then wait = -1 else
      local left = used
      for j = 1, RING do
        left = left - b[((index + j) % RING) + 1]
        if left + cost <= amount then wait = (index + j) * width - now break end
      end
    end
  end
  local function free()
    for age = 0, RING - 1 do
      if b[((index - age) % RING) + 1] > 0 then return (index - age + RING) * width end
    end
    return now
  end
  local free_at = free()
  local here = (index % RING) + 1
  b[here] = b[here] + cost
  local state = { index, b[1], b[2], b[3], b[4], b[5], b[6], b[7] }
  return fits, state, pos(amount - used), pos(amount - used - cost), wait, free_at, free(),
    (index + RING) * width
end

-- A calendar's period (a week, a month, a year): w holds the start and end
-- of the period around the replica's now and the end of the next; the one
-- holding Redis's now counts. State: the end of its period, its count.
local function calendar(s, amount, w, cost)
  local finish = w[2]
  if now < w[1] then finish = w[1] elseif now >= w[2] then finish = w[3] end
  local count = 0
  if s[1] ~= nil and s[1] > now then count = s[2] end
  local after = count + cost
  local fits = after <= amount
  local wait = 0
  if not fits then if cost > amount then wait = -1 else wait = finish - now end end
  return fits, { finish, after }, pos(amount - count), pos(amount - after), wait, finish, finish, finish
end

local steps = { f = fixed, s = sliding, t = bucket, r = ring, c = calendar }

-- A counter's window argument: milliseconds, or a calendar's periods.
local function window_of(text)
  local n = tonumber(text)
  if n ~= nil then return n end
  return fields(text)
end


-- Each refund takes a parsed state and what a reservation counted there
-- (units, at and free_at in Redis milliseconds) and returns the state with
-- those units given back, as src/engine/algorithm's refunds do: only while
-- the window (or ring bucket) they were counted in is still counted; for the
-- bucket, only what it still owes for them. nil: nothing changes.

local function refund_fixed(s, amount, w, units, at)
  local index = floor(now / w)
  if floor(at / w) ~= index or s[1] ~= index then return nil end
  return { index, pos(s[2] - units) }
end

local function refund_sliding(s, amount, w, units, at)
  local index = floor(now / w)
  local prev, cur = 0, 0
  if s[1] == index then prev, cur = s[3], s[2]
  elseif s[1] ~= nil and s[1] + 1 == index then prev, cur = s[2], 0 end
  local age = index - floor(at / w)
  if age == 0 then cur = pos(cur - units)
  elseif age == 1 then prev = pos(prev - units)
  else return nil end
  return { index, cur, prev }
end

local function refund_bucket(s, amount, w, units, at, free_at)
  if s[1] == nil then return nil end
  local debt = pos(s[1] - (now - s[2]) * (s[3] or amount))
  local owed = pos(free_at - now) * amount
  if owed > units * w then owed = units * w end
  debt = pos(debt - owed)
  if debt == 0 then return EMPTY end
  return { debt, now, s[3] or amount }
end

local function refund_ring(s, amount, w, units, at)
  local width = ceil_div(w, 6)
  local index, bucket = floor(now / width), floor(at / width)
  if index - bucket < 0 or index - bucket >= RING then return nil end
  local b = { 0, 0, 0, 0, 0, 0, 0 }
  if s[1] ~= nil and index - s[1] >= 0 and index - s[1] < RING then
    for i = 1, RING do b[i] = s[i + 1] end
    for i = s[1] + 1, index do b[(i % RING) + 1] = 0 end
  end
  local here = (bucket % RING) + 1
  b[here] = pos(b[here] - units)
  return { index, b[1], b[2], b[3], b[4], b[5], b[6], b[7] }
end

local function refund_calendar(s, amount, w, units, at, free_at)
  if s[1] == nil or s[1] <= now or s[1] ~= free_at then return nil end
  return { s[1], pos(s[2] - units) }
end

local refunds = { f = refund_fixed, s = refund_sliding, t = refund_bucket, r = refund_ring,
  c = refund_calendar }

-- A state as stored: its numbers, space-separated.
local function text(s)
  local out = num(s[1])
  for i = 2, #s do out = out .. ' ' .. num(s[i]) end
  return out
end

-- Gives back `units` counted at `at` (free then at `free_at`) on counter
-- `k`; keeps the key's expiry; an empty state deletes it.
local function give_back(k, algorithm, amount, w, units, at, free_at)
  if units <= 0 then return end
  local s = fields(redis.call('GET', k) or nil)
  local after = refunds[algorithm](s, amount, w, units, at, free_at)
  if after == nil then return end
  if after == EMPTY or #after == 0 then redis.call('DEL', k) return end
  redis.call('SET', k, text(after), 'KEEPTTL')
end
