-- Argo CD health check for gpufleet.io/GpuPool, read from the pool's
-- kstatus-style conditions:
--   Progressing  gpufleet has not observed the latest spec yet, or the pool
--                is not Ready yet
--   Degraded     Stalled=True: the pool needs a person (for example its
--                circuit breaker tripped and halted every rollout of the pool)
--   Healthy      Ready=True
-- Argo CD runs Lua 5.1 (gopher-lua): keep to its syntax.
local hs = {status = "Progressing", message = "Waiting for gpufleet to report on the pool"}

local generation = obj.metadata.generation
local status = obj.status
if status == nil then
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "Waiting for gpufleet to observe generation " .. tostring(generation)
  return hs
end

-- The condition of this type, unless it describes an older generation.
local function condition(kind)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == kind then
      if generation ~= nil and c.observedGeneration ~= nil and c.observedGeneration < generation then
        return nil
      end
      return c
    end
  end
  return nil
end

local function said(c, otherwise)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return otherwise
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(stalled, "The pool is stalled")
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = said(ready, "The pool is ready")
  return hs
end

hs.message = said(ready, "The pool is not ready yet")
return hs
