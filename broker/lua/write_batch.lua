-- logbroker: write one batch of entries of one job, atomically (DESIGN §3).
--
-- KEYS: 1 stream, 2 meta hash, 3 partition job index (sorted set); all share one hash tag.
-- ARGV: 1 job id, 2 MAXLEN (0 = unbounded), 3 idle TTL s (0 = none), 4 TTL s after the end,
--       5 job name ('' = keep), 6 job type ('' = keep),
--       7 msgpack array of control tuples {step, worker, src, seq, kind, status, body}
--         ('' = not set; seq 0 = no idempotency; kind 0 log, 1 status, 2 end).
-- Returns {duplicates, {id, ...}} with the ids of the entries stored by this call, in order.
--
-- Idempotency: an entry whose seq is <= the last seq stored for its src is skipped, so a batch
-- retried after a lost reply never duplicates. Lines: one counter per step (and one for the job
-- level), so per-step lines are 1..N whatever the number of writers. Counters are kept in Lua
-- locals and written once per batch, except before an end entry, whose totals must be exact.

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
local ended = false

local function counter(field)
  local v = counters[field]
  if v == nil then
    v = tonumber(redis.call('HGET', meta, field)) or 0
    counters[field] = v
  end
  return v
end

local function add(field, delta)
  counters[field] = counter(field) + delta
  dirty[field] = true
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

-- Every meta field an entry touches, per (src, step, worker), built once per batch: a batch
-- has few distinct writers, and building the names per entry (ten string concatenations, each
-- hashed and interned) was most of the script's cost besides XADD itself.
local names = {}
local function names_of(src, step, worker)
  local by_step = names[src]
  if by_step == nil then
    by_step = {}
    names[src] = by_step
  end
  local by_worker = by_step[step]
  if by_worker == nil then
    by_worker = {}
    by_step[step] = by_worker
  end
  local n = by_worker[worker]
  if n == nil then
    n = {line = 'jn'}
    if src ~= '' then
      local p = 'p' .. SEP .. src .. SEP
      n.seq, n.src_n = p .. 'seq', p .. 'n'
    end
    if step ~= '' then
      local p = 's' .. SEP .. step .. SEP
      n.line, n.first, n.last, n.step_status = p .. 'n', p .. 'first', p .. 'last', p .. 'status'
    end
    if worker ~= '' then
      local p = 'w' .. SEP .. step .. SEP .. worker .. SEP
      n.worker_n, n.worker_status = p .. 'n', p .. 'status'
    end
    by_worker[worker] = n
  end
  return n
end

local ids = {}
local dups = 0
for _, e in ipairs(batch) do
  local seq, kind, status, body = e[4], e[5], e[6], e[7]
  local n = names_of(e[3], e[1], e[2])
  if n.seq and seq > 0 and seq <= counter(n.seq) then
    dups = dups + 1
  else
    local lf = n.line
    local line = counter(lf) + 1
    local id
    if kind == 2 then
      -- the end entry's own counts are not part of its totals
      flush()
      local tot = totals()
      id = redis.call('XADD', stream, '*', 'l', line, 'b', body, 't', cmsgpack.pack(tot))
      ended = true
      sets['status'] = status
      sets['ended_ms'] = now
      sets['end_id'] = id
    else
      id = redis.call('XADD', stream, '*', 'l', line, 'b', body)
    end
    counters[lf] = line
    dirty[lf] = true
    add('n', 1)
    if n.seq then
      add(n.src_n, 1)
      if seq > 0 then
        counters[n.seq] = seq
        dirty[n.seq] = true
      end
    end
    if n.worker_n then
      add(n.worker_n, 1)
    end
    if kind == 1 then
      sets[n.worker_status or n.step_status or 'status'] = status
    end
    if n.first then
      if firsts[n.first] == nil then firsts[n.first] = id end
      sets[n.last] = id
    end
    if firsts['first_id'] == nil then firsts['first_id'] = id end
    sets['last_id'] = id
    ids[#ids + 1] = id
  end
end

if #ids == 0 then
  return {dups, ids}
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
return {dups, ids}
