-- One decision over the counters of one hash tag, atomically: the same
-- algorithms as src/engine/algorithm, in milliseconds, on Redis's clock.
--
-- KEYS[1..n]  the decision's counters, all under one hash tag
-- KEYS[n+1]   only when ARGV[2] is not empty: the tag's watch marker; when it
--             exists, a decision that counted is published on ARGV[2] with
--             ARGV[3] as the message
-- ARGV[1]     mode: 0 check (counts nothing), 1 consume (counts every counter
--             if every one fits, else none), 2 record (counts every one)
-- ARGV[2]     the channel for consumption notices, or ''
-- ARGV[3]     the notice
-- ARGV[4..]   four values per counter: algorithm (f fixed window, s sliding
--             window, t token bucket, r sliding ring), amount, window in
--             milliseconds, cost
--
-- Returns {now_ms, fits, counted} and, per counter, {fits, remaining,
-- wait_ms (-1: it can never fit), free_at_ms}: remaining and free_at after
-- counting when the decision counted, before otherwise.
--
-- Every value is an integer below 2^53 (amount * window in ms must be), so
-- Lua's doubles compute exactly. Every key written gets its expiry in the
-- same call (SET ... PXAT), so nothing outlives the state it holds.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = tonumber(ARGV[1])
local channel = ARGV[2]
local n = #KEYS
if channel ~= '' then n = n - 1 end

local function num(x) return string.format('%.0f', x) end
local function pos(x) if x < 0 then return 0 end return x end
local function ceil_div(a, b) return math.floor((a + b - 1) / b) end
local function fields(v)
  local out = {}
  if v then for f in string.gmatch(v, '%d+') do out[#out + 1] = tonumber(f) end end
  return out
end

-- Each step returns: fits, new state, remaining before, remaining after,
-- wait (-1: never), free_at before, free_at after, expires_at.

local function fixed(v, amount, w, cost)
  local index = math.floor(now / w)
  local finish = (index + 1) * w
  local s = fields(v)
  local count = 0
  if s[1] == index then count = s[2] end
  local after = count + cost
  local fits = after <= amount
  local wait = 0
  if not fits then if cost > amount then wait = -1 else wait = finish - now end end
  return fits, num(index) .. ' ' .. num(after), pos(amount - count), pos(amount - after),
    wait, finish, finish, finish
end

local function sliding(v, amount, w, cost)
  local index = math.floor(now / w)
  local start = index * w
  local elapsed = now - start
  local s = fields(v)
  local prev, cur = 0, 0
  if s[1] == index then prev, cur = s[3], s[2]
  elseif s[1] ~= nil and s[1] + 1 == index then prev, cur = s[2], 0 end
  local cap = amount * w
  local wprev = prev * (w - elapsed)
  local function used(c) return wprev + c * w end
  local function remaining(c) return math.floor(pos(cap - used(c)) / w) end
  local function free(c)
    if c > 0 then return start + 2 * w elseif prev > 0 then return start + w end
    return now
  end
  local after = cur + cost
  local fits = used(after) <= cap
  local wait = 0
  if not fits then
    if cost > amount then wait = -1
    elseif cur + cost <= amount and prev > 0 then
      -- Later in this window: prev * (w - e) <= (amount - cur - cost) * w.
      local overlap = math.floor((amount - cur - cost) * w / prev)
      local e = pos(w - overlap)
      if e < elapsed + 1 then e = elapsed + 1 end
      wait = e - elapsed
    else
      -- In the next window, the current count is the weighted one.
      local overlap = w
      if cur > 0 then overlap = math.floor((amount - cost) * w / cur) end
      wait = w - elapsed + pos(w - overlap)
    end
    if wait < 1 then wait = 1 end
  end
  return fits, num(index) .. ' ' .. num(after) .. ' ' .. num(prev), remaining(cur),
    remaining(after), wait, free(cur), free(after), start + 2 * w
end

local function bucket(v, amount, w, cost)
  -- State: the debt (outstanding units * window) as of a time. An amount
  -- change keeps the units owed: upgrades unblock, downgrades hand out nothing.
  -- The debt is paid off at the amount it was counted under (as in gcra.rs).
  local s = fields(v)
  local debt = 0
  if s[1] ~= nil then debt = pos(s[1] - (now - s[2]) * (s[3] or amount)) end
  local capacity = amount * w
  local inc = cost * w
  local after = debt + inc
  local fits = after <= capacity
  local wait = 0
  if not fits then
    if inc > capacity then wait = -1 else wait = ceil_div(after - capacity, amount) end
  end
  local function remaining(d) return math.floor(pos(capacity - d) / w) end
  local function at(d) return now + ceil_div(d, amount) end
  return fits, num(after) .. ' ' .. num(now) .. ' ' .. num(amount), remaining(debt), remaining(after), wait,
    at(debt), at(after), at(after)
end

local RING = 7
local function ring(v, amount, w, cost)
  -- Six buckets a window, the last seven summed: no window-long span ever
  -- holds more than the amount.
  local width = ceil_div(w, 6)
  local index = math.floor(now / width)
  local b = {0, 0, 0, 0, 0, 0, 0}
  local function slot(i) return (i % RING) + 1 end
  local s = fields(v)
  if s[1] ~= nil and index - s[1] >= 0 and index - s[1] < RING then
    for i = 1, RING do b[i] = s[i + 1] end
    for i = s[1] + 1, index do b[slot(i)] = 0 end
  end
  local used = 0
  for i = 1, RING do used = used + b[i] end
  local fits = used + cost <= amount
  local wait = 0
  if not fits then
    if cost > amount then wait = -1 else
      local left = used
      for j = 1, RING do
        left = left - b[slot(index + j)]
        if left + cost <= amount then wait = (index + j) * width - now break end
      end
    end
  end
  local function free()
    for age = 0, RING - 1 do
      if b[slot(index - age)] > 0 then return (index - age + RING) * width end
    end
    return now
  end
  local free_at = free()
  b[slot(index)] = b[slot(index)] + cost
  local state = num(index)
  for i = 1, RING do state = state .. ' ' .. num(b[i]) end
  return fits, state, pos(amount - used), pos(amount - used - cost), wait, free_at, free(),
    (index + RING) * width
end

local steps = { f = fixed, s = sliding, t = bucket, r = ring }
local results = {}
local all = true
for i = 1, n do
  local a = 3 + (i - 1) * 4
  local step = steps[ARGV[a + 1]]
  local r = { step(redis.call('GET', KEYS[i]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
    tonumber(ARGV[a + 4])) }
  results[i] = r
  if not r[1] then all = false end
end
local count = (mode == 1 and all) or mode == 2
local out = { now, all and 1 or 0, count and 1 or 0 }
for i = 1, n do
  local r = results[i]
  local remaining, free = r[3], r[6]
  if count then
    remaining, free = r[4], r[7]
    if r[8] > now then
      redis.call('SET', KEYS[i], r[2], 'PXAT', num(r[8]))
    else
      redis.call('DEL', KEYS[i])
    end
  end
  out[#out + 1] = r[1] and 1 or 0
  out[#out + 1] = remaining
  out[#out + 1] = r[5]
  out[#out + 1] = free
end
if count and channel ~= '' and redis.call('EXISTS', KEYS[n + 1]) == 1 then
  redis.call('PUBLISH', channel, ARGV[3])
end
return out
