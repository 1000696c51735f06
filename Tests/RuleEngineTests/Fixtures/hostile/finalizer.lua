-- expect: GENERAL
-- Asks for a finalizer that would loop when the state closes.
flag "hostile.finalizer" {
  rule = function(ctx)
    setmetatable({}, { __gc = function() while true do end end })
  end,
}
