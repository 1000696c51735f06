-- expect: GENERAL
-- Tries to remember the previous request in a load-time table.
local memory = {}
flag "hostile.remember" {
  variants = { first = 1, later = 2 }, default = "first",
  rule = function(ctx)
    local seen = memory[1]
    memory[#memory + 1] = ctx.user
    if seen then return "later" end
  end,
}
