-- expect: RESOURCE_LIMIT
-- Hides its loops in the places a breach passes through on its way out: error handlers and __close.
flag "hostile.handlers" {
  rule = function(ctx)
    local guard <close> = setmetatable({}, { __close = function() while true do end end })
    xpcall(function() while true do end end, function() while true do end end)
    return "on"
  end,
}
