-- Reservations shared by replicas: a Consume that holds what it counted
-- until it is settled, released or expires (src/limiter/reservations.rs is
-- the same in memory). Runs after steps.lua. ARGV[1] is the operation:
--
-- refund   KEYS: counters; ARGV: then per counter algorithm, amount, window
--          ms, units, at ms, free_at ms. Gives the units back. -> {now}
--
-- reserve  KEYS: the record, the account's index of reservations, the due
--          set (or the index again: none in a Cluster), then the counters.
--          ARGV: id, record prefix, head, estimate, ttl ms, grace ms,
--          deadline ms (0: none), n, then per counter algorithm, amount,
--          window ms, cost, unit ('' when not held). First expires what is
--          due in the account's index (giving back its slots in flight);
--          then a Consume over the counters; admitted, the record is kept
--          until its expiry plus the grace (so a late expiry still finds
--          it). -> {now, counted, expires at, per counter remaining, wait,
--          free_at; then per expired reservation id, head, estimate}
--          wait: 0 fits, -1 never fits, -2 past the deadline (not decided).
--
-- settle   KEYS: the record, the account's index. ARGV: the actual
--          ('release' gives all back; else unit, amount, ...). -> {'gone'},
--          {'conflict', settled before}, or {'ok' or 'same', head, estimate,
--          billed}
--
-- expire   KEYS: the account's index, the due set (or the index again).
--          ARGV: record prefix, tag. -> per expired reservation id, head,
--          estimate
--
-- A record is a hash: head (subject US account), estimate and settled
-- (unit US amount US ...; US is the byte 31), exp (ms), n, and per held
-- counter i: k<i> its key, h<i> 'algorithm amount window units at free_at
-- unit'. Counter keys share the record's hash tag, so its Cluster slot.

local US = '\31'
local op = ARGV[1]

local function split(text, sep)
  local out, from = {}, 1
  if text == nil or text == '' then return out end
  while true do
    local at = find(text, sep, from, true)
    if not at then out[#out + 1] = sub(text, from) return out end
    out[#out + 1] = sub(text, from, at - 1)
    from = at + 1
  end
end

-- unit US n US ... as a table, and back, units sorted (as Rust's BTreeMap).
local function units_of(text)
  local parts, out = split(text, US), {}
  for i = 1, #parts - 1, 2 do out[parts[i]] = tonumber(parts[i + 1]) end
  return out
end
local function units_text(t)
  local names = {}
  for u in pairs(t) do names[#names + 1] = u end
  table.sort(names)
  local out = {}
  for _, u in ipairs(names) do out[#out + 1] = u out[#out + 1] = num(t[u]) end
  return table.concat(out, US)
end

local function record(k)
  local flat = redis.call('HGETALL', k)
  if #flat == 0 then return nil end
  local r = {}
  for i = 1, #flat, 2 do r[flat[i]] = flat[i + 1] end
  return r
end

-- Held counter i of record r: key, algorithm, amount, window, units, at,
-- free_at, unit.
local function held(r, i)
  local h = r['h' .. i]
  local a, from, f = {}, 1, 0
  while f < 6 do
    local space = find(h, ' ', from, true)
    a[#a + 1] = sub(h, from, space - 1)
    from = space + 1
    f = f + 1
  end
  return r['k' .. i], a[1], tonumber(a[2]), window_of((string.gsub(a[3], ',', ' '))), tonumber(a[4]),
    tonumber(a[5]), tonumber(a[6]), sub(h, from)
end

-- Expires what is due in `index` by now: an unsettled reservation is
-- settled at its estimate (its slots in flight given back) and returned.
local function expire(index, due, prefix, tag, out)
  local ids = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(ids) do
    local k = prefix .. id
    local r = record(k)
    if r ~= nil and r.settled == nil then
      for i = 1, tonumber(r.n) do
        local key, algorithm, amount, w, units, at, free_at, unit = held(r, i)
        if unit == 'concurrent' then give_back(key, algorithm, amount, w, units, at, free_at) end
      end
      out[#out + 1] = id
      out[#out + 1] = r.head
      out[#out + 1] = r.estimate
    end
    redis.call('DEL', k)
    redis.call('ZREM', index, id)
  end
  if due ~= index then
    local next = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
    if #next == 0 then redis.call('ZREM', due, tag)
    else redis.call('ZADD', due, next[2], tag) end
  end
  return out
end

if op == 'refund' then
  local arg = 2
  for c = 1, #KEYS do
    give_back(KEYS[c], ARGV[arg], tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2]),
      tonumber(ARGV[arg + 3]), tonumber(ARGV[arg + 4]), tonumber(ARGV[arg + 5]))
    arg = arg + 6
  end
  return { now }
end

if op == 'expire' then
  return expire(KEYS[1], KEYS[2], ARGV[2], ARGV[3], {})
end

if op == 'reserve' then
  local rk, index, due = KEYS[1], KEYS[2], KEYS[3]
  local id, prefix, head, estimate = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
  local ttl, grace, deadline, n = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local tag = ARGV[10]
  local expired = expire(index, due, prefix, tag, {})
  local out = { now, 0, now + ttl }
  if deadline > 0 and now > deadline then
    for _ = 1, n do out[#out + 1] = 0 out[#out + 1] = -2 out[#out + 1] = 0 end
    for _, v in ipairs(expired) do out[#out + 1] = v end
    return out
  end
  local all, steps_of = true, {}
  local arg = 11
  for i = 1, n do
    local k = KEYS[3 + i]
    local algorithm, amount, w, cost = ARGV[arg], tonumber(ARGV[arg + 1]), window_of(ARGV[arg + 2]), tonumber(ARGV[arg + 3])
    local fits, after, left, left_after, wait, free, free_after, expires =
      steps[algorithm](fields(redis.call('GET', k) or nil), amount, w, cost)
    if not fits then all = false if wait == 0 then wait = 1 end end
    -- The window as written (a calendar's periods joined by commas).
    local wtext = (string.gsub(ARGV[arg + 2], ' ', ','))
    steps_of[i] = { k, after, left, left_after, wait, free, free_after, expires, algorithm, amount, wtext, cost, ARGV[arg + 4] }
    arg = arg + 5
  end
  out[2] = all and 1 or 0
  local exp = now + ttl
  local fields_of, h = { 'head', head, 'estimate', estimate, 'exp', num(exp) }, 0
  for _, s in ipairs(steps_of) do
    if all then
      out[#out + 1], out[#out + 2], out[#out + 3] = s[4], s[5], s[7]
      if s[8] > now then redis.call('SET', s[1], text(s[2]), 'PXAT', num(s[8]))
      else redis.call('DEL', s[1]) end
      if s[13] ~= '' then
        h = h + 1
        fields_of[#fields_of + 1] = 'k' .. h
        fields_of[#fields_of + 1] = s[1]
        fields_of[#fields_of + 1] = 'h' .. h
        fields_of[#fields_of + 1] = format('%s %s %s %s %s %s %s', s[9], num(s[10]), s[11],
          num(s[12]), num(now), num(s[7]), s[13])
      end
    else
      out[#out + 1], out[#out + 2], out[#out + 3] = s[3], s[5], s[6]
    end
  end
  if all then
    fields_of[#fields_of + 1] = 'n'
    fields_of[#fields_of + 1] = h
    redis.call('HSET', rk, unpack(fields_of))
    redis.call('PEXPIREAT', rk, num(exp + grace))
    redis.call('ZADD', index, num(exp), id)
    local left = redis.call('PTTL', index)
    if left < 0 or now + left < exp + grace then redis.call('PEXPIREAT', index, num(exp + grace)) end
    if due ~= index then
      local first = redis.call('ZSCORE', due, tag)
      if not first or tonumber(first) > exp then redis.call('ZADD', due, num(exp), tag) end
    end
  end
  for _, v in ipairs(expired) do out[#out + 1] = v end
  return out
end

if op == 'settle' then
  local r = record(KEYS[1])
  if r == nil or tonumber(r.exp) <= now then return { 'gone' } end
  local billed = units_of(r.estimate)
  if ARGV[2] == 'release' then
    for u in pairs(billed) do billed[u] = 0 end
  else
    for u, n in pairs(units_of(ARGV[3])) do billed[u] = n end
  end
  local billed_text = units_text(billed)
  if r.settled ~= nil then
    if r.settled == billed_text then return { 'same', r.head, r.estimate, billed_text } end
    return { 'conflict', r.settled }
  end
  for i = 1, tonumber(r.n) do
    local key, algorithm, amount, w, units, at, free_at, unit = held(r, i)
    local actual = billed[unit] or 0
    -- A slot in flight is given back whatever the actual.
    if unit == 'concurrent' then actual = 0 end
    if actual < units then
      give_back(key, algorithm, amount, w, units - actual, at, free_at)
    elseif actual > units then
      -- The excess counts as a Record: even past the limit.
      local _, after, _, _, _, _, _, expires =
        steps[algorithm](fields(redis.call('GET', key) or nil), amount, w, actual - units)
      if expires > now then redis.call('SET', key, text(after), 'PXAT', num(expires))
      else redis.call('DEL', key) end
    end
  end
  redis.call('HSET', KEYS[1], 'settled', billed_text)
  -- Kept only to answer retries, briefly (as SETTLED_KEPT in memory).
  local keep = now + 30000
  if tonumber(r.exp) < keep then keep = tonumber(r.exp) end
  redis.call('HSET', KEYS[1], 'exp', num(keep))
  redis.call('PEXPIREAT', KEYS[1], num(keep))
  return { 'ok', r.head, r.estimate, billed_text }
end

return redis.error_reply('unknown operation ' .. tostring(op))
