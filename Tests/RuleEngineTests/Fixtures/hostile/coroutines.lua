-- expect: RESOURCE_LIMIT
-- Spins inside coroutines and keeps resuming them after each breach.
flag "hostile.coroutines" {
  rule = function(ctx)
    for i = 1, 1e9 do
      local co = coroutine.wrap(function() while true do coroutine.yield() end end)
      pcall(co)
      local raw = coroutine.create(function() while true do end end)
      coroutine.resume(raw)
    end
  end,
}
