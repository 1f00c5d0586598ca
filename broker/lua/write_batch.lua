-- logbroker: write one batch of entries of one job, atomically (docs/design.md §3).
--
-- KEYS: 1 stream, 2 meta hash, 3 partition job index (sorted set); all share one hash tag.
-- ARGV: 1 job id, 2 MAXLEN (0 = unbounded), 3 idle TTL s (0 = none), 4 TTL s after the end,
--       5 job name ('' = keep), 6 job type ('' = keep),
--       7 msgpack array of control tuples {step, worker, src, seq, kind, status, body}
--         ('' = not set; seq 0 = no idempotency; kind 0 log, 1 status, 2 end).
-- Returns {duplicates, {id, ...}, refused} with the ids of the entries stored by this call, in
-- order, and how many entries were refused because the job had ended before them.
--
-- Idempotency: an entry whose seq is <= the last seq stored for its src is skipped, so a batch
-- retried after a lost reply never duplicates. Lines: one counter per step (and one for the job
-- level), so per-step lines are 1..N whatever the number of writers. Counters are kept in Lua
-- locals and written once per batch, except before an end entry, whose totals must be exact.
-- Ended: once a job's end entry is stored, no entry is stored after it (a duplicate is still a
-- duplicate): its stream and totals are final, and a second end cannot change its status.

local stream, meta, index = KEYS[1], KEYS[2], KEYS[3]
local job = ARGV[1]
local maxlen = tonumber(ARGV[2])
local idle_ttl = tonumber(ARGV[3])
local ended_ttl = tonumber(ARGV[4])
local batch = cmsgpack.unpack(ARGV[7])
local SEP = '\031'

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local counters = {}   -- meta field -> number (loaded lazily, written at flush)
local dirty = {}      -- meta fields whose counter changed
local sets = {}       -- meta field -> string, last write wins
local firsts = {}     -- meta field -> string, written only if absent
local ended = false   -- an end entry stored by this call
local closed = redis.call('HEXISTS', meta, 'end_id') == 1   -- the job has an end entry

local function counter(field)
  local v = counters[field]
  if v == nil then
    v = tonumber(redis.call('HGET', meta, field)) or 0
    counters[field] = v
  end
  return v
end

local function set_counter(field, value)
  counters[field] = value
  dirty[field] = true
end

local function add(field, delta)
  set_counter(field, counter(field) + delta)
end

local function flush()
  -- HSET in chunks: Lua's unpack() has a stack limit of a few thousand values
  local args = {}
  local function put(field, value)
    args[#args + 1] = field
    args[#args + 1] = value
    if #args >= 1000 then
      redis.call('HSET', meta, unpack(args))
      args = {}
    end
  end
  for field in pairs(dirty) do put(field, counters[field]) end
  for field, value in pairs(sets) do put(field, value) end
  if #args > 0 then
    redis.call('HSET', meta, unpack(args))
  end
  for field, value in pairs(firsts) do
    redis.call('HSETNX', meta, field, value)
  end
  dirty, sets, firsts = {}, {}, {}
end

-- Totals as they stand before an end entry: per step, per worker (by step), per publisher.
local function totals()
  local all = redis.call('HGETALL', meta)
  local steps, workers, pubs = {}, {}, {}
  local out = {entries = 0, job = 0, steps = steps, workers = workers, publishers = pubs}
  for i = 1, #all, 2 do
    local f, v = all[i], tonumber(all[i + 1])
    if f == 'n' then
      out.entries = v
    elseif f == 'jn' then
      out.job = v
    else
      local a, b = string.find(f, SEP, 1, true)
      if a then
        local tag, rest = string.sub(f, 1, a - 1), string.sub(f, b + 1)
        local c = string.find(rest, SEP, 1, true)
        local name, tail = string.sub(rest, 1, c - 1), string.sub(rest, c + 1)
        if tag == 's' and tail == 'n' then
          steps[name] = v
        elseif tag == 'w' then
          local d = string.find(tail, SEP, 1, true)
          if d and string.sub(tail, d + 1) == 'n' then
            workers[name] = workers[name] or {}
            workers[name][string.sub(tail, 1, d - 1)] = v
          end
        elseif tag == 'p' then
          pubs[name] = pubs[name] or {entries = 0, last_seq = 0}
          if tail == 'n' then pubs[name].entries = v else pubs[name].last_seq = v end
        end
      end
    end
  end
  return out
end

-- What entries change in the meta hash is kept per writer in Lua locals while the batch runs and
-- folded into the counters (``fold``) before an end entry, whose totals must be exact, and once at
-- the end: per entry only plain fields of a few small tables change, no counter is looked up by
-- name and no field name is built (that was ~40% of the script's time). A batch has few writers:
-- a src (its last seq, its entry count), a step (its line counter, first and last id), a worker of
-- a step (its entry count), and a (src, step, worker) group pointing at the three. Every entry
-- count (the job's, each src's, each worker's) is a tally: a meta field and what to add to it.
local srcs, steps, workers, groups = {}, {}, {}, {}
local tallies, src_list, step_list = {}, {}, {}
local first_id, last_id = nil, nil

local function tally(field)
  local t = {n_f = field, cnt = 0}
  tallies[#tallies + 1] = t
  return t
end
local job_tally = tally('n')

local function src_of(src)
  local s = srcs[src]
  if s == nil then
    local p = 'p' .. SEP .. src .. SEP
    s = tally(p .. 'n')
    s.seq_f, s.moved = p .. 'seq', false
    s.seq = counter(s.seq_f)
    srcs[src] = s
    src_list[#src_list + 1] = s
  end
  return s
end

local function step_of(step)
  local st = steps[step]
  if st == nil then
    if step == '' then
      st = {line_f = 'jn'}
    else
      local p = 's' .. SEP .. step .. SEP
      st = {line_f = p .. 'n', first_f = p .. 'first', last_f = p .. 'last', status_f = p .. 'status'}
    end
    st.line = counter(st.line_f)
    st.moved = false
    steps[step] = st
    step_list[#step_list + 1] = st
  end
  return st
end

local function worker_of(step, worker)
  local key = step .. SEP .. worker
  local w = workers[key]
  if w == nil then
    local p = 'w' .. SEP .. key .. SEP
    w = tally(p .. 'n')
    w.status_f = p .. 'status'
    workers[key] = w
  end
  return w
end

local function group_of(src, step, worker)
  local by_step = groups[src]
  if by_step == nil then
    by_step = {}
    groups[src] = by_step
  end
  local by_worker = by_step[step]
  if by_worker == nil then
    by_worker = {}
    by_step[step] = by_worker
  end
  local g = by_worker[worker]
  if g == nil then
    g = {st = step_of(step)}
    if src ~= '' then g.src = src_of(src) end
    if worker ~= '' then g.w = worker_of(step, worker) end
    by_worker[worker] = g
  end
  return g
end

local function fold()
  for _, t in ipairs(tallies) do
    if t.cnt > 0 then
      add(t.n_f, t.cnt)
      t.cnt = 0
    end
  end
  for _, s in ipairs(src_list) do
    if s.moved then
      set_counter(s.seq_f, s.seq)
      s.moved = false
    end
  end
  for _, st in ipairs(step_list) do
    if st.moved then
      set_counter(st.line_f, st.line)
      if st.first_f then
        firsts[st.first_f] = st.first  -- a flush follows every fold: firsts are still empty
        sets[st.last_f] = st.last
      end
      st.first, st.moved = nil, false
    end
  end
  if first_id then
    firsts['first_id'] = first_id
    sets['last_id'] = last_id
    first_id = nil
  end
end

local ids = {}
local stored = 0
local dups = 0
local refused = 0
for _, e in ipairs(batch) do
  local seq, kind = e[4], e[5]
  local g = group_of(e[3], e[1], e[2])
  local s = g.src
  if s and seq > 0 and seq <= s.seq then
    dups = dups + 1
  elseif closed then
    refused = refused + 1
  else
    local st = g.st
    local line = st.line + 1
    local id
    if kind == 2 then
      -- the end entry's own counts are not part of its totals
      fold()
      flush()
      id = redis.call('XADD', stream, '*', 'l', line, 'b', e[7], 't', cmsgpack.pack(totals()))
      ended, closed = true, true
      sets['status'] = e[6]
      sets['ended_ms'] = now
      sets['end_id'] = id
    else
      id = redis.call('XADD', stream, '*', 'l', line, 'b', e[7])
    end
    st.line, st.last, st.moved = line, id, true
    if st.first == nil then st.first = id end
    job_tally.cnt = job_tally.cnt + 1
    if s then
      s.cnt = s.cnt + 1
      if seq > 0 then
        s.seq, s.moved = seq, true
      end
    end
    local w = g.w
    if w then w.cnt = w.cnt + 1 end
    if kind == 1 then
      sets[w and w.status_f or st.status_f or 'status'] = e[6]
    end
    if first_id == nil then first_id = id end
    last_id = id
    stored = stored + 1
    ids[stored] = id
  end
end
fold()

if #ids == 0 then
  return {dups, ids, refused}
end
if maxlen > 0 then
  -- once per batch: trimming on every XADD costs more than the append itself
  redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
end

sets['updated_ms'] = now
firsts['created_ms'] = now
if ARGV[5] ~= '' then sets['name'] = ARGV[5] end
if ARGV[6] ~= '' then sets['type'] = ARGV[6] end
flush()

local ttl = idle_ttl
if ended or redis.call('HEXISTS', meta, 'ended_ms') == 1 then
  ttl = ended_ttl
end
if ttl > 0 then
  redis.call('EXPIRE', stream, ttl)
  redis.call('EXPIRE', meta, ttl)
end
redis.call('ZADD', index, now, job)
if idle_ttl > 0 then
  -- index cleanup: a job idle for longer than the idle TTL has expired with it
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. (now - idle_ttl * 1000))
end
return {dups, ids, refused}
