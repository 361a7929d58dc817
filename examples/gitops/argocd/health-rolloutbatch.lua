-- Argo CD health check for gpufleet.io/RolloutBatch, read from the batch's
-- kstatus-style conditions, so Argo CD agrees with Flux and kpt:
--   Progressing  gpufleet has not observed the latest spec yet, or waves are
--                in progress (Reconciling=True)
--   Degraded     Stalled=True: the rollout halted and waits on a person; the
--                message is the condition's (for example FailureBudgetExceeded)
--   Healthy      Ready=True: every wave is done
--   Suspended    spec.paused: a person paused the rollout
-- Argo CD runs Lua 5.1 (gopher-lua): keep to its syntax.
local hs = {status = "Progressing", message = "Waiting for gpufleet to report on the batch"}

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
  hs.message = said(stalled, "The rollout is stalled")
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = said(ready, "Every wave is done")
  return hs
end

if obj.spec ~= nil and obj.spec.paused == true then
  hs.status = "Suspended"
  hs.message = "Paused: set spec.paused to false to resume"
  return hs
end

local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = said(reconciling, "Waves in progress")
else
  hs.message = said(ready, "Waves in progress")
end
return hs
