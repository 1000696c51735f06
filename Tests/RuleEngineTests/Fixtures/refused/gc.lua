-- expect-load: 2: finalizers (__gc) are not allowed
local t = setmetatable({}, { __gc = function() end })
