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
  step[c], amount[c], window[c] = steps[ARGV[arg]], tonumber(ARGV[arg + 1]), window_of(ARGV[arg + 2])
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
