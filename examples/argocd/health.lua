-- Argo CD health check for glowplug.dev/ModelServer (resource.customizations.health).
-- It reads the conditions the glowplug operator writes (docs/api.md, status): the same kstatus
-- conventions Flux checks. Tested by tests/unit/test_gitops_health.py on the operator's statuses.
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the glowplug operator to report"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "the operator has not yet seen generation " .. tostring(obj.metadata.generation)
  return hs
end
local c = {}
for _, condition in ipairs(obj.status.conditions) do
  c[condition.type] = condition
end
local function said(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.reason .. ": " .. condition.message
  end
  return condition.reason
end
if c.Stalled ~= nil and c.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(c.Stalled)
  return hs
end
if c.Ready ~= nil and c.Ready.status == "True" then
  hs.status = "Healthy"
  hs.message = said(c.Ready)
  local flags = c.OptimizationsHealthy
  if flags ~= nil and flags.status == "False" then
    hs.message = hs.message .. "; " .. said(flags)
  end
  return hs
end
hs.status = "Progressing"
if c.Reconciling ~= nil and c.Reconciling.status == "True" then
  hs.message = said(c.Reconciling)
elseif c.Ready ~= nil then
  hs.message = said(c.Ready)
else
  hs.message = "waiting for the glowplug operator to report"
end
return hs
