-- Decisions over counters, each atomically and all in one call: the same
-- algorithms as src/engine/algorithm, in milliseconds, on Redis's clock.
-- Several decisions waiting at the same moment share one call (and its fixed
-- cost); each is still all or nothing on its own, in order.
--
-- ARGV[1]     the channel for consumption notices
-- ARGV[2]     m, how many distinct counters the call names; then three values
--             per counter: algorithm (f fixed window, s sliding window, t
--             token bucket, r sliding ring), amount, window in milliseconds
-- KEYS[1..m]  their keys (in a Cluster, every key of the call shares a
--             slot), then the watch markers the decisions name
-- ARGV        d, how many decisions follow; per decision, in order:
--               mode: 0 check (counts nothing), 1 consume (counts every
--               counter if every one fits, else none), 2 record (counts every
--               one);
--               its deadline in Redis milliseconds, or 0: a decision that
--               runs after it counts nothing (its caller has been answered)
--               and answers wait -2 for every counter;
--               the KEYS number of its watch marker, or 0; when not 0, the
--               notice, published when the marker exists and it counted;
--               n, its number of counters, then two values per counter: its
--               number among the call's counters, and its cost
--
-- Returns {now_ms} and, per decision and counter, {remaining, wait_ms (0: it
-- fits; -1: it can never fit; -2: past its deadline, not decided),
-- free_at_ms}: remaining and free_at after counting when the decision
-- counted, before otherwise.
--
-- Every value is an integer below 2^53 (amount * window in ms must be), so
-- Lua's doubles compute exactly. Every key written gets its expiry in the
-- same call (SET ... PXAT), so nothing outlives the state it holds.
--
-- Redis's work is the commands a call makes, so a call makes few: one MGET
-- for every key it names, then the decisions over states held parsed in the
-- call (each sees what the earlier ones left), then one SET (or DEL) per key
-- that changed, with its last state, one EXISTS per watch marker and one
-- PUBLISH per distinct notice.


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

local steps = { f = fixed, s = sliding, t = bucket, r = ring }

-- Arguments repeat from decision to decision: each is parsed once a call.
local parsed = {}
local function int(text)
  local v = parsed[text]
  if v == nil then v = tonumber(text) parsed[text] = v end
  return v
end

local channel, m = ARGV[1], tonumber(ARGV[2])
local step, amount, window = {}, {}, {}
local arg = 3
for c = 1, m do
  step[c], amount[c], window[c] = steps[ARGV[arg]], tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2])
  arg = arg + 3
end

-- Every key once: one MGET, states parsed on first use.
local names, seen = {}, {}
for c = 1, m do
  local k = KEYS[c]
  if not seen[k] then seen[k] = true names[#names + 1] = k end
end
local raw = {}
for from = 1, #names, 1000 do
  local upto = math.min(from + 999, #names)
  local got = redis.call('MGET', unpack(names, from, upto))
  for i = from, upto do raw[names[i]] = got[i - from + 1] end
end
local states, expiry, order = {}, {}, {}

local out, o = { now }, 1
local marked, published = {}, {}
-- One decision's counters, flat: key, state after counting, remaining before
-- and after, wait, free_at before and after, expires_at.
local keys, after, left, left_after, wait, free, free_after, expires = {}, {}, {}, {}, {}, {}, {}, {}

local function decide()
  local mode, deadline, marker = ARGV[arg], int(ARGV[arg + 1]), int(ARGV[arg + 2])
  arg = arg + 3
  local notice
  if marker > 0 then notice = ARGV[arg] arg = arg + 1 end
  local n = int(ARGV[arg])
  arg = arg + 1
  if deadline > 0 and now > deadline then
    for _ = 1, n do
      out[o + 1], out[o + 2], out[o + 3] = 0, -2, 0
      o = o + 3
    end
    arg = arg + 2 * n
    return
  end
  local all = true
  for i = 1, n do
    -- int(), inlined: this loop is most of a call's time.
    local t = ARGV[arg]
    local c = parsed[t]
    if c == nil then c = tonumber(t) parsed[t] = c end
    t = ARGV[arg + 1]
    local cost = parsed[t]
    if cost == nil then cost = tonumber(t) parsed[t] = cost end
    local k = KEYS[c]
    local s = states[k]
    if s == nil then
      s = fields(raw[k] or nil)
      states[k] = s
    end
    local fits
    fits, after[i], left[i], left_after[i], wait[i], free[i], free_after[i], expires[i] =
      step[c](s, amount[c], window[c], cost)
    if not fits then
      all = false
      if wait[i] == 0 then wait[i] = 1 end
    end
    keys[i] = k
    arg = arg + 2
  end
  local count = (mode == '1' and all) or mode == '2'
  for i = 1, n do
    if count then
      local k = keys[i]
      if expiry[k] == nil then order[#order + 1] = k end
      states[k], expiry[k] = after[i], expires[i]
      out[o + 1], out[o + 3] = left_after[i], free_after[i]
    else
      out[o + 1], out[o + 3] = left[i], free[i]
    end
    out[o + 2] = wait[i]
    o = o + 3
  end
  if count and notice then
    local k = KEYS[marker]
    if marked[k] == nil then marked[k] = redis.call('EXISTS', k) == 1 end
    if marked[k] and not published[notice] then
      published[notice] = true
      redis.call('PUBLISH', channel, notice)
    end
  end
end

local d = tonumber(ARGV[arg])
arg = arg + 1
for _ = 1, d do decide() end
for _, k in ipairs(order) do
  local s, at = states[k], expiry[k]
  if at > now then
    local text = num(s[1])
    for i = 2, #s do text = text .. ' ' .. num(s[i]) end
    redis.call('SET', k, text, 'PXAT', num(at))
  else
    redis.call('DEL', k)
  end
end
return out
