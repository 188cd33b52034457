-- Decisions over counters, each atomically and all in one call: the same
-- algorithms as src/engine/algorithm, in milliseconds, on Redis's clock.
-- Several decisions waiting at the same moment share one call (and its fixed
-- cost); each is still all or nothing on its own, in order.
--
-- ARGV[1]     how many decisions follow
-- Per decision, in order, its arguments and its keys:
--   ARGV      mode: 0 check (counts nothing), 1 consume (counts every counter
--             if every one fits, else none), 2 record (counts every one)
--   ARGV      the channel for consumption notices, or ''
--   ARGV      the notice
--   ARGV      n, its number of counters
--   ARGV      four values per counter: algorithm (f fixed window, s sliding
--             window, t token bucket, r sliding ring), amount, window in
--             milliseconds, cost
--   KEYS      its n counters (in a Cluster, every key of the call shares a
--             slot), then, only when the channel is not empty, the watch
--             marker of its tag: when it exists, a decision that counted is
--             published on the channel
--
-- Returns {now_ms} and, per decision, {fits, counted} and per counter {fits,
-- remaining, wait_ms (-1: it can never fit), free_at_ms}: remaining and
-- free_at after counting when the decision counted, before otherwise.
--
-- Every value is an integer below 2^53 (amount * window in ms must be), so
-- Lua's doubles compute exactly. Every key written gets its expiry in the
-- same call (SET ... PXAT), so nothing outlives the state it holds.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function num(x) return string.format('%.0f', x) end
local function pos(x) if x < 0 then return 0 end return x end
local function ceil_div(a, b) return math.floor((a + b - 1) / b) end
local find, sub = string.find, string.sub
local function fields(v)
  local out = {}
  if not v then return out end
  local from = 1
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
local out = { now }
local arg, key = 2, 1

local function decide()
  local mode, channel, notice, n = tonumber(ARGV[arg]), ARGV[arg + 1], ARGV[arg + 2], tonumber(ARGV[arg + 3])
  arg = arg + 4
  local results = {}
  local all = true
  local values = {}
  if n > 0 then values = redis.call('MGET', unpack(KEYS, key, key + n - 1)) end
  for i = 1, n do
    local step = steps[ARGV[arg]]
    local r = { step(values[i] or nil, tonumber(ARGV[arg + 1]),
      tonumber(ARGV[arg + 2]), tonumber(ARGV[arg + 3])) }
    arg = arg + 4
    results[i] = r
    if not r[1] then all = false end
  end
  local count = (mode == 1 and all) or mode == 2
  out[#out + 1] = all and 1 or 0
  out[#out + 1] = count and 1 or 0
  for i = 1, n do
    local r = results[i]
    local remaining, free = r[3], r[6]
    if count then
      remaining, free = r[4], r[7]
      if r[8] > now then
        redis.call('SET', KEYS[key + i - 1], r[2], 'PXAT', num(r[8]))
      else
        redis.call('DEL', KEYS[key + i - 1])
      end
    end
    out[#out + 1] = r[1] and 1 or 0
    out[#out + 1] = remaining
    out[#out + 1] = r[5]
    out[#out + 1] = free
  end
  key = key + n
  if channel ~= '' then
    if count and redis.call('EXISTS', KEYS[key]) == 1 then
      redis.call('PUBLISH', channel, notice)
    end
    key = key + 1
  end
end

for _ = 1, tonumber(ARGV[1]) do decide() end
return out
