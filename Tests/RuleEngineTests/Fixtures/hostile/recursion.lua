-- expect: GENERAL
-- Recurses through a metamethod until the C stack limit.
local Deep = {}
Deep.__index = function(t, k) return t[k .. "."] end
flag "hostile.recursion" {
  rule = function(ctx)
    local t = setmetatable({}, Deep)
    return t.x
  end,
}
