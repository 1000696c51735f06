-- expect-load: 3: a coroutine created while loading
local keeper = coroutine.create(function() end)
flag "refused.coroutine" { rule = function(ctx) return coroutine.status(keeper) end }
