-- expect: RESOURCE_LIMIT
-- Loops forever, catching every error it can.
flag "hostile.spin" {
  rule = function(ctx)
    while true do
      pcall(function() while true do end end)
    end
  end,
}
